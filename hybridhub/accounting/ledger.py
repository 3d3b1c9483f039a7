"""Per-group quota accounting: admit-if-fits, metering, warnings, stop at zero, release.

A launch of N accelerators for H hours reserves its whole cost up front, as Slurm's
``AccountingStorageEnforce=safe`` does.  Every change to a budget is one conditional
``UPDATE`` (``... WHERE amount - used - reserved >= :x``), never a read followed by a
write, so concurrent launches on separate connections cannot overspend, on SQLite and
PostgreSQL alike.  The usage ledger (:class:`~hybridhub.accounting.models.UsageEntry`) is append-only
and every entry carries an idempotency key, so a restarted hub that meters again never
charges a span twice.

Time comes from an injectable ``clock`` (seconds since the epoch), so tests never sleep.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hybridhub.accounting import meter_sql
from hybridhub.accounting.budgets import BudgetAdmin
from hybridhub.accounting.db import Database
from hybridhub.accounting.models import (
    Budget,
    Group,
    GroupMember,
    Notice,
    Reservation,
    UsageEntry,
    UserUsage,
    from_units,
    to_units,
)
from hybridhub.accounting.periods import (
    budget_left,
    ceil_units,
    cost,
    is_active,
    month_start,
    period_start_for,
    period_used,
    resets_at_for,
    to_datetime,
)

log = logging.getLogger("hybridhub.accounting")

#: Warning thresholds in percent of the budget, highest first.
WARN_LEVELS = ((95, "95"), (80, "80"))
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)

_GT, _BT, _MT, _RT = (
    Group.__table__, Budget.__table__, GroupMember.__table__, Reservation.__table__
)
#: Admission's one lookup: the group, its budgets for the class, membership, the retry key.
_ADMIT_LOOKUP = (
    select(
        _GT.c.id.label("g_id"),
        _GT.c.frozen.label("g_frozen"),
        *_BT.c,
        exists()
        .where(_MT.c.group_id == _GT.c.id, _MT.c.username == bindparam("user"))
        .label("is_member"),
        select(_RT.c.id)
        .where(_RT.c.idempotency_key == bindparam("key"))
        .scalar_subquery()
        .label("existing"),
    )
    .select_from(
        _GT.outerjoin(
            _BT, and_(_BT.c.group_id == _GT.c.id, _BT.c.resource_class == bindparam("rc"))
        )
    )
    .where(_GT.c.name == bindparam("group"))
    .order_by(_BT.c.id)
)
#: The conditional update at the heart of admission: reserve only if it still fits.
_RESERVE = (
    update(_BT)
    .where(
        _BT.c.id == bindparam("b_id"),
        _BT.c.frozen.is_(False),
        _BT.c.amount - _BT.c.used - _BT.c.reserved >= bindparam("b_need"),
    )
    .values(reserved=_BT.c.reserved + bindparam("b_asked"))
)
_INSERT_RESERVATION = insert(_RT).returning(_RT.c.id)


# ---------------------------------------------------------------- errors


class AdmissionError(Exception):
    """A launch was refused.  ``user_message`` is the text for the person launching."""

    def __init__(self, message: str):
        self.user_message = message
        super().__init__(message)


class NoBudget(AdmissionError):
    """The group has no budget for this class (or model): paid offerings cannot launch."""

    def __init__(self, group: str, resource_class: str, model: str | None = None):
        self.group = group
        self.resource_class = resource_class
        self.model = model
        what = f"{resource_class} ({model})" if model else resource_class
        super().__init__(f"group {group!r} has no budget for {what}; ask its owner for one")


class NotMember(AdmissionError):
    """The user is not a member of the group the launch would be charged to."""

    def __init__(self, username: str, group: str):
        self.username = username
        self.group = group
        super().__init__(f"{username} is not a member of group {group!r}")


class QuotaExceeded(AdmissionError):
    """The request does not fit what is left; says what was asked, what is left, when it resets.

    ``scope`` is ``"group"`` (the group's budget) or ``"user"`` (the per-user cap).
    """

    def __init__(
        self,
        *,
        asked: float,
        left: float,
        unit: str,
        resets_at: datetime | None,
        group: str,
        resource_class: str,
        breakdown: str,
        scope: str = "group",
        reason: str | None = None,
    ):
        self.asked = asked
        self.left = left
        self.unit = unit
        self.resets_at = resets_at
        self.group = group
        self.resource_class = resource_class
        self.scope = scope
        self.reason = reason
        where = f"{group}'s {resource_class} budget"
        if scope == "user":
            where = f"your per-user cap in {where}"
        resets = f"resets {resets_at:%Y-%m-%d}" if resets_at else "does not reset"
        msg = (
            f"asked {fmt_amount(asked, unit)} ({breakdown}), "
            f"{fmt_amount(left, unit)} left in {where}, {resets}"
        )
        if reason:
            msg = f"{reason}: {msg}"
        super().__init__(msg)


class BudgetUnavailable(QuotaExceeded):
    """The budget exists but cannot be drawn on now (frozen, or outside its dates)."""


def fmt_amount(value: float, unit: str) -> str:
    """``3.5 h`` or ``12.25 credits``: two decimals at most, never ``-0``."""
    text = f"{round(value, 2) + 0.0:g}"  # + 0.0 turns -0.0 into 0.0
    if text == "0" and value > 0:
        text = "< 0.01"
    elif text == "-0":
        text = "0"
    return f"{text} h" if unit == "hours" else f"{text} credits"


# ---------------------------------------------------------------- results


# Statements every picker or page view runs, built once (building one costs more than running it).
_BUDGETS_OF_GROUPS = (
    select(Budget, Group).join(Group, Group.id == Budget.group_id)
    .where(Group.name.in_(bindparam("names", expanding=True))).order_by(Budget.id)
)
_USER_USAGE = select(UserUsage.used, UserUsage.reserved).where(
    UserUsage.budget_id == bindparam("budget_id"),
    UserUsage.username == bindparam("username"),
    UserUsage.period_start == bindparam("period"),
)
_GROUP_NOTICES = (
    select(Notice, Budget)
    .join(Budget, Budget.id == Notice.budget_id)
    .where(
        Notice.group_id.in_(select(GroupMember.group_id).where(GroupMember.username == bindparam("username"))),
        Notice.reservation_id.is_(None),
        Notice.period_start == Budget.period_start,
    )
    .order_by(Notice.budget_id, Notice.id)
)
_STOPS_PENDING = (
    select(Notice)
    .join(Reservation, Reservation.id == Notice.reservation_id)
    .where(Reservation.username == bindparam("username"), Reservation.state != "closed",
           Notice.level == "stop_pending")
    .order_by(Notice.id)
)


@dataclass(frozen=True)
class Remaining:
    """What is left of the budget that applies to a launch."""

    amount_left: float
    unit: str
    resets_at: datetime | None
    budget_id: int
    amount: float
    used: float
    reserved: float
    user_left: float | None = None
    active: bool = True
    frozen: bool = False
    #: How far use went past the amount (time served after reservations ran out).
    overdrawn: float = 0.0


@dataclass(frozen=True)
class ReservationInfo:
    """A read-only snapshot of a reservation, safe to hand to other threads."""

    id: int
    username: str
    server_name: str
    group: str
    resource_class: str
    model: str | None
    count: int
    hours: float
    state: str
    amount_reserved: float
    amount_charged: float
    started_at: datetime | None
    charged_until: datetime | None


class StopOrder(NamedTuple):
    """A server that must be stopped: its reservation, why, and when the grace ended."""

    reservation: ReservationInfo
    reason: str
    stop_at: datetime


@dataclass(frozen=True)
class NoticeInfo:
    """A warning recorded by a metering tick (threshold, exhaustion or pending stop)."""

    group: str
    budget_id: int
    level: str
    message: str
    reservation_id: int | None = None
    username: str | None = None
    stop_at: datetime | None = None


@dataclass
class MeterReport:
    """The outcome of one metering tick."""

    now: datetime
    charged: int = 0
    amount: float = 0.0
    warnings: list[NoticeInfo] = field(default_factory=list)
    to_stop: list[StopOrder] = field(default_factory=list)


@dataclass(frozen=True)
class Released:
    """What :meth:`Accounting.release` did: the final charge and the amount given back."""

    reservation_id: int
    charged: float
    released: float
    already_closed: bool = False


def _breakdown(unit: str, count: int, hours: float, weight: float, price: float) -> str:
    if unit == "hours":
        return f"{count} x {hours:g} h x weight {weight:g}"
    return f"{count} x {hours:g} h x {price:g} credits/h"


# ---------------------------------------------------------------- accounting



def _refusal(
    left: float, *, asked: float, unit: str, resets_at: datetime | None, group: str,
    resource_class: str, breakdown: str, scope: str = "group", reason: str | None = None,
    cls: type[QuotaExceeded] | None = None,
) -> QuotaExceeded:
    """The refusal of a launch that asked ``asked`` with ``left`` left (never negative)."""
    return (cls or QuotaExceeded)(
        asked=asked, left=from_units(max(0, to_units(left))), unit=unit, resets_at=resets_at,
        group=group, resource_class=resource_class, breakdown=breakdown, scope=scope, reason=reason,
    )


def _check_usable(budget: Budget, active: bool, group_frozen: bool, refuse: Callable[..., QuotaExceeded]) -> None:
    """Refuse a budget outside its validity window, or a frozen budget or group."""
    if not active:
        span = f"{budget.starts_at:%Y-%m-%d} to {budget.ends_at:%Y-%m-%d}"
        raise refuse(0.0, reason=f"the budget is only valid from {span}", cls=BudgetUnavailable)
    if group_frozen or budget.frozen:
        raise refuse(0.0, reason="the budget is frozen", cls=BudgetUnavailable)

class Accounting(BudgetAdmin):
    """Admission, metering and release of accelerator time against group budgets.

    ``clock`` returns seconds since the epoch (``time.time`` by default, injectable for
    tests); ``meter_interval`` is the metering granularity in seconds; ``grace_seconds``
    is how long a server may go on after its reservation or budget ran out, with a
    warning, before it is put on the stop list; that time is charged too (the budget
    may go below zero by it, shown as ``overdrawn``).  ``min_charge_seconds`` (default
    one ``meter_interval``) is the least any launch that ran is charged for.
    """

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        meter_interval: float = 60,
        grace_seconds: float = 300,
        check_membership: bool = True,
        min_charge_seconds: float | None = None,
    ):
        if meter_interval <= 0:
            raise ValueError("meter_interval must be positive")
        self.min_charge_seconds = float(
            meter_interval if min_charge_seconds is None else min_charge_seconds
        )
        self.db = db
        self.clock = clock
        self.meter_interval = float(meter_interval)
        self.grace_seconds = float(grace_seconds)
        self.check_membership = check_membership

    # ------------------------------------------------------------ helpers

    def _now(self, now: float | datetime | None = None) -> datetime:
        return to_datetime(self.clock() if now is None else now)

    def _insert_ignore(self, session: Session, model: Any, values: list[dict] | dict) -> None:
        """INSERT ... ON CONFLICT DO NOTHING on either dialect."""
        ins = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        session.execute(ins(model).on_conflict_do_nothing(), values)

    @staticmethod
    def _group(session: Session, name: str) -> Group | None:
        return session.scalar(select(Group).where(Group.name == name))

    def _pick_budget(
        self, session: Session, group: Group, resource_class: str, model: str | None, now
    ) -> tuple[Budget, bool]:
        """The budget that applies: a model-specific one wins over the class-wide one.

        Returns ``(budget, active)``; raises :class:`NoBudget` when there is none.
        """
        rows = session.scalars(
            select(Budget)
            .where(Budget.group_id == group.id, Budget.resource_class == resource_class)
            .order_by(Budget.id)
        ).all()
        return self._choose_budget(rows, group.name, resource_class, model, now)

    @staticmethod
    def _choose_budget(
        rows: Iterable[Budget], group: str, resource_class: str, model: str | None, now
    ) -> tuple[Budget, bool]:
        rows = list(rows)
        specific = [b for b in rows if model is not None and b.model == model]
        general = [b for b in rows if b.model is None]
        for tier in (specific, general):
            for budget in tier:
                if is_active(budget, now):
                    return budget, True
        for tier in (specific, general):
            if tier:
                return tier[0], False
        raise NoBudget(group, resource_class, model)

    def _roll_period(self, session: Session, budget: Budget, now: datetime) -> datetime:
        """Start a new monthly period if the stored one is over; return the current start."""
        current = period_start_for(budget, now)
        if budget.period == "monthly" and budget.period_start < current:
            session.execute(
                update(Budget)
                .where(Budget.id == budget.id, Budget.period_start < current)
                .values(period_start=current, used=0.0)
                .execution_options(synchronize_session=False)
            )
        return current

    @staticmethod
    def _info(r: Any, group: str) -> ReservationInfo:
        return ReservationInfo(
            id=r.id,
            username=r.username,
            server_name=r.server_name,
            group=group,
            resource_class=r.resource_class,
            model=r.model,
            count=r.count,
            hours=r.hours,
            state=r.state,
            amount_reserved=r.amount_reserved,
            amount_charged=r.amount_charged,
            started_at=r.started_at,
            charged_until=r.charged_until,
        )

    # ------------------------------------------------------------ admission

    def remaining(
        self,
        group: str,
        resource_class: str,
        model: str | None = None,
        username: str | None = None,
    ) -> Remaining | None:
        """What is left of the budget a launch would draw on; None when none applies."""
        key = (group, resource_class, model)
        return self.remaining_many([key], username=username)[key]

    def remaining_many(
        self, wanted: Iterable[tuple[str, str, str | None]], username: str | None = None
    ) -> dict[tuple[str, str, str | None], Remaining | None]:
        """:meth:`remaining` for many ``(group, resource_class, model)`` at once (the picker's table).

        One session; the groups' budgets are read in one query, each user's share once per budget.
        """
        keys = list(dict.fromkeys(wanted))
        now = self._now()
        out: dict[tuple[str, str, str | None], Remaining | None] = dict.fromkeys(keys)
        with self.db.session() as s:
            groups: dict[str, Group] = {}
            budgets: dict[tuple[int, str], list[Budget]] = {}
            for b, g in s.execute(_BUDGETS_OF_GROUPS, {"names": sorted({g for g, _, _ in keys})}):
                groups[g.name] = g  # a group without a budget has nothing left: it need not be read
                budgets.setdefault((b.group_id, b.resource_class), []).append(b)
            seen: dict[tuple[int, bool], Remaining] = {}
            for key in keys:
                group, resource_class, model = key
                g = groups.get(group)
                if g is None:
                    continue
                try:
                    budget, active = self._choose_budget(
                        budgets.get((g.id, resource_class), []), group, resource_class, model, now
                    )
                except NoBudget:
                    continue
                if (budget.id, active) not in seen:  # offerings of a class mostly share one budget
                    spent = (self._user_spent(s, budget, username, now)
                             if username is not None and budget.per_user_cap is not None else None)
                    seen[(budget.id, active)] = self._remaining_of(g, budget, active, spent, now)
                out[key] = seen[(budget.id, active)]
        return out

    @staticmethod
    def _user_spent(session: Session, budget: Budget, username: str, now) -> int:
        """Units ``username`` used and holds of ``budget`` this period."""
        row = session.execute(
            _USER_USAGE, {"budget_id": budget.id, "username": username, "period": period_start_for(budget, now)}
        ).first()
        return (to_units(row.used) + to_units(row.reserved)) if row else 0

    @staticmethod
    def _remaining_of(g: Group, budget: Budget, active: bool, user_spent: int | None, now) -> Remaining:
        used = period_used(budget, now)
        overdrawn = from_units(max(0, to_units(used) - to_units(budget.amount)))
        left = budget_left(budget, used)
        user_left = None
        if user_spent is not None:
            user_left = from_units(max(0, to_units(budget.per_user_cap) - user_spent))
            left = min(left, user_left)
        frozen = budget.frozen or g.frozen
        if not active or frozen:
            left = 0.0
        return Remaining(
            amount_left=left,
            unit=budget.unit,
            resets_at=resets_at_for(budget, now),
            budget_id=budget.id,
            amount=budget.amount,
            used=used,
            reserved=budget.reserved,
            user_left=user_left,
            active=active,
            frozen=frozen,
            overdrawn=overdrawn,
        )

    def admit(
        self,
        *,
        username: str,
        group: str,
        resource_class: str,
        model: str | None,
        count: int,
        hours: float,
        billing_weight: float = 1.0,
        price_per_hour: float = 0.0,
        server_name: str = "",
        idempotency_key: str | None = None,
    ) -> int:
        """Reserve the whole cost of a launch, or raise; return the reservation id.

        Raises :class:`NoBudget`, :class:`NotMember`, :class:`BudgetUnavailable` (frozen
        or outside its dates) or :class:`QuotaExceeded`.  A retry with the same
        ``idempotency_key`` returns the first reservation and reserves nothing more.
        """
        if count <= 0 or hours <= 0:
            raise ValueError("count and hours must be positive")
        key = idempotency_key or f"admit:{uuid.uuid4()}"
        now = self._now()
        try:
            with self.db.session() as s:
                return self._admit(
                    s, now, key, username, group, resource_class, model, count, hours,
                    billing_weight, price_per_hour, server_name,
                )
        except IntegrityError:
            # A concurrent admit with the same key won; ours was rolled back entirely.
            with self.db.session() as s:
                existing = self._by_key(s, key)
            if existing is None:
                raise
            return existing

    def admit_all(self, launches: Iterable[Mapping[str, Any]]) -> list[int]:
        """Admit every launch or none, in ONE transaction; return the reservation ids.

        Each launch takes :meth:`admit`'s keyword arguments, ``idempotency_key``
        included (so a retry finds the same reservations).  The first refusal raises
        its :class:`AdmissionError` and rolls every reservation of the batch back:
        a course is admitted whole, or not at all.
        """
        launches = list(launches)
        if any(launch["count"] <= 0 or launch["hours"] <= 0 for launch in launches):
            raise ValueError("count and hours must be positive")
        now = self._now()
        with self.db.session() as s:
            return [
                self._admit(
                    s, now, launch["idempotency_key"], launch["username"], launch["group"],
                    launch["resource_class"], launch["model"], launch["count"], launch["hours"],
                    launch.get("billing_weight", 1.0), launch.get("price_per_hour", 0.0),
                    launch.get("server_name", ""),
                )
                for launch in launches
            ]

    @staticmethod
    def _by_key(s: Session, key: str) -> int | None:
        return s.scalar(select(Reservation.id).where(Reservation.idempotency_key == key))

    def _admit(
        self, s: Session, now: datetime, key: str, username: str, group: str,
        resource_class: str, model: str | None, count: int, hours: float,
        weight: float, price: float, server_name: str,
    ) -> int:
        conn = s.connection()
        rows = conn.execute(
            _ADMIT_LOOKUP, {"group": group, "rc": resource_class, "user": username, "key": key}
        ).all()
        if not rows:
            existing_id = self._by_key(s, key)
            if existing_id is not None:
                return existing_id
            raise NoBudget(group, resource_class, model)
        if rows[0].existing is not None:
            return rows[0].existing
        first = rows[0]
        budget, active = self._choose_budget(
            (r for r in rows if r.id is not None), group, resource_class, model, now
        )
        if self.check_membership and not first.is_member:
            raise NotMember(username, group)
        asked = from_units(ceil_units(cost(budget.unit, count, hours, weight, price)))
        refuse = functools.partial(
            _refusal, asked=asked, unit=budget.unit, resets_at=resets_at_for(budget, now), group=group,
            resource_class=resource_class, breakdown=_breakdown(budget.unit, count, hours, weight, price),
        )
        _check_usable(budget, active, first.g_frozen, refuse)
        current = self._roll_period(s, budget, now)
        if conn.execute(_RESERVE, {"b_id": budget.id, "b_need": asked, "b_asked": asked}).rowcount != 1:
            fresh = conn.execute(
                select(Budget.amount, Budget.used, Budget.reserved).where(Budget.id == budget.id)
            ).one()
            raise refuse(fresh.amount - fresh.used - fresh.reserved)
        user_period = None
        if budget.per_user_cap is not None:
            user_period = current
            self._reserve_user_share(s, budget, username, current, asked, refuse)
        reservation_id = conn.execute(_INSERT_RESERVATION, {
            "budget_id": budget.id, "group_id": first.g_id, "username": username,
            "server_name": server_name, "resource_class": resource_class, "model": model,
            "count": count, "hours": hours, "billing_weight": weight, "price_per_hour": price,
            "amount_reserved": asked, "amount_charged": 0.0, "user_period_start": user_period,
            "state": "admitted", "created_at": now, "idempotency_key": key,
        }).scalar_one()
        log.info(
            "admitted reservation %s: %s in %s, %s on %s", reservation_id, username, group,
            fmt_amount(asked, budget.unit), resource_class,
        )
        return reservation_id

    def _reserve_user_share(
        self, s: Session, budget: Budget, username: str, current: datetime, asked: float,
        refuse: Callable[..., QuotaExceeded],
    ) -> None:
        """Reserve ``asked`` of the user's per-user cap for this period, or refuse."""
        self._insert_ignore(
            s,
            UserUsage,
            {"budget_id": budget.id, "username": username, "period_start": current,
             "used": 0.0, "reserved": 0.0},
        )
        cap = budget.per_user_cap
        mine = (
            UserUsage.budget_id == budget.id,
            UserUsage.username == username,
            UserUsage.period_start == current,
        )
        result = s.execute(
            update(UserUsage)
            .where(*mine, cap - UserUsage.used - UserUsage.reserved >= asked)
            .values(reserved=UserUsage.reserved + asked)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            row = s.execute(select(UserUsage.used, UserUsage.reserved).where(*mine)).one()
            raise refuse(cap - row.used - row.reserved, scope="user")

    # ------------------------------------------------------------ running and release

    def mark_running(self, reservation_id: int, started_at: float | datetime | None = None) -> bool:
        """The server started: metering runs from ``started_at`` (default now).

        Returns False if the reservation was already running or closed (idempotent).
        """
        start = self._now(started_at)
        with self.db.session() as s:
            result = s.execute(
                update(Reservation)
                .where(Reservation.id == reservation_id, Reservation.state == "admitted")
                .values(state="running", started_at=start, charged_until=start)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def release(
        self, reservation_id: int, reason: str, now: float | datetime | None = None
    ) -> Released:
        """Charge the time used since the last tick, give back the rest, close.  Idempotent.

        Locks in a metering tick's order (:func:`meter_sql.apply_charges`): the reservation,
        the budget, the user's usage, then the budget's charged hours.  The other way round, a
        tick that holds the budget and upserts the same hour deadlocks with this release.
        """
        now_dt = self._now(now)
        final_key = None
        with self.db.session() as s:
            r = s.scalar(
                select(Reservation).where(Reservation.id == reservation_id).with_for_update()
            )
            if r is None:
                raise KeyError(f"no reservation {reservation_id}")
            if r.state == "closed":
                return Released(reservation_id, 0.0, 0.0, already_closed=True)
            charge_u = 0
            upto = r.charged_until
            if r.state == "running" and r.started_at and r.charged_until:
                # every second served is charged, past the reservation's end too (grace, lag)
                upto = max(r.charged_until, now_dt)
                charge_u = self._charge_units(r, (upto - r.charged_until).total_seconds())
                # every launch pays at least min_charge_seconds, however short it ran
                shortfall = (self._charge_units(r, self.min_charge_seconds)
                             - to_units(r.amount_charged) - charge_u)
                charge_u += max(0, shortfall)
                if charge_u > 0 or upto > r.charged_until:
                    final_key = f"res:{r.id}:final"
                    s.execute(insert(UsageEntry), [self._entry(
                        r, r.charged_until, upto, from_units(charge_u), final_key, now_dt)])
            charge = from_units(charge_u)
            hold_u = max(0, to_units(r.amount_reserved) - to_units(r.amount_charged))
            rest = from_units(max(0, hold_u - charge_u))
            hold = from_units(hold_u)
            s.execute(
                update(Budget)
                .where(Budget.id == r.budget_id)
                .values(used=Budget.used + charge, reserved=Budget.reserved - hold)
                .execution_options(synchronize_session=False)
            )
            if r.user_period_start is not None:
                s.execute(
                    update(UserUsage)
                    .where(
                        UserUsage.budget_id == r.budget_id,
                        UserUsage.username == r.username,
                        UserUsage.period_start == r.user_period_start,
                    )
                    .values(used=UserUsage.used + charge, reserved=UserUsage.reserved - hold)
                    .execution_options(synchronize_session=False)
                )
            if final_key is not None:
                meter_sql.fold_hours(s.connection(), meter_sql.ledger_lines(UsageEntry.idempotency_key == final_key))
            r.amount_charged = from_units(to_units(r.amount_charged) + charge_u)
            r.charged_until = upto
            r.state = "closed"
            r.closed_at = now_dt
            r.close_reason = reason[:255]
            log.info("released reservation %s (%s): charged %.4g, returned %.4g",
                     reservation_id, reason, charge, rest)
            return Released(reservation_id, charge, rest)

    @staticmethod
    def _charge_units(r: Any, seconds: float) -> int:
        """The cost of ``seconds`` at the reservation's rate, in stored units (rounded up)."""
        if seconds <= 0:
            return 0
        return ceil_units(r.amount_reserved * seconds / (r.hours * 3600.0))

    @staticmethod
    def _entry(r: Any, ts_from: datetime, ts_to: datetime, amount: float, key: str,
               now: datetime) -> dict:
        return {
            "reservation_id": r.id,
            "budget_id": r.budget_id,
            "group_id": r.group_id,
            "username": r.username,
            "resource_class": r.resource_class,
            "model": r.model,
            "amount": amount,
            "accelerator_hours": r.count * (ts_to - ts_from).total_seconds() / 3600.0,
            "ts_from": ts_from,
            "ts_to": ts_to,
            "created_at": now,
            "idempotency_key": key,
        }

    # ------------------------------------------------------------ metering

    def meter(self, now: float | datetime | None = None) -> MeterReport:
        """One metering tick over every running reservation, in a few set-based statements.

        Charges whole elapsed intervals since each reservation's ``charged_until`` (and
        the tail up to its end), records 80%/95%/exhausted notices once per period, and
        lists servers to stop once their grace period after running out has passed.
        A repeated tick at the same ``now`` charges nothing (see :mod:`hybridhub.accounting.meter_sql`).
        """
        now_dt = self._now(now)
        report = MeterReport(now=now_dt)
        now_us = (now_dt - _EPOCH) // _MICROSECOND
        interval_us = timedelta(seconds=self.meter_interval) // _MICROSECOND
        with self.db.bulk_session() as s:
            s.execute(
                update(Budget)
                .where(Budget.period == "monthly", Budget.period_start < month_start(now_dt))
                .values(period_start=month_start(now_dt), used=0.0)
                .execution_options(synchronize_session=False)
            )
            conn = s.connection()
            before = meter_sql.insert_charges(conn, now_dt, now_us, interval_us)
            report.charged, units = meter_sql.apply_charges(conn, before)
            report.amount = from_units(units)
            self._record_thresholds(s, now_dt, report)
            self._find_stops(s, now_dt, now_us, report)
        for notice in report.warnings:
            log.warning("quota %s for %s: %s", notice.level, notice.group, notice.message)
        return report

    def _record_thresholds(self, s: Session, now: datetime, report: MeterReport) -> None:
        """Record (once per period) every threshold a budget crossed, highest first."""
        new = []
        for b in meter_sql.new_thresholds(s.connection()):
            scope = b.resource_class + (f" ({b.model})" if b.model else "")
            resets = resets_at_for(b, now)
            resets_text = f", resets {resets:%Y-%m-%d}" if resets else ""
            state = "used up" if b.level == "exhausted" else f"{b.level}% used"
            message = (f"{b.g_name}'s {scope} budget is {state} ({fmt_amount(b.used, b.unit)}"
                       f" of {fmt_amount(b.amount, b.unit)}){resets_text}")
            new.append({
                "group_id": b.group_id, "budget_id": b.id, "reservation_id": None,
                "level": b.level, "period_start": b.period_start, "message": message,
                "stop_at": None, "created_at": now,
                "dedup_key": f"budget:{b.id}:{b.period_start.isoformat()}:{b.level}",
            })
            report.warnings.append(NoticeInfo(group=b.g_name, budget_id=b.id, level=b.level,
                                              message=message))
        if new:
            self._insert_ignore(s, Notice, new)

    def _find_stops(self, s: Session, now: datetime, now_us: int, report: MeterReport) -> None:
        """Warn (once) of the stop of every server that ran out; list those past grace."""
        new = []
        for r in meter_sql.stop_candidates(s.connection(), now_us):
            if r.ended:
                reason = f"its reservation of {r.hours:g} h ran out"
            elif r.is_frozen:
                reason = "the group's budget was frozen"
            else:
                reason = "the group's budget is used up"
            if r.notice_id is None:
                # The grace period runs from the warning, so nobody is stopped unwarned.
                stop_at = now + timedelta(seconds=self.grace_seconds)
                server = f"{r.username}/{r.server_name}" if r.server_name else r.username
                message = (
                    f"server {server} will be stopped at {stop_at:%Y-%m-%d %H:%M} UTC: {reason}"
                )
                new.append({
                    "group_id": r.group_id, "budget_id": r.budget_id, "reservation_id": r.id,
                    "level": "stop_pending", "period_start": r.b_period_start,
                    "message": message, "stop_at": stop_at, "created_at": now,
                    "dedup_key": f"reservation:{r.id}:stop_pending",
                })
                report.warnings.append(NoticeInfo(
                    group=r.g_name, budget_id=r.budget_id, level="stop_pending",
                    message=message, reservation_id=r.id, username=r.username, stop_at=stop_at,
                ))
            else:
                stop_at = r.notice_stop_at or now
            if now >= stop_at:
                report.to_stop.append(StopOrder(self._info(r, r.g_name), reason, stop_at))
        if new:
            self._insert_ignore(s, Notice, new)

    # ------------------------------------------------------------ reading

    def banners_for(self, username: str, now: float | datetime | None = None) -> list[str]:
        """Banner lines for a user: threshold notices of their groups, their pending stops."""
        now_dt = self._now(now)
        lines: list[str] = []
        with self.db.session() as s:
            notices = s.execute(_GROUP_NOTICES, {"username": username}).all()
            rank = {"exhausted": 0, "95": 1, "80": 2}
            current = [
                notice for notice, budget in notices
                # a new month began: the old period's warnings no longer apply
                if not (budget.period == "monthly" and budget.period_start < month_start(now_dt))
            ]
            # every threshold crossed is told, the highest first, budget by budget
            current.sort(key=lambda n: (n.budget_id, rank.get(n.level, 9), n.id))
            lines.extend(n.message for n in current)
            stops = s.scalars(_STOPS_PENDING, {"username": username}).all()
            lines.extend(n.message for n in stops)
        return lines

    def open_reservations(self, username: str | None = None) -> list[ReservationInfo]:
        """Reservations not yet closed (admitted or running), optionally for one user."""
        with self.db.session() as s:
            query = (
                select(Reservation, Group.name)
                .join(Group, Group.id == Reservation.group_id)
                .where(Reservation.state != "closed")
                .order_by(Reservation.id)
            )
            if username is not None:
                query = query.where(Reservation.username == username)
            return [self._info(r, gname) for r, gname in s.execute(query).all()]

    def reservation(self, reservation_id: int) -> ReservationInfo | None:
        """One reservation by id."""
        with self.db.session() as s:
            row = s.execute(
                select(Reservation, Group.name)
                .join(Group, Group.id == Reservation.group_id)
                .where(Reservation.id == reservation_id)
            ).first()
            return self._info(row[0], row[1]) if row else None

    def usage(
        self,
        group: str | None = None,
        username: str | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
    ) -> dict[str, float]:
        """Ledger totals: ``amount`` (budget units) and ``accelerator_hours``, filtered.

        An audit read that scans the ledger (it keeps no index by group, user or time, see
        :class:`UsageEntry`); pages read the rollup (:mod:`hybridhub.accounting.reports`).
        """
        query = select(
            func.coalesce(func.sum(UsageEntry.amount), 0.0),
            func.coalesce(func.sum(UsageEntry.accelerator_hours), 0.0),
            func.count(UsageEntry.id),
        )
        if group is not None:
            query = query.join(Group, Group.id == UsageEntry.group_id).where(Group.name == group)
        if username is not None:
            query = query.where(UsageEntry.username == username)
        if since is not None:
            query = query.where(UsageEntry.ts_from >= to_datetime(since))
        if until is not None:
            query = query.where(UsageEntry.ts_from < to_datetime(until))
        with self.db.session() as s:
            amount, hours, entries = s.execute(query).one()
        return {"amount": float(amount), "accelerator_hours": float(hours), "entries": entries}
