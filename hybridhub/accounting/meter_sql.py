"""The set-based SQL of one metering tick (:meth:`hybridhub.accounting.Accounting.meter`).

Every running reservation is charged by a handful of statements, whatever their number:
one ``INSERT INTO usage_entries ... SELECT ... FROM reservations`` writes the ledger
lines, then ``UPDATE ... FROM`` statements add them to budgets, per-user usage and the
reservations, and one upsert to the budgets' charged hours.  The per-row rule is computed
in SQL float for float as Python computed it (IEEE doubles on SQLite and PostgreSQL
alike); times become integer microseconds.
The same statements run on both databases (SQLite >= 3.35: ``UPDATE ... FROM`` and
``AS MATERIALIZED``; PostgreSQL >= 14: an exact ``EXTRACT(EPOCH ...)``);
only the few constructs below compile differently.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Subquery
from sqlalchemy.sql.functions import FunctionElement

from hybridhub.accounting.models import (
    Budget,
    ChargedHour,
    Group,
    Notice,
    Reservation,
    UsageEntry,
    UserUsage,
)

_R, _B, _G, _U, _E, _N, _H = (m.__table__ for m in (
    Reservation, Budget, Group, UserUsage, UsageEntry, Notice, ChargedHour))
_US_PER_HOUR = 3_600_000_000


class _Floor(FunctionElement):
    """The floor of a non-negative double, as an integer."""

    type = BigInteger()
    inherit_cache = True


class _EpochUs(FunctionElement):
    """A stored naive UTC timestamp as integer microseconds since the epoch."""

    type = BigInteger()
    inherit_cache = True


class _PlusUs(FunctionElement):
    """``(ts, ts_us, us)``: timestamp ``ts`` (``ts_us`` since the epoch) plus ``us``
    microseconds, in the form the column stores."""

    type = DateTime()
    inherit_cache = True


def _args(element, compiler, **kw) -> list[str]:
    return [compiler.process(c, **kw) for c in element.clauses]


@compiles(_Floor)
def _floor_pg(element, compiler, **kw):
    (x,) = _args(element, compiler, **kw)
    return f"CAST(floor({x}) AS BIGINT)"


@compiles(_Floor, "sqlite")
def _floor_sqlite(element, compiler, **kw):
    (x,) = _args(element, compiler, **kw)
    return f"CAST({x} AS INTEGER)"  # truncates, which is the floor for x >= 0


@compiles(_EpochUs)
def _epoch_pg(element, compiler, **kw):
    (ts,) = _args(element, compiler, **kw)  # EXTRACT gives an exact numeric (PostgreSQL 14+)
    return f"CAST(EXTRACT(EPOCH FROM {ts}) * 1000000 AS BIGINT)"


@compiles(_EpochUs, "sqlite")
def _epoch_sqlite(element, compiler, **kw):
    (ts,) = _args(element, compiler, **kw)  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff';
    # SQLite's date functions keep milliseconds (rounded): the seconds are parsed alone
    return (f"(CAST(strftime('%s', substr({ts}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr({ts}, 21, 6) AS INTEGER))")


@compiles(_PlusUs)
def _plus_pg(element, compiler, **kw):
    ts, _ts_us, us = _args(element, compiler, **kw)
    return f"({ts} + {us} * INTERVAL '1 microsecond')"


@compiles(_PlusUs, "sqlite")
def _plus_sqlite(element, compiler, **kw):
    _ts, ts_us, us = _args(element, compiler, **kw)  # from the epoch value, parsed once
    t = f"({ts_us} + {us})"
    return (f"(strftime('%Y-%m-%d %H:%M:%S', {t} / 1000000, 'unixepoch')"
            f" || printf('.%06d', {t} % 1000000))")


def _f(x):
    """``x`` as a double (SQLite REAL, PostgreSQL double precision)."""
    return cast(x, Float)


def _c(value: float):
    return literal(float(value), Float)


def _units(col):
    """An :class:`~hybridhub.accounting.models.Amount` column as the integer it stores."""
    return type_coerce(col, BigInteger)


def _half_even(x):
    """Python's ``round(x)`` of a non-negative double: halves go to the even integer."""
    f = _Floor(x)
    d = x - f
    return f + case((or_(d > 0.5, and_(d == 0.5, f % 2 == 1)), 1), else_=0)


def _ceil_units(x):
    """:func:`hybridhub.accounting.ceil_units` of ``x`` stored units (``x >= 0``)."""
    f = _Floor(x)
    up = f + case((x - f >= 0.0005, 1), else_=0)  # ceil(round(x, 3)), exactly
    return case((x <= 0, 0), (up < 1, 1), else_=up)


