"""The hybridhub portal: a JupyterHub managed service for quotas, usage and its REST API.

Run by the hub (``python -m hybridhub.web.app``, see :func:`service_definition`), signed in
with :class:`jupyterhub.services.auth.HubOAuth`; roles come from the custom scopes the hub
grants (:mod:`hybridhub.web.base`).  Configured from the environment the hub gives its
services (``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_API_*``)
plus ``HYBRIDHUB_DB_URL`` and ``HYBRIDHUB_ROLLUP_INTERVAL`` (seconds between folding new
ledger entries into the usage rollup, default 60; see :mod:`hybridhub.accounting.reports`).

The app is composed from handler modules listed in :data:`HANDLER_MODULES`.  Each module
exports

- ``handlers: list[tuple[str, type]]``: URL patterns relative to the service prefix
  (``"api/groups"``, ``r"budgets/(\\d+)"``) and their handler classes (subclasses of
  :class:`hybridhub.web.base.PortalHandler`);
- ``openapi_paths: dict``: OpenAPI 3 path items for its ``api/...`` routes, keyed by
  ``/api/...``, merged into the document served at ``<prefix>api/openapi.json``;
- optionally ``schemas: dict``: OpenAPI component schemas its paths ``$ref``.

Adding a feature (course sessions, provenance, ...) is one line: append its module, e.g.
``"hybridhub.web.courses"``, to :data:`HANDLER_MODULES`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler
from tornado import web

from hybridhub import loghygiene, metrics
from hybridhub.accounting.courses import MANAGE_SCOPE
from hybridhub.accounting.db import DEFAULT_URL, Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.reports import refresh_rollup
from hybridhub.accounting.settings import MeterSettings
from hybridhub.services.observability import BudgetCollector, metrics_routes
from hybridhub.web.base import ADMIN_SCOPE, LEAD_SCOPE, PortalHandler, _jinja_env, api_routes, error_schema
from hybridhub.web.utilisation import UTILISATION_SCOPE

log = logging.getLogger("hybridhub.portal")

SERVICE_NAME = "hybridhub-portal"
#: Files served under ``<prefix>static/``: the vendored chart libraries (no CDN).
STATIC = Path(__file__).resolve().parent / "static"

#: Handler modules composed into the app, in order (see the module docstring).
HANDLER_MODULES = [
    "hybridhub.web.dashboard",
    "hybridhub.web.budgets",
    "hybridhub.web.usage",
    "hybridhub.web.servers",
    "hybridhub.web.demand",
    "hybridhub.web.provider_bills",
    "hybridhub.web.audit",
    "hybridhub.web.courses",
    "hybridhub.web.sessions",
    "hybridhub.web.trust",
    "hybridhub.web.lab",
    "hybridhub.web.utilisation",
]

#: The portal's custom scopes (``c.JupyterHub.custom_scopes``).
CUSTOM_SCOPES = {
    ADMIN_SCOPE: {
        "description": "Manage every group's budgets in the hybridhub portal: create, set, "
        "top up, freeze, import; read all usage and the audit log.",
    },
    LEAD_SCOPE: {
        "description": "Lead a group in the hybridhub portal: see its budgets, usage, "
        "servers and audit log, and top up its budgets (filter with !group=<name>).",
    },
    UTILISATION_SCOPE: {
        "description": "Ask the hybridhub portal whether a server's accelerators have been idle long "
        "enough to stop it (the idle culler).",
    },
    MANAGE_SCOPE: {
        "description": "Run a course's notebook sessions in the hybridhub portal: schedule, "
        "start now, end, cancel (filter with !group=<course>).",
    },
}


def load_modules(names: Iterable[str] = HANDLER_MODULES) -> list[ModuleType]:
    """Import the handler modules and check they export what the app needs."""
    modules = []
    for name in names:
        module = importlib.import_module(name)
        for attr in ("handlers", "openapi_paths"):
            if not hasattr(module, attr):
                raise TypeError(f"handler module {name} has no {attr!r}")
        modules.append(module)
    return modules


def openapi_document(modules: Iterable[ModuleType], prefix: str) -> dict[str, Any]:
    """One OpenAPI 3.1 document from every module's ``openapi_paths`` and ``schemas``."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": error_schema()}
    for module in modules:
        for path, item in module.openapi_paths.items():
            if path in paths:
                raise ValueError(f"{module.__name__}: OpenAPI path {path} defined twice")
            paths[path] = item
        schemas.update(getattr(module, "schemas", {}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hybridhub portal",
            "version": "1",
            "description": "Quotas, usage, exports and imports. Authenticate with a hub "
            "token: 'Authorization: token <token>'. Errors are "
            '{"status", "message", "field"}.',
        },
        "servers": [{"url": prefix.rstrip("/")}],
        "security": [{"hubToken": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "token <a JupyterHub API token>"},
            },
        },
    }


