"""The portal's landing page: an overview of money, limits, running servers, capacity and
refusals, per role (admins all groups, leaders their groups, students their own use).

``GET /`` is the page, ``GET /api/dashboard`` the same figures as JSON.  Each tile links
to the page with its detail.
"""

from __future__ import annotations

from asyncio import to_thread
from typing import Any

from tornado import web

from hybridhub.accounting.dashboard import Dashboard, Scope, dashboard
from hybridhub.accounting.provider_bills import balances
from hybridhub.accounting.reports import totals_by
from hybridhub.web.base import PortalHandler, Viewer, responses
from hybridhub.web.charts import stacked_bars


def scope_of(viewer: Viewer) -> Scope:
    """Admins: everything; leaders: their led groups; students: their own use."""
    led = viewer.led_groups()
    if led is None:
        return Scope(groups=None, username=None)
    if led:
        return Scope(groups=frozenset(led), username=None)
    return Scope(groups=None, username=viewer.name)


class DashboardHandler(PortalHandler):
    """``GET /`` (page) and ``GET /api/dashboard`` (JSON)."""

    def figures(self) -> Dashboard:
        """The tiles for the caller (runs in a thread)."""
        db, now = self.accounting.db, self.accounting._now()
        return dashboard(db, scope_of(self.viewer), now, self.viewer.readable_groups())

    @web.authenticated
    async def get(self) -> None:
        board = await to_thread(self.figures)
        if self.wants_json():
            self.write_json(board.as_dict())
            return
        chart = stacked_bars(totals_by(board.daily, "resource_class", "cost"),
                             title="Spend per day this month by class", unit="cost ($)",
                             legend="class")
        bills = await to_thread(balances, self.accounting.db) if self.viewer.led_groups() is None else []
        self.render_page("dashboard.html", board=board, chart=chart, provider_balances=bills)


handlers: list[tuple[str, type]] = [("", DashboardHandler), ("api/dashboard", DashboardHandler)]

openapi_paths: dict[str, Any] = {
    "/api/dashboard": {"get": {
        "summary": "The overview: this month's spend by class, budgets near their limit "
                   "with forecasts, running servers and capacity by class, refusals in 24 h",
        "operationId": "dashboard",
        "responses": responses({"description": "the figures the caller may see", "content": {
            "application/json": {"schema": {"type": "object", "required": [
                "period_start", "spend", "near_limit", "running", "capacity", "refusals_24h"],
                "properties": {
                    "period_start": {"type": "string"},
                    "spend": {"type": "array", "items": {"type": "object"}},
                    "near_limit": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Budget"}},
                    "running": {"type": "array", "items": {"type": "object"}},
                    "capacity": {"type": "array", "items": {"type": "object"}},
                    "refusals_24h": {"type": "object",
                                     "additionalProperties": {"type": "integer"}},
                    "idle_culled": {"type": "array", "description": "servers stopped for idle "
                                    "accelerators this period per class: the accelerator-hours their "
                                    "reservations gave back and their value ($)", "items": {
                                        "type": "object", "properties": {
                                            "resource_class": {"type": "string"},
                                            "servers": {"type": "integer"},
                                            "accelerator_hours": {"type": "number"},
                                            "value": {"type": "number"}}}},
                }}}}}, 403),
    }},
}
