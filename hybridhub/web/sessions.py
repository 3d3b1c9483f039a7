"""My sessions: provenance records, their CSV export, and verifying a result on trusted hardware.

Everyone sees their own sessions; quota admins see everyone's (``?user=`` narrows it).
From a session a user asks to *verify* a notebook of their home: the portal runs it
again on a trusted offering (:mod:`hybridhub.services.verification`, charged to the chosen group like any
launch) and shows the cell-by-cell comparison (:mod:`hybridhub.services.notebook_compare`).

The verification runs in this service with its hub token, which needs the scopes
``servers``, ``access:servers`` and ``read:users`` (see ``hybridhub.hub.config``); the
single-user servers are reached through the hub's proxy at ``HYBRIDHUB_PROXY_URL``.
"""

from __future__ import annotations

import asyncio
import os
from asyncio import to_thread
from functools import lru_cache
from typing import Any

from tornado import web

from hybridhub.accounting.sessions import (
    CSV_COLUMNS,
    END_REASONS,
    ServerSessionInfo,
    SessionLog,
    VerificationInfo,
    sessions_csv,
)
from hybridhub.catalog import load_catalog
from hybridhub.services.notebook_compare import Tolerance
from hybridhub.services.verification import VerificationRunner, normalize_notebook_path
from hybridhub.web.base import (
    MAX_ID,
    NAME_SCHEMA,
    ApiError,
    PortalHandler,
    forbidden,
    path_id,
    responses,
    string_field,
)

#: Running verifications, kept referenced until they finish.
_tasks: set[asyncio.Task] = set()


@lru_cache(maxsize=4)
def trusted_offerings(catalog_file: str) -> tuple[str, ...]:
    """Keys of the catalog's trusted offerings (where results may be verified)."""
    catalog = load_catalog(path=catalog_file or None)
    return tuple(o.key for o in catalog.all_offerings() if o.trust == "trusted")


class SessionsBase(PortalHandler):
    """Shared lookups: the session log, what the caller may see, the runner."""

    @property
    def log(self) -> SessionLog:
        """Provenance records in the portal's database."""
        return SessionLog(self.accounting.db)

    def offerings(self) -> tuple[str, ...]:
        """Trusted offerings a verification may run on."""
        return trusted_offerings(os.environ.get("HYBRIDHUB_CATALOG", ""))

    def whose(self, user: str | None) -> str | None:
        """Whose sessions to list: the caller's, or (admins) ``user`` or everyone's."""
        if self.viewer.is_admin:
            return user
        if user not in (None, self.viewer.name):
            raise forbidden(f"see {user}'s sessions")
        return self.viewer.name

    def check_owner(self, username: str) -> None:
        """403 unless the caller owns the record or is an admin."""
        if username != self.viewer.name and not self.viewer.is_admin:
            raise forbidden(f"see {username}'s sessions")

    def runner(self) -> VerificationRunner:
        """The verification runner, with the service's own hub token."""
        auth = self.hub_auth
        return VerificationRunner(
            self.log,
            hub_api_url=auth.api_url,
            proxy_url=os.environ.get("HYBRIDHUB_PROXY_URL", "http://127.0.0.1:8000"),
            token=auth.api_token,
            hours=float(os.environ.get("HYBRIDHUB_VERIFY_HOURS", "1")),
        )

    async def start_verification(self, body: dict[str, Any], *, from_form: bool) -> VerificationInfo:
        """Validate a request, record it, start the run in the background (202)."""
        try:
            notebook = normalize_notebook_path(string_field(body, "notebook", max_length=1024))
        except ValueError as e:
            raise ApiError(400, str(e), "notebook") from None
        offering = string_field(body, "offering", max_length=128)
        if offering not in self.offerings():
            raise ApiError(400, f"offering must be a trusted one: {list(self.offerings())}", "offering")
        session_id = body.get("session_id")
        session: ServerSessionInfo | None = None
        if session_id not in (None, ""):
            try:
                number = int(session_id)
            except (TypeError, ValueError):
                raise ApiError(400, "session_id must be an integer", "session_id") from None
            if not 1 <= number <= MAX_ID:
                raise ApiError(400, f"session_id must be an integer from 1 to {MAX_ID}", "session_id")
            session = await to_thread(self.log.get, number)
            if session is None:
                raise ApiError(404, f"no session {session_id}", "session_id")
            self.check_owner(session.username)
        group = body.get("group") or (session.group if session else None)
        if not group or group not in self.viewer.groups:
            raise ApiError(400, f"group must be one of your groups: {sorted(self.viewer.groups)}", "group")
        tol_fields = {k: body[k] for k in ("rel_tol", "abs_tol") if body.get(k) not in (None, "")}
        try:
            tolerance = Tolerance.from_dict(tol_fields)
        except ValueError as e:
            raise ApiError(400, str(e), next(iter(tol_fields), "rel_tol")) from None
        v = await to_thread(
            self.log.create_verification, username=self.viewer.name, group=group,
            notebook=notebook, offering=offering, session_id=session.id if session else None,
        )
        task = asyncio.ensure_future(self.runner().run(v.id, tolerance))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return v