class NotFoundHandler(PortalHandler):
    """Any unknown path: 404 as JSON under ``api/`` (as the OpenAPI document says), HTML elsewhere."""

    async def prepare(self) -> None:
        raise web.HTTPError(404, "no such page or API resource")


class OpenApiHandler(web.RequestHandler):
    """``GET /api/openapi.json``: the REST API's description (public, holds no data)."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.settings["openapi"])


def make_app(
    accounting: Accounting,
    *,
    service_prefix: str,
    hub_prefix: str = "/hub/",
    modules: Iterable[str] = HANDLER_MODULES,
    cookie_secret: bytes | None = None,
) -> web.Application:
    """The tornado app: OAuth callback, OpenAPI document, static files and every module
    (the landing page is :mod:`hybridhub.web.dashboard`'s)."""
    import json

    prefix = "/" + service_prefix.strip("/") + "/"
    loaded = load_modules(modules)
    routes: list[tuple] = [
        (prefix + "oauth_callback", HubOAuthCallbackHandler),
        (prefix + "api/openapi.json", OpenApiHandler),
        (prefix + r"static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
    ]
    for module in loaded:
        routes.extend((prefix + path, handler) for path, handler in module.handlers)
    routes.extend(metrics_routes(prefix))  # Prometheus: budget levels, for a token with read:metrics
    document = openapi_document(loaded, prefix)
    return web.Application(
        routes,
        accounting=accounting,
        service_prefix=prefix,
        hub_prefix=hub_prefix,
        jinja_env=_jinja_env(),
        openapi=json.dumps(document),
        api_routes=api_routes(document["paths"], prefix),
        cookie_secret=cookie_secret or os.urandom(32),
        login_url=hub_prefix + "login",
        default_handler_class=NotFoundHandler,
    )


def service_definition(
    *, db_url: str, bind_url: str, name: str = SERVICE_NAME
) -> dict[str, Any]:
    """The ``c.JupyterHub.services`` entry that runs the portal as a managed service."""
    return {
        "name": name,
        "url": bind_url,
        "command": [sys.executable, "-m", "hybridhub.web.app"],
        "environment": {"HYBRIDHUB_DB_URL": db_url},
        "oauth_no_confirm": True,
        "display": True,
        "info": {"description": "Quotas, usage and budgets"},
        "oauth_client_allowed_scopes": sorted(CUSTOM_SCOPES),
    }


def hub_roles(
    *,
    admins: Iterable[str],
    leaders: dict[str, Iterable[str]],
    name: str = SERVICE_NAME,
    user_role: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Roles for ``c.JupyterHub.load_roles``: quota admins, one per led group, and the
    default ``user`` role extended with access to the portal.

    ``user_role`` is an already configured ``user`` role to extend; without one,
    JupyterHub's default (``self``) is kept.
    """
    access = f"access:services!service={name}"
    base_user = dict(user_role or {"name": "user", "scopes": ["self"]})
    base_user["scopes"] = sorted({*base_user.get("scopes", ["self"]), access})
    roles = [
        base_user,
        {"name": "hybridhub-quota-admin", "description": "Manage every group's budgets",
         "users": sorted(admins), "scopes": [ADMIN_SCOPE, access]},
    ]
    for group, users in sorted(leaders.items()):
        roles.append({
            "name": f"hybridhub-lead-{group}",
            "description": f"Lead {group}: see it and top up its budgets",
            "users": sorted(users),
            "scopes": [f"{LEAD_SCOPE}!group={group}"],
        })
    return roles


def from_env(env: dict[str, str] | None = None) -> tuple[web.Application, str]:
    """The app and its listen URL, from the environment the hub gives a managed service."""
    env = dict(os.environ if env is None else env)
    db = Database(env.get("HYBRIDHUB_DB_URL", DEFAULT_URL))
    db.upgrade()
    metrics.SERVICE_REGISTRY.register(BudgetCollector(db))
    hub_prefix = env.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/hub/"
    app = make_app(
        MeterSettings.from_env(env).accounting(db),
        service_prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/"),
        hub_prefix=hub_prefix,
    )
    return app, env.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")


async def keep_rollup_fresh(db: Database, interval: float) -> None:
    """Fold new ledger entries into the usage rollup every ``interval`` seconds, off the loop."""
    while True:
        try:
            await asyncio.to_thread(refresh_rollup, db)
        except Exception:
            log.exception("usage rollup refresh failed; retrying in %ss", interval)
        await asyncio.sleep(interval)


async def _main() -> None:
    loghygiene.install()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app, url = from_env()
    parsed = urlparse(url)
    app.listen(parsed.port or 80, parsed.hostname or "127.0.0.1", xheaders=True)
    log.info("hybridhub portal listening on %s", url)
    rollup = asyncio.create_task(keep_rollup_fresh(
        app.settings["accounting"].db, float(os.environ.get("HYBRIDHUB_ROLLUP_INTERVAL", "60"))
    ))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    rollup.cancel()


if __name__ == "__main__":
    asyncio.run(_main())