def _hours_us(hours):
    """``timedelta(hours=hours)`` in microseconds, rounded as CPython rounds it."""
    whole = _Floor(hours)
    return whole * _US_PER_HOUR + _half_even((hours - whole) * _c(_US_PER_HOUR))


def _span_us(cu, st, hours, now_us: int, interval_us: int):
    """Microseconds the tick charges: whole intervals since ``charged_until`` (``cu``), or
    the reservation's own tail when its end passed, whichever reaches further."""
    diff = literal(now_us, BigInteger) - cu
    step = literal(interval_us, BigInteger)
    whole = case((diff >= step, _Floor(_f(diff) / _f(step)) * step), else_=0)
    end_off = st - cu + _hours_us(hours)
    tail = case((and_(end_off > 0, end_off <= diff), end_off), else_=0)
    return case((tail > whole, tail), else_=whole)


def _running(now_us: int, interval_us: int):
    """Running reservations (locked on PostgreSQL) with the span this tick charges,
    computed once per row (a materialized CTE: SQLite would inline it everywhere)."""
    r = _R
    times = (select(*r.c, _EpochUs(r.c.charged_until).label("cu_us"),
                    _EpochUs(r.c.started_at).label("st_us"))
             .where(r.c.state == "running").with_for_update(of=r)
             .cte("running").prefix_with("MATERIALIZED"))
    span = _span_us(times.c.cu_us, times.c.st_us, times.c.hours, now_us, interval_us)
    return (select(times, span.label("span"),
                   (times.c.cu_us - times.c.st_us).label("offset_us"))
            .cte("spans").prefix_with("MATERIALIZED"))


def insert_charges(conn: Connection, now: datetime, now_us: int, interval_us: int) -> int:
    """One ``INSERT ... SELECT``: a ledger line per running reservation with time to pay.

    Returns the id the ledger had before, which marks this tick's lines.
    """
    before = conn.execute(select(func.coalesce(func.max(_E.c.id), 0))).scalar_one()
    q = _running(now_us, interval_us)
    secs = _f(q.c.span) / _c(1e6)
    amount = _ceil_units(_f(_units(q.c.amount_reserved)) / _c(1e6) * secs
                         / (q.c.hours * _c(3600.0)) * _c(1e6))
    hours = _half_even(_f(q.c["count"]) * secs / _c(3600.0) * _c(1e6))
    offset_ms = _half_even(_f(q.c.offset_us) / _c(1e6) * _c(1000.0))
    key = ("res:" + cast(q.c.id, String) + ":" + cast(offset_ms, String)
           + literal_column("'ms'", String))
    rows = select(
        q.c.id, q.c.budget_id, q.c.group_id, q.c.username, q.c.resource_class, q.c.model,
        amount, hours, q.c.charged_until, _PlusUs(q.c.charged_until, q.c.cu_us, q.c.span),
        literal(now, DateTime), key,
    ).where(q.c.span > 0).order_by(q.c.id)
    cols = ("reservation_id", "budget_id", "group_id", "username", "resource_class",
            "model", "amount", "accelerator_hours", "ts_from", "ts_to", "created_at",
            "idempotency_key")
    conn.execute(_E.insert().from_select(cols, rows))
    return before


def _pending(before: int):
    """This tick's ledger lines beside their (not yet advanced) reservations."""
    r, e = _R, _E
    held = _units(r.c.amount_reserved) - _units(r.c.amount_charged)
    held = case((held > 0, held), else_=0)
    take = case((_units(e.c.amount) < held, _units(e.c.amount)), else_=held)
    return (
        select(r.c.budget_id, r.c.username, r.c.user_period_start, e.c.ts_from,
               _units(e.c.amount).label("amount"), take.label("take"))
        .select_from(e.join(r, and_(r.c.id == e.c.reservation_id,
                                    r.c.charged_until == e.c.ts_from)))
        .where(e.c.id > before, r.c.state == "running")
        .subquery("pending")
    )


