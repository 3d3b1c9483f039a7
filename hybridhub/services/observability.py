"""The services' side of :mod:`hybridhub.metrics`: what was charged, budget levels, and ``/metrics``.

- :class:`ChargeCounter` adds each tick's new ledger lines to ``hybridhub_accelerator_hours_total``
  and ``hybridhub_money_charged_total`` (by class and group), reading only lines it has not seen.
- :class:`BudgetCollector` reports ``hybridhub_budget_used_ratio`` (by group and class, the fullest
  budget of each) when scraped; :class:`~hybridhub.metrics.MetricsHandler` collects in a thread.
- :func:`metrics_routes` serves the registry at ``/metrics`` and ``<service prefix>metrics`` (the
  hub's proxy forwards the prefix), to a hub token with ``read:metrics``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from hybridhub import metrics
from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Budget, Group, Reservation, UsageEntry


class ChargeCounter:
    """Counts the ledger lines written since it last looked (it starts after the newest one)."""

    def __init__(self, db: Database):
        self.db = db
        with db.session() as s:
            self.last_id = s.execute(select(func.coalesce(func.max(UsageEntry.id), 0))).scalar_one()

    def count(self) -> int:
        """Add the new lines' accelerator-hours and list-price money to the counters; how many lines."""
        with self.db.session() as s:
            rows = s.execute(
                select(UsageEntry.id, UsageEntry.resource_class, Group.name, UsageEntry.accelerator_hours,
                       Reservation.price_per_hour)
                .join(Group, Group.id == UsageEntry.group_id)
                .join(Reservation, Reservation.id == UsageEntry.reservation_id)
                .where(UsageEntry.id > self.last_id)
                .order_by(UsageEntry.id)
            ).all()
        hours: dict[tuple[str, str], float] = defaultdict(float)
        money: dict[tuple[str, str], float] = defaultdict(float)
        for _id, cls, group, acc_hours, price in rows:
            hours[cls, group] += float(acc_hours)
            money[cls, group] += float(acc_hours) * float(price or 0.0)
        for key, value in hours.items():
            metrics.ACCELERATOR_HOURS.labels(*key).inc(value)
            metrics.MONEY_CHARGED.labels(*key).inc(money[key])
        if rows:
            self.last_id = rows[-1][0]
        return len(rows)


class BudgetCollector:
    """``hybridhub_budget_used_ratio{group, class}``: used / amount of the fullest budget, read at scrape."""

    def __init__(self, db: Database):
        self.db = db

    def describe(self) -> list:
        """Nothing up front: registering must not read the database."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family over every budget with an amount."""
        family = GaugeMetricFamily("hybridhub_budget_used_ratio",
                                   "Share of the budget used this period (the fullest budget per group and class).",
                                   labels=["group", "class"])
        with self.db.session() as s:
            rows = s.execute(select(Group.name, Budget.resource_class, Budget.used, Budget.amount)
                             .join(Group, Group.id == Budget.group_id).where(Budget.amount > 0)).all()
        fullest: dict[tuple[str, str], float] = {}
        for group, cls, used, amount in rows:
            fullest[group, cls] = max(fullest.get((group, cls), 0.0), float(used) / float(amount))
        for (group, cls), ratio in sorted(fullest.items()):
            family.add_metric([group, cls], ratio)
        yield family


def metrics_routes(service_prefix: str = "") -> list[tuple]:
    """Tornado routes serving :data:`~hybridhub.metrics.SERVICE_REGISTRY` (hub token, ``read:metrics``)."""
    target = {"registry": metrics.SERVICE_REGISTRY, "check": metrics.ScopeCheck()}
    paths = {"/metrics"}
    if service_prefix.strip("/"):
        paths.add("/" + service_prefix.strip("/") + "/metrics")
    return [(path, metrics.MetricsHandler, target) for path in sorted(paths)]
