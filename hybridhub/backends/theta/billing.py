"""Theta's bill against hybridhub's charges: what ``hybridhub-quota theta-billing`` reports.

Per day, what hybridhub charged each group for launches on the Theta classes (the portal's usage rows:
accelerator-hours at the admitted price) against what Theta's ``billing/usage`` reports for the project
on that day, with the difference (Theta's usage is per project, so the difference is per day).  And the
project's balance against the hourly price of the deployments now running: a warning when it will not
cover them for the next 24 hours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.client import MAX_USAGE_DAYS, ThetaClient, check_date

#: Hours of running nodes the balance must cover before the report warns.
COVER_HOURS = 24


@dataclass
class BillingDay:
    """One day: hybridhub's charges per group, Theta's amount, and the difference (Theta - hybridhub)."""

    day: str
    charged: dict[str, float] = field(default_factory=dict)
    theta_usd: float = 0.0

    @property
    def charged_usd(self) -> float:
        return sum(self.charged.values())

    @property
    def difference_usd(self) -> float:
        return self.theta_usd - self.charged_usd


def reconcile_days(rows: Iterable[Mapping], theta_days: Mapping[str, float], classes: Iterable[str]
                   ) -> list[BillingDay]:
    """Days (oldest first) with a charge on one of ``classes`` in ``rows`` (portal usage rows, bucket day) or
    an amount in ``theta_days``."""
    wanted = set(classes)
    days: dict[str, BillingDay] = {}
    for row in rows:
        if row["resource_class"] in wanted:
            day = days.setdefault(str(row["period"])[:10], BillingDay(str(row["period"])[:10]))
            day.charged[row["group"]] = day.charged.get(row["group"], 0.0) + float(row["cost"])
    for date, amount in theta_days.items():
        days.setdefault(date, BillingDay(date)).theta_usd += amount
    return [days[d] for d in sorted(days)]


async def theta_usage(client: ThetaClient, since: str, until: str) -> dict[str, float]:
    """Theta's USD per day from ``since`` to ``until`` (inclusive), asked in spans of at most 366 days."""
    start, end = check_date(since), check_date(until)
    days: dict[str, float] = {}
    while start <= end:
        stop = min(end, start + dt.timedelta(days=MAX_USAGE_DAYS - 1))
        for date, amount in tb.daily_usage(await client.get_billing_usage(start.isoformat(), stop.isoformat())).items():
            days[date] = days.get(date, 0.0) + amount
        start = stop + dt.timedelta(days=1)
    return days


@dataclass(frozen=True)
class Balance:
    """The project's balance and the hourly price of its running deployments."""

    balance_usd: float | None
    running_usd_per_hour: float

    @property
    def covers_next_day(self) -> bool:
        return self.balance_usd is None or self.balance_usd >= self.running_usd_per_hour * COVER_HOURS


async def balance(client: ThetaClient) -> Balance:
    """The balance, and the running deployments priced at their resources' current quotes."""
    amount = tb.balance_usd(await client.get_billing_balance())
    running = [d for d in tb.deployments(await client.list_gpu_deployments()) if d.running or d.pending]
    prices = tb.resources(await client.list_gpu_resources()) if running else []
    hourly = 0.0
    for dep in running:
        res = tb.find_resource(prices, dep.resource_id, dep.region)
        hourly += (res.price_per_hour_usd or 0.0) if res else 0.0
    return Balance(amount, hourly)


def format_report(days: list[BillingDay], bal: Balance | None = None) -> str:
    """The report as text: one line per day and group, each day's Theta amount and difference (USD to four
    places: a short launch costs fractions of a cent)."""
    lines = [f"{'day':<10}  {'group':<24} {'hybridhub ($)':>14} {'Theta ($)':>10} {'difference ($)':>15}"]
    for day in days:
        for group, usd in sorted(day.charged.items()):
            lines.append(f"{day.day:<10}  {group:<24} {usd:>14.4f}")
        lines.append(f"{day.day:<10}  {'(day)':<24} {day.charged_usd:>14.4f} {day.theta_usd:>10.4f} "
                     f"{day.difference_usd:>15.4f}")
    charged, theta = sum(d.charged_usd for d in days), sum(d.theta_usd for d in days)
    lines.append(f"{'total':<10}  {'':<24} {charged:>14.4f} {theta:>10.4f} {theta - charged:>15.4f}")
    if bal is not None:
        shown = "unknown" if bal.balance_usd is None else f"${bal.balance_usd:.2f}"
        lines.append(f"balance {shown}; running nodes ${bal.running_usd_per_hour:.2f}/h")
        if not bal.covers_next_day:
            lines.append(f"WARNING: the balance will not cover the running nodes for the next {COVER_HOURS} h "
                         f"(${bal.running_usd_per_hour * COVER_HOURS:.2f})")
    return "\n".join(lines)