def apply_charges(conn: Connection, before: int) -> tuple[int, int]:
    """Add this tick's ledger lines to budgets, per-user usage, the reservations and the
    budgets' charged hours.

    Returns (lines, stored units charged); raises if the reservations moved meanwhile.
    """
    p = _pending(before)
    count, total = conn.execute(
        select(func.count(), func.coalesce(func.sum(p.c.amount), 0))).one()
    if not count:
        return 0, 0
    b = select(p.c.budget_id, func.sum(p.c.amount).label("amount"),
               func.sum(p.c.take).label("take")).group_by(p.c.budget_id).subquery()
    conn.execute(update(_B).where(_B.c.id == b.c.budget_id).values(
        used=_B.c.used + b.c.amount, reserved=_B.c.reserved - b.c.take))
    u = (select(p.c.budget_id, p.c.username, p.c.user_period_start,
                func.sum(p.c.amount).label("amount"), func.sum(p.c.take).label("take"))
         .where(p.c.user_period_start.is_not(None))
         .group_by(p.c.budget_id, p.c.username, p.c.user_period_start).subquery())
    conn.execute(update(_U).where(
        _U.c.budget_id == u.c.budget_id, _U.c.username == u.c.username,
        _U.c.period_start == u.c.user_period_start,
    ).values(used=_U.c.used + u.c.amount, reserved=_U.c.reserved - u.c.take))
    fold_hours(conn, p)
    e, r = _E, _R
    moved = conn.execute(update(r).where(
        e.c.id > before, e.c.reservation_id == r.c.id, e.c.ts_from == r.c.charged_until,
        r.c.state == "running",
    ).values(charged_until=e.c.ts_to, amount_charged=r.c.amount_charged + e.c.amount))
    if moved.rowcount not in (-1, count):
        raise RuntimeError("reservations changed under a metering tick; rolled back")
    return count, int(total)


def ledger_lines(*where) -> Subquery:
    """The ledger lines matching ``where`` as :func:`fold_hours` takes them."""
    e = _E
    return select(e.c.budget_id, e.c.ts_from, _units(e.c.amount).label("amount")).where(
        *where).subquery("lines")


def fold_hours(conn: Connection, lines: Subquery) -> None:
    """Add ``lines`` (``budget_id``, ``ts_from``, ``amount`` in stored units) to
    :class:`ChargedHour`: one upsert of a row per budget and hour their spans start in."""
    h = _H
    hour = _EpochUs(lines.c.ts_from) // literal(_US_PER_HOUR, BigInteger)
    sums = (select(lines.c.budget_id, hour, func.sum(lines.c.amount))
            .where(true()).group_by(lines.c.budget_id, hour))  # WHERE: SQLite's upsert needs one
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(h)
    stmt = insert.from_select(["budget_id", "hour", "amount"], sums)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["budget_id", "hour"],
        set_={"amount": _units(h.c.amount) + _units(stmt.excluded.amount)}))


#: Warning levels: name, percent of the amount, rank in the report (highest first).
_LEVELS = union_all(*(
    select(literal_column(f"'{name}'", String).label("level"),
           literal_column(str(pct), Integer).label("pct"),
           literal_column(str(rank), Integer).label("rank"))
    for rank, (name, pct) in enumerate((("exhausted", 100), ("95", 95), ("80", 80)))
)).subquery("levels")


def new_thresholds(conn: Connection) -> list:
    """Budgets that crossed a level not yet noticed this period: (budget, group, level)."""
    b, lv, n = _B, _LEVELS, _N
    noticed = exists().where(n.c.budget_id == b.c.id, n.c.period_start == b.c.period_start,
                             n.c.level == lv.c.level, n.c.reservation_id.is_(None))
    return conn.execute(
        select(*b.c, _G.c.name.label("g_name"), lv.c.level)
        .select_from(b.join(_G, _G.c.id == b.c.group_id).join(lv, true()))
        .where(_units(b.c.amount) > 0,
               _units(b.c.used) * 100 >= _units(b.c.amount) * lv.c.pct, ~noticed)
        .order_by(b.c.id, lv.c.rank)
    ).all()


def stop_candidates(conn: Connection, now_us: int) -> list:
    """Running reservations that ran out, or whose budget is frozen or used up, with the
    facts that name the reason and their stop notice (if any)."""
    r, b, g, n = _R, _B, _G, _N
    ended = (_EpochUs(r.c.started_at) + _hours_us(r.c.hours) <= now_us) | (
        _units(r.c.amount_charged) >= _units(r.c.amount_reserved))
    frozen = or_(g.c.frozen.is_(True), b.c.frozen.is_(True))
    used_up = _units(b.c.used) >= _units(b.c.amount)
    joined = (r.join(b, b.c.id == r.c.budget_id).join(g, g.c.id == r.c.group_id)
              .outerjoin(n, and_(n.c.reservation_id == r.c.id, n.c.level == "stop_pending")))
    return conn.execute(
        select(*r.c, g.c.name.label("g_name"), b.c.period_start.label("b_period_start"),
               ended.label("ended"), frozen.label("is_frozen"),
               n.c.id.label("notice_id"), n.c.stop_at.label("notice_stop_at"))
        .select_from(joined)
        .where(r.c.state == "running", or_(ended, frozen, used_up))
        .order_by(r.c.id)
    ).all()
