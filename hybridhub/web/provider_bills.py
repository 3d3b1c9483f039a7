"""Providers' bills against hybridhub's charges (admins): ``GET /provider-bills`` (page) and
``/api/provider-bills`` (JSON), per day and group, with the difference.

The figures are what the hub recorded (:mod:`hybridhub.spawner.provider_bills`): the portal never calls a
provider.  A provider's classes are the hub's classes on its backend, as the hub recorded them.
"""

from __future__ import annotations

from asyncio import to_thread
from datetime import date, timedelta
from typing import Any

from tornado import web

from hybridhub.accounting.provider_bills import balances, reconciliation
from hybridhub.web.base import ApiError, PortalHandler, responses


class ProviderBillsHandler(PortalHandler):
    """``GET /provider-bills`` and ``/api/provider-bills``."""

    def report(self) -> dict[str, Any]:
        """The days, the balance and the filter (runs in a thread)."""
        query = self.query(QUERY)
        until = query["until"].date() if query["until"] else date.today() + timedelta(days=1)
        since = query["since"].date() if query["since"] else until - timedelta(days=31)
        if until <= since:
            raise ApiError(400, "until must be after since", "until")
        provider = query["provider"]
        bal = next((b for b in balances(self.accounting.db) if b.provider == provider), None)
        classes = bal.resource_classes if bal else []
        days = reconciliation(self.accounting.db, provider, since, until, classes)
        return {"provider": provider, "classes": classes, "since": since.isoformat(), "until": until.isoformat(),
                "days": [{"day": d.day, "charged": d.charged, "charged_usd": d.charged_usd,
                          "provider_usd": d.provider_usd, "difference_usd": d.difference_usd} for d in days],
                "balance": None if bal is None else {
                    "balance_usd": bal.balance_usd, "running_usd_per_hour": bal.running_usd_per_hour,
                    "covers_next_day": bal.covers_next_day, "fetched_at": bal.fetched_at.isoformat()}}

    @web.authenticated
    async def get(self) -> None:
        self.require_admin("see the providers' bills")
        found = await to_thread(self.report)
        if self.wants_json():
            self.write_json(found)
            return
        self.render_page("provider_bills.html", report=found)


handlers: list[tuple[str, type]] = [("provider-bills", ProviderBillsHandler),
                                    ("api/provider-bills", ProviderBillsHandler)]

QUERY = [
    {"name": "provider", "in": "query", "schema": {"type": "string", "enum": ["theta"], "default": "theta"},
     "description": "the provider (a backend that bills through one)"},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "from this day on (YYYY-MM-DD, UTC); default 31 days before until"},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "before this day (YYYY-MM-DD, UTC), after since; default tomorrow"},
]
openapi_paths: dict[str, Any] = {
    "/api/provider-bills": {"get": {
        "summary": "A provider's bill per day against hybridhub's charges per group, and its balance (admins)",
        "operationId": "providerBills", "parameters": QUERY,
        "responses": responses({"description": "the reconciliation", "content": {"application/json": {
            "schema": {"type": "object", "required": ["provider", "classes", "since", "until", "days", "balance"],
                       "properties": {"provider": {"type": "string"}, "classes": {"type": "array"},
                                      "since": {"type": "string"}, "until": {"type": "string"},
                                      "days": {"type": "array", "items": {"type": "object"}},
                                      "balance": {"type": ["object", "null"]}}}}}}, 400, 403),
    }},
}
