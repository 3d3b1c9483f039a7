"""SQLAlchemy 2 typed models for groups, budgets, reservations and the usage ledger.

Times are stored as naive UTC datetimes (SQLite has no time zone type); amounts are in
the budget's unit, weighted accelerator-hours (``hours``) or ``credits``, stored exactly
as integer millionths of that unit (:class:`Amount`), so sums and the admission check
are integer arithmetic in the database, on SQLite and PostgreSQL alike.
The schema itself is created by the alembic migrations in ``portal/migrations``;
these classes must stay in step with them (``tests/accounting/test_models.py`` checks that).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator

GROUP_KINDS = ("lab", "project", "course")
UNITS = ("hours", "credits")
PERIODS = ("monthly", "term", "oneoff")
RESERVATION_STATES = ("admitted", "running", "closed")
NOTICE_LEVELS = ("80", "95", "exhausted", "stop_pending")


#: Amounts are stored as integer multiples of 1/SCALE of their unit (3.6 ms of one
#: accelerator at weight 1).
SCALE = 1_000_000


def to_units(value: float | int) -> int:
    """An amount as the integer count of 1/SCALE units the database stores."""
    return round(value * SCALE)


def from_units(units: int) -> float:
    """The amount (in its unit) that ``units`` stored integers stand for."""
    return int(units) / SCALE


class Amount(TypeDecorator):
    """An exact amount: an integer count of millionths in the database, a float in Python.

    Comparisons and sums of amounts happen on integers in SQL; multiplying or dividing
    by a plain number (``amount * 0.8``) keeps the number as it is.
    """

    impl = BigInteger
    cache_ok = True

    class Comparator(TypeDecorator.Comparator):
        """Sums and differences of amounts are amounts (so what they meet is bound as one)."""

        def _adapt_expression(self, op: Any, other_comparator: Any) -> tuple[Any, Any]:
            if op in (operators.add, operators.sub):
                return op, self.type
            return super()._adapt_expression(op, other_comparator)

    comparator_factory = Comparator

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else to_units(value)

    def process_result_value(self, value: Any, dialect: Any) -> float | None:
        return None if value is None else from_units(value)

    def coerce_compared_value(self, op: Any, value: Any) -> Any:
        if op in (operators.mul, operators.truediv, operators.floordiv):
            return Float()
        return self


def utcnow() -> datetime:
    """The current time as a naive UTC datetime, the form every column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso_utc(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with ``Z``, the form every JSON answer uses; None stays None."""
    return None if value is None else value.isoformat() + "Z"


def json_ready(snapshot: Any) -> dict[str, Any]:
    """A read-only snapshot's fields (a dataclass), its times as :func:`iso_utc` strings."""
    return {k: iso_utc(v) if isinstance(v, datetime) else v for k, v in vars(snapshot).items()}


#: PostgreSQL storage for the tables every metering tick rewrites row by row (budgets,
#: per-user usage, running reservations): half of each page is left free, so an update
#: stays on its page (a HOT update) and touches no index.  Set by migration 0008.
TICKED = {"fillfactor": 50}


class Base(DeclarativeBase):
    """Declarative base for all hybridhub tables."""


class Group(Base):
    """A lab, project or course; ``name`` is the JupyterHub group name."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("name", name="uq_groups_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16), default="project")
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    barred_untrusted: Mapped[bool] = mapped_column(Boolean, default=False)
    confidential_dirs: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GroupMember(Base):
    """A user's membership of a group, synced from the hub."""

    __tablename__ = "group_members"
    __table_args__ = (UniqueConstraint("group_id", "username", name="uq_group_members"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(255), index=True)


class Budget(Base):
    """An amount per period for one group and resource class (optionally one model)."""

    __tablename__ = "budgets"
    __table_args__ = (Index("ix_budgets_scope", "group_id", "resource_class", "model"),
                      {"postgresql_with": TICKED})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    resource_class: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    unit: Mapped[str] = mapped_column(String(16), default="hours")
    amount: Mapped[float] = mapped_column(Amount)
    period: Mapped[str] = mapped_column(String(16), default="monthly")
    starts_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    period_start: Mapped[datetime] = mapped_column(DateTime)
    used: Mapped[float] = mapped_column(Amount, default=0.0)
    reserved: Mapped[float] = mapped_column(Amount, default=0.0)
    per_user_cap: Mapped[float | None] = mapped_column(Amount, nullable=True)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class UserUsage(Base):
    """One user's use of one budget in one period, for the per-user cap."""

    __tablename__ = "user_usage"
    __table_args__ = (
        UniqueConstraint("budget_id", "username", "period_start", name="uq_user_usage"),
        {"postgresql_with": TICKED},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(255))
    period_start: Mapped[datetime] = mapped_column(DateTime)
    used: Mapped[float] = mapped_column(Amount, default=0.0)
    reserved: Mapped[float] = mapped_column(Amount, default=0.0)


class Reservation(Base):
    """The whole requested time of one launch, held against a budget until release."""

    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_state", "state"),
        Index("ix_reservations_user", "username", "state"),
        UniqueConstraint("idempotency_key", name="uq_reservations_idempotency_key"),
        {"postgresql_with": TICKED},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"))
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    username: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    resource_class: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    count: Mapped[int] = mapped_column(Integer)
    hours: Mapped[float] = mapped_column(Float)
    billing_weight: Mapped[float] = mapped_column(Float, default=1.0)
    price_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    amount_reserved: Mapped[float] = mapped_column(Amount)
    amount_charged: Mapped[float] = mapped_column(Amount, default=0.0)
    user_period_start: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="admitted")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    charged_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))


