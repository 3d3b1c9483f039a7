"""What a hardware provider billed (per day) and its balance, beside what hybridhub charged.

The hub's provider-bills runner (:mod:`hybridhub.spawner.provider_bills`) asks each backend that bills
through a provider (Theta EdgeCloud's ``billing/usage`` and ``billing/balance``) and records the answer
here; the portal's reconciliation page and the admin dashboard read it back, so every number a page
shows comes from the accounting database.  Amounts are USD, exact (:class:`~hybridhub.accounting.models.Amount`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import JSON, Date, DateTime, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Amount, Base
from hybridhub.accounting.reports import UsageFilter, usage_report

#: Hours of running nodes a provider's balance must cover before the dashboard warns.
COVER_HOURS = 24


class ProviderDay(Base):
    """A provider's bill for one day (USD), as it last answered."""

    __tablename__ = "provider_days"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    amount_usd: Mapped[float] = mapped_column(Amount)
    fetched_at: Mapped[datetime] = mapped_column(DateTime)


class ProviderBalance(Base):
    """A provider account's balance and the hourly price of what runs there now, as it last answered."""

    __tablename__ = "provider_balances"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    balance_usd: Mapped[float | None] = mapped_column(Amount, nullable=True)
    running_usd_per_hour: Mapped[float] = mapped_column(Amount)
    #: the hub's classes on the provider's backend when it was read: what the reconciliation compares
    resource_classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    fetched_at: Mapped[datetime] = mapped_column(DateTime)

    @property
    def covers_next_day(self) -> bool:
        """Whether the balance pays for the running nodes for the next :data:`COVER_HOURS` hours."""
        return self.balance_usd is None or self.balance_usd >= self.running_usd_per_hour * COVER_HOURS


def record(db: Database, provider: str, days: Mapping[date, float], balance_usd: float | None,
           running_usd_per_hour: float, now: datetime, classes: Collection[str] = ()) -> None:
    """Replace ``provider``'s bill for ``days``, its balance and its ``classes`` (the hub's classes on its
    backend) with this answer (one transaction)."""
    with db.session() as s:
        if days:
            s.execute(delete(ProviderDay).where(ProviderDay.provider == provider, ProviderDay.day.in_(list(days))))
            s.add_all(ProviderDay(provider=provider, day=d, amount_usd=a, fetched_at=now) for d, a in days.items())
        s.execute(delete(ProviderBalance).where(ProviderBalance.provider == provider))
        s.add(ProviderBalance(provider=provider, balance_usd=balance_usd, running_usd_per_hour=running_usd_per_hour,
                              resource_classes=sorted(classes), fetched_at=now))


def balances(db: Database) -> list[ProviderBalance]:
    """Every provider's last balance."""
    with db.session() as s:
        found = list(s.scalars(select(ProviderBalance).order_by(ProviderBalance.provider)))
        s.expunge_all()
        return found


@dataclass
class BillDay:
    """One day: hybridhub's charges per group on the provider's classes, the provider's bill, the difference."""

    day: str
    charged: dict[str, float] = field(default_factory=dict)
    provider_usd: float | None = None

    @property
    def charged_usd(self) -> float:
        return sum(self.charged.values())

    @property
    def difference_usd(self) -> float | None:
        return None if self.provider_usd is None else self.provider_usd - self.charged_usd


def reconciliation(db: Database, provider: str, since: date, until: date, classes: Collection[str] | None = None
                   ) -> list[BillDay]:
    """Days from ``since`` up to ``until`` (exclusive) with a charge on ``classes`` (default: the provider's
    classes as last recorded) or a recorded bill."""
    if classes is None:
        bal = next((b for b in balances(db) if b.provider == provider), None)
        classes = bal.resource_classes if bal else []
    days: dict[str, BillDay] = {}
    start, end = datetime.combine(since, datetime.min.time()), datetime.combine(until, datetime.min.time())
    for cls in sorted(classes):
        for row in usage_report(db, UsageFilter(since=start, until=end, resource_class=cls, bucket="day")):
            day = days.setdefault(row.period[:10], BillDay(row.period[:10]))
            day.charged[row.group] = day.charged.get(row.group, 0.0) + row.cost
    with db.session() as s:
        for day, amount in s.execute(select(ProviderDay.day, ProviderDay.amount_usd).where(
                ProviderDay.provider == provider, ProviderDay.day >= since, ProviderDay.day < until)):
            days.setdefault(day.isoformat(), BillDay(day.isoformat())).provider_usd = amount
    return [days[d] for d in sorted(days)]


def last_days(today: date, n: int) -> tuple[date, date]:
    """``(since, until)`` of the ``n`` days up to and including ``today``."""
    return today - timedelta(days=n - 1), today + timedelta(days=1)
