"""Accelerator utilisation: servers report it, the idle culler asks what it means.

- ``POST /api/users/{name}/utilisation?server=<s>``: one report from the server's extension
  (:mod:`hybridhub_lab.sampler`), with the server's own ``JUPYTERHUB_API_TOKEN``.  The scope
  rule is :func:`~hybridhub.web.lab.may_read_session`'s: the caller must be ``<name>`` holding
  access to that very server, so a server's token reports only its own server.  Bad reports
  are ``400`` naming the field and its limit; one sooner than the portal's minimum interval is
  ``429`` with ``Retry-After``.
- ``POST /api/users/{name}/idle-verdict?server=<s>``: the idle culler's question (its
  ``cull_arbiter_hook``, :mod:`hybridhub.services.idle_culler`), for a token holding
  :data:`UTILISATION_SCOPE`.  A ``cull`` answer records why on the session before the stop
  (:func:`hybridhub.accounting.utilisation.idle_verdict`), hence ``POST``.

The idle settings come from the environment ``add_hybridhub`` hands the portal
(:class:`~hybridhub.accounting.utilisation.IdleSettings`), the idle minutes from the catalog.
"""

from __future__ import annotations

import math
import os
from asyncio import to_thread
from functools import lru_cache
from typing import Any

from hybridhub import metrics
from hybridhub.accounting.models import utcnow
from hybridhub.accounting.utilisation import (
    MAX_MEMORY_MB,
    SOURCES,
    BadReport,
    TooSoon,
    idle_verdict,
    record_report,
    settings_from_env,
)
from hybridhub.catalog import load_catalog
from hybridhub.web.base import ApiError, forbidden, responses
from hybridhub.web.lab import QUERY, HubTokenHandler, may_read_session

#: The portal scope that lets a service (the idle culler) ask for idle verdicts.
UTILISATION_SCOPE = "custom:quota:utilisation"


@lru_cache(maxsize=1)
def idle_minutes() -> dict[str, float | None]:
    """Each offering's idle minutes, from the catalog this portal runs with (``HYBRIDHUB_CATALOG``);
    none while the idle culler does not run (``HYBRIDHUB_IDLE_CULLING``): then no server is warned."""
    if os.environ.get("HYBRIDHUB_IDLE_CULLING") != "1":
        return {}
    catalog = load_catalog(path=os.environ.get("HYBRIDHUB_CATALOG") or None)
    return {o.key: o.idle_minutes for o in catalog.all_offerings()}


class _RetryAfterHandler(HubTokenHandler):
    """A hub-token route whose 429 carries ``Retry-After`` (tornado clears headers set before)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The error, with ``Retry-After`` for a 429."""
        retry_after = getattr(kwargs.get("exc_info", (None, None))[1], "retry_after", None)
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        super().write_error(status_code, **kwargs)


class UtilisationHandler(_RetryAfterHandler):
    """``POST /api/users/{name}/utilisation?server=<s>``: one report from that server."""

    async def post(self, username: str) -> None:
        server = self.server_arg()
        if not may_read_session(self.current_user, username, server):
            raise forbidden(f"report the utilisation of {username}'s server {server!r}")
        body = self.checked_json_body(REPORT_SCHEMA)
        try:
            answer = await to_thread(
                record_report, self.accounting.db, username=username, server_name=server,
                source=body["source"], devices=body["devices"], now=utcnow(),
                settings=settings_from_env(), limit_of=idle_minutes().get)
        except BadReport as e:
            raise ApiError(409 if e.field == "server" else 400, str(e), e.field) from None
        except TooSoon as e:
            error = ApiError(429, str(e))
            error.retry_after = max(1, math.ceil(e.retry_after))
            raise error from None
        self.write_json(answer)


class IdleVerdictHandler(HubTokenHandler):
    """``POST /api/users/{name}/idle-verdict?server=<s>``: the idle culler's question."""

    async def post(self, username: str) -> None:
        server = self.server_arg()
        if UTILISATION_SCOPE not in set(self.current_user.get("scopes") or ()):
            raise forbidden("ask for idle verdicts")
        answer = await to_thread(idle_verdict, self.accounting.db, username, server, utcnow(), settings_from_env())
        if answer["verdict"] == "cull":
            metrics.IDLE_CULLS.labels(answer["class"], answer["group"]).inc()
        self.write_json(answer)


handlers = [
    (r"api/users/([^/]+)/utilisation", UtilisationHandler),
    (r"api/users/([^/]+)/idle-verdict", IdleVerdictHandler),
]

_DEVICE = {
    "type": "object", "required": ["index", "utilisation", "memory_used_mb", "memory_total_mb"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": 1023},
        "utilisation": {"type": "number", "minimum": 0, "maximum": 100},
        "memory_used_mb": {"type": "number", "minimum": 0, "maximum": MAX_MEMORY_MB},
        "memory_total_mb": {"type": "number", "minimum": 0, "maximum": MAX_MEMORY_MB},
    },
}
REPORT_SCHEMA = {
    "type": "object", "required": ["source", "devices"],
    "properties": {"source": {"type": "string", "enum": list(SOURCES)},
                   "devices": {"type": "array", "items": _DEVICE}},
}
_PATH = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}, *QUERY]
UTILISATION_SCHEMA = {
    "type": "object", "required": ["state", "idle_minutes", "devices", "sampled_at"],
    "properties": {"state": {"type": "string", "enum": ["busy", "idle", "unknown"]},
                   "idle_minutes": {"type": ["integer", "null"]},
                   "devices": {"type": "array", "items": _DEVICE},
                   "sampled_at": {"type": ["string", "null"]}},
}
openapi_paths: dict[str, Any] = {
    "/api/users/{name}/utilisation": {"post": {
        "summary": "Report a server's accelerator utilisation (the server's own token)",
        "description": "Per-device utilisation (0-100 %) and memory, at most one report per server "
                       "per minimum interval (429 with Retry-After); no more devices than the server holds.",
        "operationId": "reportUtilisation",
        "parameters": _PATH,
        "requestBody": {"required": True, "content": {"application/json": {"schema": REPORT_SCHEMA}}},
        "responses": responses({"description": "stored", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"accepted": {"type": "integer"},
                                             "next_after": {"type": "number"}}}}}}, 400, 403, 409, 429),
    }},
    "/api/users/{name}/idle-verdict": {"post": {
        "summary": "Whether the idle culler should stop a server for idle accelerators",
        "description": f"For tokens with {UTILISATION_SCOPE}. 'cull': idle for the offering's idle "
                       "minutes (the session records why); 'keep': busy, or idle for less; 'ordinary': "
                       "no accelerators, no idle minutes or utilisation unknown (the culler's own rule).",
        "operationId": "idleVerdict",
        "parameters": _PATH,
        "responses": responses({"description": "the verdict", "content": {"application/json": {"schema": {
            "type": "object", "required": ["verdict", "utilisation", "limit_minutes"],
            "properties": {"verdict": {"type": "string", "enum": ["cull", "keep", "ordinary"]},
                           "utilisation": UTILISATION_SCHEMA,
                           "limit_minutes": {"type": ["number", "null"]},
                           "class": {"type": ["string", "null"], "description": "the server's class (null: none open)"},
                           "group": {"type": ["string", "null"], "description": "the group it is charged to"}}}}}},
                      400, 403),
    }},
}
