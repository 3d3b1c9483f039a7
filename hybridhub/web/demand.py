"""Unmet demand: refused launches per day and offering (page with a chart, JSON, CSV).

Admins see every refusal; a leader those charged to their groups; everyone else their own.
"""

from __future__ import annotations

from asyncio import to_thread
from dataclasses import asdict
from typing import Any

from tornado import web

from hybridhub.accounting.demand import CSV_COLUMNS, demand_csv, demand_report
from hybridhub.web.base import ApiError, PortalHandler, responses
from hybridhub.web.charts import stacked_bars


class DemandHandler(PortalHandler):
    """``GET /demand`` (page), ``/api/demand`` (JSON), ``/demand.csv`` and ``/api/demand.csv``."""

    def report(self) -> tuple[list, dict[str, Any]]:
        """The caller's rows and the filter they were read with (runs in a thread)."""
        query = self.query(QUERY)
        since, until = query["since"], query["until"]
        if since and until and until <= since:
            raise ApiError(400, "until must be after since", "until")
        led = self.viewer.led_groups()
        if led is None:
            groups, user = None, None
        else:
            groups, user = (sorted(led) or None), self.viewer.name
        rows = demand_report(self.accounting.db, since=since, until=until,
                             groups=groups, username=user)
        return rows, {"since": since, "until": until, "groups": groups, "username": user}

    @web.authenticated
    async def get(self, fmt: str = "") -> None:
        rows, where = await to_thread(self.report)
        if fmt == ".csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="demand.csv"')
            self.finish(demand_csv(rows))
            return
        totals = {"refusals": sum(r.refusals for r in rows),
                  "accelerator_hours": sum(r.accelerator_hours for r in rows)}
        if self.wants_json():
            self.write_json({"filter": where, "rows": [asdict(r) for r in rows],
                             "totals": totals})
            return
        series: dict[str, dict[str, float]] = {}
        for r in rows:
            key = r.resource_class + (f" / {r.model}" if r.model else "")
            series.setdefault(key, {})
            series[key][r.day] = series[key].get(r.day, 0.0) + r.accelerator_hours
        chart = stacked_bars(series, title="Accelerator-hours refused per day by offering",
                             unit="accelerator-hours asked for", legend="offering")
        self.render_page("demand.html", rows=rows, totals=totals, chart=chart, where=where,
                         query=self.request.query)


handlers: list[tuple[str, type]] = [
    (r"demand(\.csv)?", DemandHandler),
    (r"api/demand(\.csv)?", DemandHandler),
]

#: The report's query, as the document shows it and :meth:`DemandHandler.report` reads it.
QUERY = [
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "from this day on (YYYY-MM-DD, UTC)"},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "before this day (YYYY-MM-DD, UTC), after since"},
]
_ROW = {
    "type": "object", "required": list(CSV_COLUMNS),
    "properties": {
        "day": {"type": "string"}, "resource_class": {"type": "string"},
        "model": {"type": "string"},
        "reason": {"type": "string", "description": "budget, no_budget, capacity, barred, "
                   "course_lock or other"},
        "refusals": {"type": "integer"}, "accelerators": {"type": "integer"},
        "accelerator_hours": {"type": "number"},
    },
}
schemas: dict[str, Any] = {"DemandRow": _ROW}
openapi_paths: dict[str, Any] = {
    "/api/demand": {"get": {
        "summary": "Refused launches (unmet demand) per day, class, model and reason",
        "operationId": "demandReport", "parameters": QUERY,
        "responses": responses({"description": "the report", "content": {"application/json": {
            "schema": {"type": "object", "required": ["filter", "rows", "totals"], "properties": {
                "filter": {"type": "object"},
                "rows": {"type": "array", "items": {"$ref": "#/components/schemas/DemandRow"}},
                "totals": {"type": "object"}}}}}}, 400, 403),
    }},
    "/api/demand.csv": {"get": {
        "summary": "The same report as CSV (columns: " + ", ".join(CSV_COLUMNS) + ")",
        "operationId": "demandCsv", "parameters": QUERY,
        "responses": responses({"description": "CSV with a header line", "content": {
            "text/csv": {"schema": {"type": "string"}}}}, 400, 403),
    }},
}
