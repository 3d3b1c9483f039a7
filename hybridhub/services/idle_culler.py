"""jupyterhub-idle-culler deciding by accelerator use: its ``cull_arbiter_hook`` and its service.

The culler (``jupyterhub-idle-culler`` 2.x, unchanged) lists ready servers and asks
:func:`cull_arbiter` about each.  The arbiter asks the portal's idle verdict
(``POST <portal>api/users/<u>/idle-verdict?server=<s>``,
:func:`hybridhub.accounting.utilisation.idle_verdict`) with the culler's own token:

- ``cull``: the accelerators were idle for the offering's ``idle_minutes`` (the portal has
  recorded ``stopped: accelerators idle`` on the session, and the Lab and home page warned
  ``warn_minutes`` before): stop it, however active its kernels;
- ``keep``: the accelerators are busy (or idle for less): never stopped for idle kernels;
- ``ordinary``: no accelerators, no idle minutes, or utilisation unknown: the culler's own
  rule (inactive for ``--timeout`` seconds).

If the portal does not answer, the server is kept: a busy GPU is never stopped on a guess.
:func:`culler_service` is the managed service ``add_hybridhub`` registers when
:class:`IdleCulling` is enabled, with the smallest scopes it needs; its config file is the
shipped ``idle_culler_config.py`` beside this module.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from traitlets import Bool, Integer, default
from traitlets.config import Configurable

from hybridhub.hubapi import HubApiError, JsonApi

log = logging.getLogger("hybridhub.idle_culler")
SERVICE_NAME = "idle-culler"
CONFIG_FILE = Path(__file__).resolve().parent / "idle_culler_config.py"
#: Where the culler reaches the portal (set by :func:`culler_service`).
ENV_PORTAL = "HYBRIDHUB_PORTAL_API_URL"


class IdleCulling(Configurable):
    """Culling servers whose accelerators are idle (``c.IdleCulling.*``, read by ``add_hybridhub``)."""

    enabled = Bool(
        help="Run jupyterhub-idle-culler as a managed service that stops servers whose accelerators "
        "stayed idle for their offering's idle_minutes (and, for servers without accelerators or with "
        "utilisation unknown, after `timeout` seconds without activity). Off by default; "
        "$HYBRIDHUB_IDLE_CULLER=1 turns it on.",
    ).tag(config=True)

    cull_every = Integer(
        help="Seconds between the culler's rounds (default: $HYBRIDHUB_IDLE_CULL_EVERY, else 60).",
    ).tag(config=True)

    timeout = Integer(
        help="The culler's ordinary rule: seconds without activity after which a server without "
        "accelerators, or whose utilisation is unknown, is stopped (default: "
        "$HYBRIDHUB_IDLE_TIMEOUT, else 3600).",
    ).tag(config=True)

    @default("enabled")
    def _enabled(self) -> bool:
        return os.environ.get("HYBRIDHUB_IDLE_CULLER", "0") not in ("", "0")

    @default("cull_every")
    def _cull_every(self) -> int:
        return int(os.environ.get("HYBRIDHUB_IDLE_CULL_EVERY") or 60)

    @default("timeout")
    def _timeout(self) -> int:
        return int(os.environ.get("HYBRIDHUB_IDLE_TIMEOUT") or 3600)


def culler_service(settings: IdleCulling, *, portal_api_url: str, scope: str,
                   environment: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``c.JupyterHub.services`` entry and the role of the culler service."""
    if settings.cull_every < 1 or settings.timeout < 1:
        raise ValueError(f"IdleCulling.cull_every and .timeout must be at least 1 s, got "
                         f"{settings.cull_every} and {settings.timeout}")
    service = {
        "name": SERVICE_NAME,
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--config={CONFIG_FILE}",
                    f"--cull-every={settings.cull_every}", f"--timeout={settings.timeout}"],
        "environment": {**environment, ENV_PORTAL: portal_api_url},
    }
    role = {
        "name": SERVICE_NAME, "services": [SERVICE_NAME],
        "description": "Stop servers whose accelerators (or, without any, kernels) are idle",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers", scope],
    }
    return service, role


async def ask_portal(api: JsonApi, full_name: str) -> str | None:
    """The portal's verdict on server ``<user>/<name>`` (None: no answer)."""
    user, _, name = full_name.partition("/")
    try:
        answer = await api.call("POST", f"/api/users/{quote(user, safe='')}/idle-verdict"
                                        f"?server={quote(name, safe='')}", {})
    except HubApiError as e:
        log.warning("the portal gave no idle verdict for %s (%s): keeping it", full_name, e)
        return None
    return answer.get("verdict") if isinstance(answer, dict) else None


_api: JsonApi | None = None


def portal_api() -> JsonApi:
    """The portal's API with this service's token (from the environment the hub gives it)."""
    global _api
    if _api is None:
        _api = JsonApi(os.environ[ENV_PORTAL], os.environ["JUPYTERHUB_API_TOKEN"], timeout=20)
    return _api


async def cull_arbiter(*, inactive, inactive_limit, server, api: JsonApi | None = None, **kwargs) -> bool:
    """jupyterhub-idle-culler's ``cull_arbiter_hook``: the portal's verdict, else the ordinary rule."""
    verdict = await ask_portal(api or portal_api(), server.get("full_name") or "")
    if verdict == "cull":
        log.info("stopping %s: its accelerators are idle", server.get("full_name"))
        return True
    if verdict == "ordinary":
        return inactive is not None and inactive.total_seconds() >= inactive_limit
    return False  # keep: busy accelerators (or no answer)
