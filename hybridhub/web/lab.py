"""``GET /api/users/{name}/session``: one server's session for the JupyterLab extension.

Called by the server extension in the single-user server (:mod:`hybridhub_lab`) with that
server's own ``JUPYTERHUB_API_TOKEN``.  That token holds no portal scope (on untrusted
hardware it is clamped to the hub's default ``server`` role: ``access:servers!server=<u>/<s>``
and ``users:activity!user=<u>``), so this one read-only route does not ask for
``access:services``; instead the caller must be ``<name>`` *and* hold access to the server
asked for (``access:servers!server=<name>/<server>``, or the wider ``!user=<name>`` form a
personal token has).  A server's token therefore reads only its own server's session, and
no token reads another user's.
"""

from __future__ import annotations

from asyncio import to_thread
from typing import Any

from hybridhub.accounting.lab_session import session_state
from hybridhub.web.base import NAME_PATTERN, ApiError, PortalHandler, forbidden, responses


def may_read_session(model: dict[str, Any], username: str, server_name: str) -> bool:
    """Whether the hub token described by ``model`` may read ``username``'s ``server_name``."""
    if model.get("kind", "user") != "user" or model.get("name") != username:
        return False
    scopes = set(model.get("scopes") or ())
    return bool(scopes & {
        "access:servers", f"access:servers!user={username}",
        f"access:servers!server={username}/{server_name}",
    })


class HubTokenHandler(PortalHandler):
    """A route any hub token may call (a server's own included): each method checks the
    token's scopes itself (:func:`may_read_session`)."""

    async def prepare(self) -> None:
        """Refuse a method the document does not list (405) and an oversized body (413), then
        identify the token with the hub."""
        self.refuse_undocumented_method()
        if len(self.request.body or b"") > self.max_body_bytes:
            raise ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes", "body")
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            raise ApiError(403, "a hub token (Authorization: token ...) is needed")
        self._hub_auth_user_cache = model

    def server_arg(self) -> str:
        """The ``server`` query parameter (``''``: the default server)."""
        server = self.query(QUERY)["server"]
        if not server.isprintable():
            raise ApiError(400, "server must be at most 255 printable characters", "server")
        return server


class LabSessionHandler(HubTokenHandler):
    """``GET /api/users/{name}/session?server=<name>``: the session record the Lab shows."""

    async def get(self, username: str) -> None:
        server = self.server_arg()
        if not may_read_session(self.current_user, username, server):
            raise forbidden(f"read the session of {username}'s server {server!r}")
        self.write_json(await to_thread(session_state, self.accounting, username, server))

handlers = [(r"api/users/([^/]+)/session", LabSessionHandler)]

#: The query, as the document shows it and the handler reads it.
QUERY = [{"name": "server", "in": "query", "required": False,
          "schema": {"type": "string", "maxLength": 255, "pattern": NAME_PATTERN, "default": ""},
          "description": "server name ('' = default)"}]

_NULLABLE_OBJECT = {"type": ["object", "null"]}
openapi_paths: dict[str, Any] = {
    "/api/users/{name}/session": {"get": {
        "summary": "One server's session as JupyterLab shows it (the server's own token)",
        "description": "Hardware, time left, cost so far and the warnings due, from the state "
                       "the meter and course scheduler act on. Only the server's owner, with "
                       "access to that server, may read it.",
        "operationId": "getLabSession",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            *QUERY,
        ],
        "responses": responses({"description": "the session", "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["user", "server", "now", "session", "reservation", "budget", "course",
                         "ends_at", "stop_at", "warnings"],
            "properties": {
                "user": {"type": "string"}, "server": {"type": "string"},
                "now": {"type": "string"}, "ends_at": {"type": ["string", "null"]},
                "stop_at": {"type": ["string", "null"]},
                "session": _NULLABLE_OBJECT, "reservation": _NULLABLE_OBJECT,
                "budget": _NULLABLE_OBJECT, "course": _NULLABLE_OBJECT,
                "warnings": {"type": "array", "items": {"type": "object", "required": ["id", "kind", "message"]}},
                "utilisation": {"type": ["object", "null"], "description": "the accelerators: state "
                                "(busy, idle, unknown), idle_minutes, devices, sampled_at "
                                "(hybridhub.accounting.utilisation)"},
            }}}}}, 400, 403),
    }},
}
