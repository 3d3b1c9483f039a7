"""Running servers: every open reservation with its allocation and what it has cost so far.

Admins see all; a group's leader the servers charged to their groups; everyone else
their own.
"""

from __future__ import annotations

from asyncio import to_thread
from dataclasses import asdict
from typing import Any

from tornado import web

from hybridhub.accounting.reports import RunningServer, running_servers
from hybridhub.web.base import PortalHandler, responses


class ServersHandler(PortalHandler):
    """``GET /servers`` (page) and ``GET /api/servers`` (JSON)."""

    def visible(self) -> list[RunningServer]:
        """Open reservations the caller may see."""
        db, viewer = self.accounting.db, self.viewer
        led = viewer.led_groups()
        if led is None:
            return running_servers(db)
        found = {s.reservation_id: s for s in running_servers(db, username=viewer.name)}
        if led:
            found.update({s.reservation_id: s for s in running_servers(db, groups=led)})
        return [found[k] for k in sorted(found)]

    @web.authenticated
    async def get(self) -> None:
        servers = await to_thread(self.visible)
        if self.wants_json():
            self.write_json({"servers": [
                {**asdict(s), "cost_so_far": s.cost_so_far} for s in servers
            ]})
            return
        self.render_page("servers.html", servers=servers)


handlers: list[tuple[str, type]] = [("servers", ServersHandler), ("api/servers", ServersHandler)]

_SERVER = {
    "type": "object",
    "required": ["reservation_id", "username", "server_name", "group", "resource_class",
                 "model", "count", "hours", "state", "amount_reserved", "amount_charged",
                 "cost_so_far"],
    "properties": {
        "reservation_id": {"type": "integer"}, "username": {"type": "string"},
        "server_name": {"type": "string"}, "group": {"type": "string"},
        "resource_class": {"type": "string"}, "model": {"type": "string"},
        "count": {"type": "integer"}, "hours": {"type": "number"},
        "state": {"type": "string", "enum": ["admitted", "running"]},
        "started_at": {"type": ["string", "null"]},
        "charged_until": {"type": ["string", "null"]},
        "amount_reserved": {"type": "number", "description": "held, in budget units"},
        "amount_charged": {"type": "number", "description": "charged so far, budget units"},
        "price_per_hour": {"type": "number"},
        "cost_so_far": {"type": "number", "description": "list price of the time charged"},
    },
}

schemas: dict[str, Any] = {"RunningServer": _SERVER}

openapi_paths: dict[str, Any] = {
    "/api/servers": {"get": {
        "summary": "Running servers (open reservations) with allocation and cost so far",
        "operationId": "listServers",
        "responses": responses({"description": "servers", "content": {"application/json": {
            "schema": {"type": "object", "required": ["servers"], "properties": {
                "servers": {"type": "array",
                            "items": {"$ref": "#/components/schemas/RunningServer"}}}},
        }}}, 403),
    }},
}
