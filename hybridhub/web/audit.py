"""The audit log page and API: every budget change, who made it, when, before and after.

Admins see every group's changes, a leader their groups'; students have no access.
"""

from __future__ import annotations

from asyncio import to_thread
from typing import Any

from tornado import web

from hybridhub.accounting import audit
from hybridhub.web.base import NAME_SCHEMA, PortalHandler, forbidden, responses


class AuditHandler(PortalHandler):
    """``GET /audit`` (page) and ``GET /api/audit`` (JSON), newest first."""

    @web.authenticated
    async def get(self) -> None:
        group = self.query(QUERY)["group"]
        led = self.viewer.led_groups()
        if led is not None and not led:
            raise forbidden("read the audit log")
        if group is not None:
            if not self.viewer.leads_group(group):
                raise forbidden(f"read group {group!r}'s audit log")
            led = {group}
        entries = await to_thread(audit.entries, self.accounting.db, groups=led)
        if self.wants_json():
            self.write_json({"entries": entries})
            return
        self.render_page("audit.html", entries=entries)


handlers: list[tuple[str, type]] = [("audit", AuditHandler), ("api/audit", AuditHandler)]

_ENTRY = {
    "type": "object",
    "required": ["id", "ts", "actor", "action", "group", "after"],
    "properties": {
        "id": {"type": "integer"}, "ts": {"type": "string"}, "actor": {"type": "string"},
        "action": {"type": "string"}, "group": {"type": "string"},
        "budget_id": {"type": ["integer", "null"]}, "before": {"type": ["object", "null"]},
        "after": {"type": "object"}, "note": {"type": "string"},
    },
}

schemas: dict[str, Any] = {"AuditEntry": _ENTRY}
#: The log's query, as the document shows it and the handler reads it.
QUERY = [{"name": "group", "in": "query", "schema": NAME_SCHEMA,
          "description": "only this group's changes"}]

openapi_paths: dict[str, Any] = {
    "/api/audit": {"get": {
        "summary": "Budget changes, newest first (admins; leaders for their groups)",
        "operationId": "auditLog",
        "parameters": QUERY,
        "responses": responses({"description": "audit entries", "content": {
            "application/json": {"schema": {"type": "object", "required": ["entries"],
                                            "properties": {"entries": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/AuditEntry"},
                                            }}}}}}, 400, 403),
    }},
}
