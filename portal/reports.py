"""Usage reports from the ledger: totals per period, group, class, model and user.

:func:`usage_report` is one ``GROUP BY`` over ``usage_entries`` (grouped by ``group_id``
and joined to the group names afterwards, so the join touches result rows only), the
same on SQLite and PostgreSQL apart from how a timestamp is cut to its day, week or
month.  The portal's pages, its REST API, the CSV export and ``bench/usage_report.py``
all read it from here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime

from sqlalchemy import func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from portal.db import Database
from portal.models import Group, Reservation, UsageEntry

BUCKETS = ("day", "week", "month")


@dataclass(frozen=True)
class UsageRow:
    """Ledger totals for one period, group, class, model and user."""

    period: str
    group: str
    resource_class: str
    model: str
    username: str
    amount: float
    accelerator_hours: float
    entries: int


CSV_COLUMNS = tuple(f.name for f in fields(UsageRow))


@dataclass(frozen=True)
class UsageFilter:
    """What a report covers: a time span, some groups, one user, one class."""

    since: datetime | None = None
    until: datetime | None = None
    groups: Collection[str] | None = None
    username: str | None = None
    resource_class: str | None = None
    bucket: str = "day"


def _bucket(dialect: str, bucket: str, ts: ColumnElement) -> ColumnElement:
    """``ts`` cut to the start of its day, ISO week (Monday) or month."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    if dialect == "postgresql":
        return func.date_trunc(bucket, ts)
    if bucket == "day":
        return func.date(ts)
    if bucket == "week":
        return func.date(ts, "-6 days", "weekday 1")
    return func.strftime("%Y-%m-01", ts)


def _period_text(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.strftime("%Y-%m-%d")
    return str(value)[:10]


def usage_report(db: Database, where: UsageFilter = UsageFilter()) -> list[UsageRow]:
    """Ledger totals grouped by period, group, class, model and user, oldest period first."""
    ue = UsageEntry.__table__
    period = _bucket(db.dialect, where.bucket, ue.c.ts_from).label("period")
    agg = select(
        period,
        ue.c.group_id,
        ue.c.resource_class,
        ue.c.model,
        ue.c.username,
        func.sum(ue.c.amount).label("amount"),
        func.sum(ue.c.accelerator_hours).label("accelerator_hours"),
        func.count().label("entries"),
    )
    if where.since is not None:
        agg = agg.where(ue.c.ts_from >= where.since)
    if where.until is not None:
        agg = agg.where(ue.c.ts_from < where.until)
    if where.groups is not None:
        ids = select(Group.id).where(Group.name.in_(sorted(where.groups)))
        agg = agg.where(ue.c.group_id.in_(ids.scalar_subquery()))
    if where.username is not None:
        agg = agg.where(ue.c.username == where.username)
    if where.resource_class is not None:
        agg = agg.where(ue.c.resource_class == where.resource_class)
    agg = agg.group_by(
        period, ue.c.group_id, ue.c.resource_class, ue.c.model, ue.c.username
    ).subquery()
    model = func.coalesce(agg.c.model, literal(""))
    query = (
        select(
            agg.c.period, Group.name, agg.c.resource_class, model, agg.c.username,
            agg.c.amount, agg.c.accelerator_hours, agg.c.entries,
        )
        .join(Group, Group.id == agg.c.group_id)
        .order_by(agg.c.period, Group.name, agg.c.resource_class, model, agg.c.username)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        UsageRow(_period_text(p), g, rc, m, u, float(a), float(h), int(n))
        for p, g, rc, m, u, a, h, n in rows
    ]


def totals_by(rows: Iterable[UsageRow], key: str) -> dict[str, dict[str, float]]:
    """``{series: {period: amount}}`` where series is each row's ``key`` (for charts)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        series = out.setdefault(str(getattr(row, key)), {})
        series[row.period] = series.get(row.period, 0.0) + row.amount
    return out


def usage_csv(rows: Iterable[UsageRow]) -> str:
    """The report as CSV with a header line (``CSV_COLUMNS``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [f"{v:.6f}" if isinstance(v, float) else v for v in astuple(row)]
        )
    return out.getvalue()


@dataclass(frozen=True)
class RunningServer:
    """An open reservation: a server admitted or running, what it holds and has cost."""

    reservation_id: int
    username: str
    server_name: str
    group: str
    resource_class: str
    model: str
    count: int
    hours: float
    state: str
    started_at: datetime | None
    charged_until: datetime | None
    amount_reserved: float
    amount_charged: float
    price_per_hour: float

    @property
    def cost_so_far(self) -> float:
        """List-price cost of the time charged so far (price per hour x count x hours)."""
        if self.started_at is None or self.charged_until is None:
            return 0.0
        hours = (self.charged_until - self.started_at).total_seconds() / 3600.0
        return self.price_per_hour * self.count * hours


def running_servers(db: Database, groups: Collection[str] | None = None,
                    username: str | None = None) -> list[RunningServer]:
    """Open reservations (admitted or running), optionally for some groups or one user."""
    rt = Reservation.__table__
    query = (
        select(
            rt.c.id, rt.c.username, rt.c.server_name, Group.name, rt.c.resource_class,
            func.coalesce(rt.c.model, literal("")), rt.c.count, rt.c.hours, rt.c.state,
            rt.c.started_at, rt.c.charged_until, rt.c.amount_reserved, rt.c.amount_charged,
            rt.c.price_per_hour,
        )
        .join(Group, Group.id == rt.c.group_id)
        .where(rt.c.state != "closed")
        .order_by(rt.c.id)
    )
    if groups is not None:
        query = query.where(Group.name.in_(sorted(groups)))
    if username is not None:
        query = query.where(rt.c.username == username)
    with db.engine.connect() as conn:
        return [RunningServer(*row) for row in conn.execute(query).all()]
