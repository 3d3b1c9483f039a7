"""Usage reports from the ledger: totals per period, group, class, model and user.

Reports read a daily rollup of the ledger (:class:`UsageRollup`, refreshed by the portal
every minute with :func:`refresh_rollup`, as slurmdbd rolls up its usage tables) plus the
few entries newer than the rollup's mark, so a report over a million-row ledger reads
thousands of rows, not millions, and is still exact.  Grouping is by ``group_id`` with the
names joined afterwards; SQL is the same on SQLite and PostgreSQL apart from how a
timestamp is cut to its day, week or month.  The portal's pages, its REST API, the CSV
export and ``bench/usage_report.py`` all read it from here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime

from sqlalchemy import (
    Date,
    Integer,
    String,
    UniqueConstraint,
    cast,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Amount, Base, Group, Reservation, UsageEntry

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
    cost: float = 0.0  # money: accelerator-hours at the price each launch was admitted at


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


class UsageRollup(Base):
    """Ledger totals per day, group, class, model and user, up to ``UsageRollupMark``.

    Like slurmdbd's usage rollup tables: reports read these few rows plus the ledger
    entries newer than the mark, instead of aggregating the whole ledger every time.
    """

    __tablename__ = "usage_rollup"
    __table_args__ = (
        UniqueConstraint("day", "group_id", "resource_class", "model", "username",
                         name="uq_usage_rollup"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    group_id: Mapped[int] = mapped_column(Integer)
    resource_class: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))  # "" for no model
    username: Mapped[str] = mapped_column(String(255))
    amount: Mapped[float] = mapped_column(Amount)
    accelerator_hours: Mapped[float] = mapped_column(Amount)
    entries: Mapped[int] = mapped_column(Integer)
    cost: Mapped[float] = mapped_column(Amount, default=0.0, server_default="0")  # money, exact like every amount


class UsageRollupMark(Base):
    """The newest ledger entry id already in :class:`UsageRollup` (one row, id 1)."""

    __tablename__ = "usage_rollup_mark"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_entry_id: Mapped[int] = mapped_column(Integer)


def _bucket(dialect: str, bucket: str, ts: ColumnElement) -> ColumnElement:
    """``ts`` (a timestamp or date) cut to the start of its day, ISO week (Monday) or month."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    if dialect == "postgresql":
        return func.date_trunc(bucket, ts)
    if bucket == "day":
        return func.date(ts)
    if bucket == "week":
        return func.date(ts, "-6 days", "weekday 1")
    return func.strftime("%Y-%m-01", ts)


def _day(dialect: str, ts: ColumnElement) -> ColumnElement:
    return cast(ts, Date) if dialect == "postgresql" else func.date(ts)


