"""Budget periods and amounts: when a period starts and resets, what a launch costs, what is left.

Pure functions over a :class:`~hybridhub.accounting.models.Budget` row and times (naive UTC);
the ledger and budget administration both stand on them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hybridhub.accounting.models import SCALE, Budget, from_units, to_units


def to_datetime(value: float | datetime) -> datetime:
    """A naive UTC datetime from epoch seconds or a (naive UTC or aware) datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value
    return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)


def month_start(dt: datetime) -> datetime:
    """Midnight UTC on the first of ``dt``'s month."""
    return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(dt: datetime) -> datetime:
    """Midnight UTC on the first of the month after ``dt``'s."""
    first = month_start(dt)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(
        month=first.month + 1
    )


def period_start_for(budget: Budget, now: datetime) -> datetime:
    """The start of the budget period that contains ``now``."""
    if budget.period == "monthly":
        return month_start(now)
    return budget.starts_at or budget.period_start


def period_used(budget: Budget, now: datetime) -> float:
    """What the budget has used in the period containing ``now`` (0 once a new one began)."""
    return budget.used if budget.period_start >= period_start_for(budget, now) else 0.0


def budget_left(budget: Budget, used: float) -> float:
    """Amount minus ``used`` minus reserved, exact in stored units, never negative."""
    return from_units(max(0, to_units(budget.amount) - to_units(used) - to_units(budget.reserved)))


def resets_at_for(budget: Budget, now: datetime) -> datetime | None:
    """When the budget next refills: the next month, the end of the term, or never."""
    if budget.period == "monthly":
        return next_month(now)
    if budget.period == "term":
        return budget.ends_at
    return None


def is_active(budget: Budget, now: datetime) -> bool:
    """Whether ``now`` lies inside the budget's dates (monthly budgets always do)."""
    if budget.period == "monthly":
        return True
    if budget.starts_at is not None and now < budget.starts_at:
        return False
    return not (budget.ends_at is not None and now >= budget.ends_at)


def cost(
    unit: str, count: int, hours: float, billing_weight: float, price_per_hour: float
) -> float:
    """The amount a launch costs in ``unit``: weighted accelerator-hours or credits."""
    if unit == "hours":
        return count * hours * billing_weight
    return count * hours * price_per_hour


def ceil_units(amount: float) -> int:
    """``amount`` in stored units, rounded up (a reservation never holds less than it costs)."""
    units = math.ceil(round(amount * SCALE, 3))  # 3 decimals absorb float noise in the product
    return max(units, 1) if amount > 0 else units  # nothing that costs anything is free