class UsageEntry(Base):
    """One append-only ledger line: an amount charged for a span of a reservation.

    The line copies its reservation's ids without foreign keys: lines are only written
    from the (locked) reservation row itself, by the metering tick's ``INSERT ... SELECT``
    and by release, and reservations, budgets and groups are never deleted.  Checking
    three keys per line cost a 10,000-server tick 0.1 s on PostgreSQL (migration 0008).

    Nor has it an index by group, user, budget or reservation (migration 0009): a tick's
    lines land all over such an index, about 40 ms per index per 10,000 lines in a
    1,000,000-row ledger.  Readers go by id instead: reports read the daily rollup plus the
    lines after its mark, forecasts read :class:`ChargedHour`.
    """

    __tablename__ = "usage_entries"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_usage_entries_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reservation_id: Mapped[int] = mapped_column(Integer)
    budget_id: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(255))
    resource_class: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amount: Mapped[float] = mapped_column(Amount)
    accelerator_hours: Mapped[float] = mapped_column(Amount)
    ts_from: Mapped[datetime] = mapped_column(DateTime)
    ts_to: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    idempotency_key: Mapped[str] = mapped_column(String(255))


class ChargedHour(Base):
    """Units charged to a budget by the ledger lines whose span starts in one hour.

    ``hour`` counts hours since the epoch (UTC).  Written in the transaction that writes the
    lines (the tick's :func:`~hybridhub.accounting.meter_sql.apply_charges`, release), so it
    always equals the ledger; forecasts read a week of it, 168 rows per budget at most.
    """

    __tablename__ = "charged_hours"

    budget_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    amount: Mapped[float] = mapped_column(Amount)


class Notice(Base):
    """A threshold or stop warning shown on the hub's banner; logged once per period."""

    __tablename__ = "notices"
    __table_args__ = (
        Index("ix_notices_group", "group_id", "created_at"),
        UniqueConstraint("dedup_key", name="uq_notices_dedup_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    reservation_id: Mapped[int | None] = mapped_column(
        ForeignKey("reservations.id", ondelete="CASCADE"), nullable=True
    )
    level: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[datetime] = mapped_column(DateTime)
    message: Mapped[str] = mapped_column(String(1000))
    stop_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    dedup_key: Mapped[str] = mapped_column(String(255))