class SessionsHandler(SessionsBase):
    """``GET /sessions`` (page) and ``GET /api/sessions`` (JSON): newest first."""

    @web.authenticated
    async def get(self) -> None:
        query = self.query(LIST_QUERY)
        who = self.whose(query["user"])
        rows = await to_thread(self.log.sessions, who, limit=query["limit"])
        verifications = await to_thread(self.log.verifications, username=who, limit=50)
        if self.wants_json():
            self.write_json({"sessions": [r.as_dict() for r in rows]})
            return
        self.render_page("sessions.html", sessions=rows, verifications=verifications, who=who,
                         offerings=self.offerings(), groups=sorted(self.viewer.groups))


class SessionsCsvHandler(SessionsBase):
    """``GET /api/sessions.csv``: the same records as CSV."""

    @web.authenticated
    async def get(self) -> None:
        who = self.whose(self.query([USER_PARAM])["user"])
        rows = await to_thread(self.log.sessions, who, limit=100_000)
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="sessions.csv"')
        self.finish(sessions_csv(rows))


class SessionHandler(SessionsBase):
    """``GET /api/sessions/<id>``: one record with its verifications."""

    @web.authenticated
    async def get(self, session_id: str) -> None:
        rec = await to_thread(self.log.get, path_id(session_id, "session"))
        if rec is None:
            raise ApiError(404, f"no session {session_id}")
        self.check_owner(rec.username)
        checks = await to_thread(self.log.verifications, session_id=rec.id)
        self.write_json({**rec.as_dict(), "verifications": [v.as_dict() for v in checks]})


class VerificationsHandler(SessionsBase):
    """``POST /api/verifications`` (JSON) or ``POST /verify`` (form): verify a notebook."""

    @web.authenticated
    async def post(self) -> None:
        from_form = not self.request.path.endswith("api/verifications")
        body = self.form_body() if from_form else self.checked_json_body(VERIFY_BODY)
        v = await self.start_verification(body, from_form=from_form)
        if from_form:
            self.redirect(f"{self.prefix}verifications/{v.id}")
            return
        self.set_header("Location", f"{self.prefix}api/verifications/{v.id}")
        self.write_json(v.as_dict(), status=202)

    @web.authenticated
    async def get(self) -> None:
        who = self.whose(self.query([USER_PARAM])["user"])
        rows = await to_thread(self.log.verifications, username=who, limit=200)
        self.write_json({"verifications": [v.as_dict() for v in rows]})


class VerificationHandler(SessionsBase):
    """``GET /verifications/<id>`` (page) and ``GET /api/verifications/<id>`` (JSON report)."""

    @web.authenticated
    async def get(self, verification_id: str) -> None:
        v = await to_thread(self.log.verification, path_id(verification_id, "verification"))
        if v is None:
            raise ApiError(404, f"no verification {verification_id}")
        self.check_owner(v.username)
        if self.wants_json():
            self.write_json(v.as_dict())
            return
        checked = await to_thread(self.log.get, v.session_id) if v.session_id else None
        self.render_page("verification.html", v=v, checked=checked)


handlers: list[tuple[str, type]] = [
    ("sessions", SessionsHandler),
    ("api/sessions", SessionsHandler),
    ("api/sessions.csv", SessionsCsvHandler),
    (r"api/sessions/(\d+)", SessionHandler),
    ("verify", VerificationsHandler),
    ("api/verifications", VerificationsHandler),
    (r"verifications/(\d+)", VerificationHandler),
    (r"api/verifications/(\d+)", VerificationHandler),
]

