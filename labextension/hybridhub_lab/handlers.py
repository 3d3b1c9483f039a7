"""``GET <base_url>hybridhub/session``: this server's session for the Lab front end."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop
from traitlets import Float, Unicode, default
from traitlets.config import Configurable

from .sampler import Reporter, find_source, utilisation_url
from .upstream import PortalUnavailable, SessionSource, session_url


class HybridhubLab(Configurable):
    """Settings of the hybridhub server extension (``c.HybridhubLab.*`` in the server's config)."""

    portal_url = Unicode(
        help="URL of the hybridhub portal service as this server reaches it, e.g. "
        "https://hub.example.edu/services/hybridhub-portal/ (default: $HYBRIDHUB_PORTAL_URL, "
        "which the hub sets for every server).",
    ).tag(config=True)

    min_interval = Float(
        30.0, help="Seconds between requests to the portal (at most one per interval).",
    ).tag(config=True)

    max_backoff = Float(
        300.0, help="Longest wait, in seconds, between retries while the portal is down.",
    ).tag(config=True)

    request_timeout = Float(10.0, help="Seconds to wait for the portal to answer.").tag(config=True)

    utilisation_interval = Float(
        help="Seconds between reports of this server's accelerator utilisation to the portal "
        "(default: $HYBRIDHUB_UTILISATION_INTERVAL, else 30; the portal refuses reports closer "
        "together than its own minimum with 429).",
    ).tag(config=True)

    @default("utilisation_interval")
    def _utilisation_interval(self) -> float:
        return float(os.environ.get("HYBRIDHUB_UTILISATION_INTERVAL") or 30.0)

    @default("portal_url")
    def _portal_url(self) -> str:
        return os.environ.get("HYBRIDHUB_PORTAL_URL", "")


class SessionHandler(APIHandler):
    """This server's session: hardware, time left, cost so far, warnings due.

    Only this server's owner reaches it (the single-user server's hub authentication);
    it takes no user or server argument, so it can only ever answer for its own server.
    """

    auth_resource = "hybridhub"

    @web.authenticated
    async def get(self) -> None:
        source: SessionSource | None = self.settings.get("hybridhub_session_source")
        self.set_header("Content-Type", "application/json")
        if source is None:
            self.set_status(404)
            self.finish(json.dumps({"message": "this server does not run under hybridhub "
                                    "(no JUPYTERHUB_API_TOKEN or HYBRIDHUB_PORTAL_URL)"}))
            return
        try:
            data, stale = await source.get()
        except PortalUnavailable as exc:
            self.set_status(503)
            self.set_header("Retry-After", str(int(exc.retry_after) + 1))
            self.finish(json.dumps({"message": str(exc), "retry_after": exc.retry_after}))
            return
        self.finish(json.dumps({**data, "stale": stale, "retry_after": source.retry_after,
                                "min_interval": source.min_interval}))


def make_source(config: HybridhubLab, env: dict[str, str] | None = None) -> SessionSource | None:
    """The upstream for this server, from the hub's environment; None outside a hub."""
    env = dict(os.environ if env is None else env)
    token, user = env.get("JUPYTERHUB_API_TOKEN"), env.get("JUPYTERHUB_USER")
    if not (token and user and config.portal_url):
        return None
    url = session_url(config.portal_url, user, env.get("JUPYTERHUB_SERVER_NAME", ""))
    return SessionSource(url, token, min_interval=config.min_interval,
                         max_backoff=config.max_backoff, timeout=config.request_timeout)


def make_reporter(config: HybridhubLab, env: dict[str, str] | None = None) -> Reporter | None:
    """The utilisation reporter of this server; None outside a hub or without a source."""
    env = dict(os.environ if env is None else env)
    token, user = env.get("JUPYTERHUB_API_TOKEN"), env.get("JUPYTERHUB_USER")
    if not (token and user and config.portal_url):
        return None
    source = find_source(env)
    if source is None:
        return None
    url = utilisation_url(config.portal_url, user, env.get("JUPYTERHUB_SERVER_NAME", ""))
    return Reporter(source, url, token, interval=config.utilisation_interval, max_backoff=config.max_backoff)


def load(serverapp: Any) -> None:
    """Register the handler on the Jupyter server and start the utilisation reporter."""
    config = HybridhubLab(parent=serverapp)
    reporter = make_reporter(config)
    if reporter is not None:
        IOLoop.current().add_callback(lambda: serverapp.web_app.settings.setdefault(
            "hybridhub_reporter_task", asyncio.ensure_future(reporter.run())))
    serverapp.log.info("hybridhub: utilisation %s", f"from {reporter.source.name} every "
                       f"{reporter.interval:g} s" if reporter else "unknown (no source)")
    web_app = serverapp.web_app
    web_app.settings["hybridhub_session_source"] = make_source(config)
    route = url_path_join(web_app.settings["base_url"], "hybridhub", "session")
    web_app.add_handlers(".*$", [(route, SessionHandler)])
    serverapp.log.info("hybridhub: session endpoint at %s (portal %s)", route,
                       config.portal_url or "not configured")
