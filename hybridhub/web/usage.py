"""Usage: per group by class, model and user over time, in money and accelerator-hours
(page with charts, JSON, CSV).

What a caller sees: admins (and leaders of every group) anything; a group's leader every
member's use of that group (``?group=<g>``); everyone else only their own use.
"""

from __future__ import annotations

from asyncio import to_thread
from dataclasses import asdict
from typing import Any

from tornado import web

from hybridhub.accounting.reports import BUCKETS, CSV_COLUMNS, UsageFilter, totals_by, usage_csv, usage_report
from hybridhub.web.base import NAME_SCHEMA, ApiError, PortalHandler, forbidden, responses
from hybridhub.web.budgets import groups_view
from hybridhub.web.charts import stacked_bars

#: Rows shown in the page's table (the CSV has them all).
PAGE_ROWS = 500


class UsageHandler(PortalHandler):
    """``GET /usage`` (page), ``/api/usage`` (JSON) and ``/usage.csv``, ``/api/usage.csv``."""

    def usage_filter(self) -> UsageFilter:
        """The report filter from the query, narrowed to what the caller may see."""
        viewer = self.viewer
        query = self.query(QUERY)
        group, user, since, until = query["group"], query["user"], query["since"], query["until"]
        if since and until and until <= since:
            raise ApiError(400, "until must be after since", "until")
        if group is not None and not viewer.can_read_group(group):
            raise forbidden(f"see group {group!r}")
        sees_all = viewer.led_groups() is None or (group is not None and viewer.leads_group(group))
        if not sees_all:
            if user is not None and user != viewer.name:
                raise forbidden(f"see {user}'s usage")
            user = viewer.name
        return UsageFilter(
            since=since, until=until, groups=[group] if group else None, username=user,
            resource_class=query["class"], bucket=query["bucket"],
        )

    @web.authenticated
    async def get(self, fmt: str = "") -> None:
        where = self.usage_filter()
        rows = await self.run_report(where)
        if fmt == ".csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="usage.csv"')
            self.finish(usage_csv(rows))
            return
        totals = {
            "amount": sum(r.amount for r in rows),
            "accelerator_hours": sum(r.accelerator_hours for r in rows),
            "entries": sum(r.entries for r in rows),
            "cost": sum(r.cost for r in rows),
        }
        if self.wants_json():
            self.write_json({
                "filter": {k: (list(v) if k == "groups" and v else v)
                           for k, v in asdict(where).items()},
                "rows": [asdict(r) for r in rows],
                "totals": totals,
            })
            return
        charts = [stacked_bars(totals_by(rows, key, value), title=f"{what} by {label}",
                               unit=unit, legend=label)
                  for value, what, unit in (("cost", "Spend", "cost ($)"),
                                            ("accelerator_hours", "Accelerator-hours",
                                             "accelerator-hours"))
                  for key, label in (("resource_class", "class"), ("group", "group"),
                                     ("username", "user"))]
        self.render_page(
            "usage.html", rows=rows[:PAGE_ROWS], more=max(0, len(rows) - PAGE_ROWS),
            totals=totals, charts=charts, where=where, buckets=BUCKETS,
            query=self.request.query, groups=sorted(self.viewer_groups()),
        )

    async def run_report(self, where: UsageFilter) -> list:
        """The report, computed off the event loop."""
        return await to_thread(usage_report, self.accounting.db, where)

    def viewer_groups(self) -> set[str]:
        """Groups offered in the page's group filter."""
        readable = self.viewer.readable_groups()
        if readable is not None:
            return readable
        return {g["name"] for g in groups_view(self.accounting.db, None,
                                               self.accounting._now())}


handlers: list[tuple[str, type]] = [
    (r"usage(\.csv)?", UsageHandler),
    (r"api/usage(\.csv)?", UsageHandler),
]

#: The report's query, as the document shows it and :meth:`UsageHandler.usage_filter` reads it.
QUERY = [
    {"name": "group", "in": "query", "schema": NAME_SCHEMA,
     "description": "one group (leaders see all its members; others only themselves)"},
    {"name": "user", "in": "query", "schema": NAME_SCHEMA},
    {"name": "class", "in": "query", "schema": NAME_SCHEMA},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "from this day on (YYYY-MM-DD, UTC)"},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "before this day (YYYY-MM-DD, UTC), after since"},
    {"name": "bucket", "in": "query",
     "schema": {"type": "string", "enum": list(BUCKETS), "default": "day"}},
]
_ROW = {
    "type": "object",
    "required": list(CSV_COLUMNS),
    "properties": {
        "period": {"type": "string"}, "group": {"type": "string"},
        "resource_class": {"type": "string"}, "model": {"type": "string"},
        "username": {"type": "string"}, "amount": {"type": "number"},
        "accelerator_hours": {"type": "number"}, "entries": {"type": "integer"},
        "cost": {"type": "number", "description": "money: accelerator-hours at the price "
                 "in force when each launch was admitted"},
    },
}

schemas: dict[str, Any] = {"UsageRow": _ROW}

openapi_paths: dict[str, Any] = {
    "/api/usage": {"get": {
        "summary": "Ledger totals per period, group, class, model and user",
        "operationId": "usageReport",
        "parameters": QUERY,
        "responses": responses({"description": "the report", "content": {"application/json": {
            "schema": {"type": "object", "required": ["filter", "rows", "totals"], "properties": {
                "filter": {"type": "object"},
                "rows": {"type": "array", "items": {"$ref": "#/components/schemas/UsageRow"}},
                "totals": {"type": "object"},
            }}}}}, 400, 403),
    }},
    "/api/usage.csv": {"get": {
        "summary": "The same report as CSV (columns: " + ", ".join(CSV_COLUMNS) + ")",
        "operationId": "usageCsv",
        "parameters": QUERY,
        "responses": responses({"description": "CSV with a header line", "content": {
            "text/csv": {"schema": {"type": "string"}}}}, 400, 403),
    }},
}