_NULLABLE_STR = {"type": ["string", "null"]}
_SESSION = {
    "type": "object",
    "required": ["id", "username", "group", "offering", "trust", "started_at", "end_reason"],
    "properties": {
        "id": {"type": "integer"}, "username": {"type": "string"}, "server_name": {"type": "string"},
        "group": {"type": "string"}, "resource_class": {"type": "string"},
        "offering": {"type": "string"}, "accelerator": {"type": "string"},
        "count": {"type": "integer"}, "trust": {"type": "string", "enum": ["trusted", "untrusted"]},
        "backend": {"type": "string"}, "host": _NULLABLE_STR, "instance_id": _NULLABLE_STR,
        "instance_type": _NULLABLE_STR, "gpu_uuids": {"type": "array", "items": {"type": "string"}},
        "image": _NULLABLE_STR, "image_id": _NULLABLE_STR,
        "hidden_dirs": {"type": "array", "items": {"type": "string"}},
        "details": {"type": "object"}, "reservation_id": {"type": ["integer", "null"]},
        "started_at": {"type": "string"}, "stopped_at": _NULLABLE_STR,
        "end_reason": {"type": ["string", "null"], "enum": [*END_REASONS, None]},
        "end_detail": _NULLABLE_STR,
        "moved_from_id": {"type": ["integer", "null"],
                          "description": "the session this server replaced when its user moved it to other hardware"},
    },
}
_VERIFICATION = {
    "type": "object",
    "required": ["id", "username", "notebook", "offering", "state"],
    "properties": {
        "id": {"type": "integer"}, "session_id": {"type": ["integer", "null"]},
        "run_session_id": {"type": ["integer", "null"]}, "username": {"type": "string"},
        "group": {"type": "string"}, "notebook": {"type": "string"}, "offering": {"type": "string"},
        "server_name": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "running", "passed", "failed", "error"]},
        "message": _NULLABLE_STR, "report": {"type": ["object", "null"]},
        "created_at": {"type": "string"}, "finished_at": _NULLABLE_STR,
    },
}
schemas: dict[str, Any] = {"Session": _SESSION, "Verification": _VERIFICATION}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


USER_PARAM = {"name": "user", "in": "query", "schema": NAME_SCHEMA,
              "description": "admins: only this user's (default: everyone's)"}
#: ``GET /api/sessions``'s query, as the document shows it and the handler reads it.
LIST_QUERY = [USER_PARAM, {"name": "limit", "in": "query", "description": "at most this many",
                           "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                      "default": 200}}]
_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
#: ``POST /api/verifications``'s body.
VERIFY_BODY = {
    "type": "object", "required": ["notebook", "offering"],
    "properties": {
        "notebook": {"type": "string", "description": "path relative to your home"},
        "offering": {"type": "string", "description": "a trusted offering, class/model"},
        "session_id": {**_ID_SCHEMA, "description": "the session the result came from"},
        "group": {"type": "string", "description": "group charged (default: the session's)"},
        "rel_tol": {"type": "number", "minimum": 0},
        "abs_tol": {"type": "number", "minimum": 0},
    }}
openapi_paths: dict[str, Any] = {
    "/api/sessions": {"get": {
        "summary": "Provenance records of sessions, newest first (yours; admins: everyone's)",
        "operationId": "listSessions",
        "parameters": LIST_QUERY,
        "responses": responses(_json({"type": "object", "required": ["sessions"], "properties": {
            "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}}},
            "session records"), 400, 403),
    }},
    "/api/sessions.csv": {"get": {
        "summary": "The same records as CSV (columns: " + ", ".join(CSV_COLUMNS) + ")",
        "operationId": "exportSessions",
        "parameters": [USER_PARAM],
        "responses": responses({"description": "CSV", "content": {"text/csv": {
            "schema": {"type": "string"}}}}, 400, 403),
    }},
    "/api/sessions/{session_id}": {"get": {
        "summary": "One session's provenance and its verifications",
        "operationId": "getSession",
        "parameters": [{"name": "session_id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 0}}],
        "responses": responses(_json({"$ref": "#/components/schemas/Session"}, "the record"), 403, 404),
    }},
    "/api/verifications": {
        "get": {
            "summary": "Verifications, newest first (yours; admins: everyone's)",
            "operationId": "listVerifications",
            "parameters": [USER_PARAM],
            "responses": responses(_json({"type": "object", "required": ["verifications"], "properties": {
                "verifications": {"type": "array",
                                  "items": {"$ref": "#/components/schemas/Verification"}}}},
                "verifications"), 400, 403),
        },
        "post": {
            "summary": "Run a notebook of your home again on trusted hardware and compare the outputs",
            "operationId": "verifyNotebook",
            "requestBody": {"required": True, "content": {"application/json": {"schema": VERIFY_BODY}}},
            "responses": {
                "202": _json({"$ref": "#/components/schemas/Verification"}, "started"),
                **{k: v for k, v in responses({}, 400, 403, 404, 413).items() if k != "200"},
            },
        },
    },
    "/api/verifications/{verification_id}": {"get": {
        "summary": "A verification and its cell-by-cell report",
        "operationId": "getVerification",
        "parameters": [{"name": "verification_id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 0}}],
        "responses": responses(_json({"$ref": "#/components/schemas/Verification"}, "the verification"),
                               403, 404),
    }},
}