def _period_text(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.strftime("%Y-%m-%d")
    return str(value)[:10]


def _at_midnight(value: datetime | None) -> bool:
    return value is None or value == datetime.combine(value.date(), datetime.min.time())


def refresh_rollup(db: Database, upto: int | None = None) -> int:
    """Add the ledger entries newer than the mark (up to id ``upto``, default all) to the
    rollup; return how many.

    On PostgreSQL the ledger is locked in SHARE mode for the (short) refresh, which waits
    for transactions still inserting entries: no entry can commit below the new mark
    after it was taken.  SQLite serialises writers anyway (``BEGIN IMMEDIATE``).
    """
    ue, ru = UsageEntry.__table__, UsageRollup.__table__
    ins = pg_insert if db.dialect == "postgresql" else sqlite_insert
    with db.session() as s:
        if db.dialect == "postgresql":
            s.execute(text("LOCK TABLE usage_entries IN SHARE MODE"))
        mark = s.scalar(select(UsageRollupMark.last_entry_id).where(UsageRollupMark.id == 1))
        mark = mark or 0
        top = s.scalar(select(func.max(ue.c.id)))
        if top is not None and upto is not None:
            top = min(top, upto)
        if top is None or top <= mark:
            return 0
        day = _day(db.dialect, ue.c.ts_from)
        model = func.coalesce(ue.c.model, literal(""))
        rt = Reservation.__table__
        tail = (
            select(day, ue.c.group_id, ue.c.resource_class, model, ue.c.username,
                   func.sum(ue.c.amount), func.sum(ue.c.accelerator_hours), func.count(),
                   func.sum(_entry_cost(ue, rt)))
            .join(rt, rt.c.id == ue.c.reservation_id)
            .where(ue.c.id > mark, ue.c.id <= top)
            .group_by(day, ue.c.group_id, ue.c.resource_class, model, ue.c.username)
        )
        cols = ["day", "group_id", "resource_class", "model", "username", "amount",
                "accelerator_hours", "entries", "cost"]
        stmt = ins(ru).from_select(cols, tail)
        s.execute(stmt.on_conflict_do_update(
            index_elements=cols[:5],
            set_={c: ru.c[c] + stmt.excluded[c] for c in cols[5:]},
        ))
        s.execute(ins(UsageRollupMark).values(id=1, last_entry_id=top).on_conflict_do_update(
            index_elements=["id"], set_={"last_entry_id": top}))
        return s.scalar(select(func.count()).where(ue.c.id > mark, ue.c.id <= top)) or 0


def _entry_cost(ue, rt) -> ColumnElement:
    """A ledger entry's money: its accelerator-hours at its reservation's price.

    The price is the catalog's at admission, stored on the reservation, so a later
    change of the catalog's price does not rewrite the cost of time already used.
    """
    return ue.c.accelerator_hours * rt.c.price_per_hour


def _filtered(query, where: UsageFilter, cols, day_col: ColumnElement | None = None):
    """``query`` narrowed by ``where``; ``day_col`` set for rollup rows (whole days)."""
    if day_col is None:
        if where.since is not None:
            query = query.where(cols.ts_from >= where.since)
        if where.until is not None:
            query = query.where(cols.ts_from < where.until)
    else:
        if where.since is not None:
            query = query.where(day_col >= where.since.date())
        if where.until is not None:
            query = query.where(day_col < where.until.date())
    if where.groups is not None:
        ids = select(Group.id).where(Group.name.in_(sorted(where.groups)))
        query = query.where(cols.group_id.in_(ids.scalar_subquery()))
    if where.username is not None:
        query = query.where(cols.username == where.username)
    if where.resource_class is not None:
        query = query.where(cols.resource_class == where.resource_class)
    return query


def usage_report(db: Database, where: UsageFilter = UsageFilter()) -> list[UsageRow]:
    """Ledger totals grouped by period, group, class, model and user, oldest period first.

    Reads the daily rollup plus the ledger entries newer than its mark (exactly the
    ledger's totals, whenever the rollup was last refreshed); a span that does not start
    and end at midnight is aggregated from the ledger alone (a scan: the ledger is indexed
    by id only).
    """
    ue, ru, rt = UsageEntry.__table__, UsageRollup.__table__, Reservation.__table__
    live = select(
        _bucket(db.dialect, where.bucket, ue.c.ts_from).label("period"),
        ue.c.group_id, ue.c.resource_class,
        func.coalesce(ue.c.model, literal("")).label("model"), ue.c.username,
        ue.c.amount, ue.c.accelerator_hours, literal(1).label("entries"),
        _entry_cost(ue, rt).label("cost"),
    ).join(rt, rt.c.id == ue.c.reservation_id)
    live = _filtered(live, where, ue.c)
    with db.engine.connect() as conn:
        if _at_midnight(where.since) and _at_midnight(where.until):
            mark = func.coalesce(
                select(UsageRollupMark.last_entry_id)
                .where(UsageRollupMark.id == 1)
                .scalar_subquery(),
                0,
            )
            rolled = select(
                _bucket(db.dialect, where.bucket, ru.c.day).label("period"),
                ru.c.group_id, ru.c.resource_class, ru.c.model, ru.c.username,
                ru.c.amount, ru.c.accelerator_hours, ru.c.entries, ru.c.cost,
            )
            rolled = _filtered(rolled, where, ru.c, day_col=ru.c.day)
            parts = union_all(rolled, live.where(ue.c.id > mark)).subquery()
        else:
            parts = live.subquery()
        agg = select(
            parts.c.period, parts.c.group_id, parts.c.resource_class, parts.c.model,
            parts.c.username, func.sum(parts.c.amount).label("amount"),
            func.sum(parts.c.accelerator_hours).label("accelerator_hours"),
            func.sum(parts.c.entries).label("entries"),
            func.sum(parts.c.cost).label("cost"),
        ).group_by(
            parts.c.period, parts.c.group_id, parts.c.resource_class, parts.c.model,
            parts.c.username,
        ).subquery()
        query = (
            select(agg.c.period, Group.name, agg.c.resource_class, agg.c.model,
                   agg.c.username, agg.c.amount, agg.c.accelerator_hours, agg.c.entries,
                   agg.c.cost)
            .join(Group, Group.id == agg.c.group_id)
            .order_by(agg.c.period, Group.name, agg.c.resource_class, agg.c.model,
                      agg.c.username)
        )
        rows = conn.execute(query).all()
    return [
        UsageRow(_period_text(p), g, rc, m, u, float(a), float(h), int(n), float(c or 0.0))
        for p, g, rc, m, u, a, h, n, c in rows
    ]


def totals_by(rows: Iterable[UsageRow], key: str,
              value: str = "amount") -> dict[str, dict[str, float]]:
    """``{series: {period: total}}`` of ``value`` (a numeric field), series each row's ``key``."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        series = out.setdefault(str(getattr(row, key)), {})
        series[row.period] = series.get(row.period, 0.0) + getattr(row, value)
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
        """Cost of the time charged so far at the admitted price (:func:`money_so_far`)."""
        return money_so_far(self.price_per_hour, self.count, self.started_at, self.charged_until)


def money_so_far(price_per_hour: float, count: int, started_at: datetime | None,
                 charged_until: datetime | None) -> float:
    """What a launch has cost in money: the time the meter charged (``started_at`` to
    ``charged_until``) x ``count`` accelerators x the admitted ``price_per_hour`` of one."""
    if started_at is None or charged_until is None:
        return 0.0
    return price_per_hour * count * max(0.0, (charged_until - started_at).total_seconds()) / 3600.0


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
