"""Admission and release: a launch reserves its whole cost up front, release settles it.

A launch of N accelerators for H hours reserves its whole cost up front, as Slurm's
``AccountingStorageEnforce=safe`` does.  Every change to a budget is one conditional
``UPDATE`` (``... WHERE amount - used - reserved >= :x``), never a read followed by a
write, so concurrent launches on separate connections cannot overspend, on SQLite and
PostgreSQL alike; a per-user cap is reserved the same way.  Every reservation carries an
idempotency key, so a retried admission returns the first reservation and reserves nothing
more.  Admission reserves on the budget, then on the user's usage, then inserts the
reservation.

Lock order: :meth:`Admission.release` locks in a metering tick's order
(:func:`hybridhub.accounting.meter_sql.apply_charges`): the reservation, the budget, the
user's usage, then the budget's charged hours.  The other way round, a tick that holds the
budget and upserts the same hour deadlocks with a release.  Its final ledger line has the key
``res:<id>:final``, so a repeated release charges nothing twice.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hybridhub.accounting import meter_sql
from hybridhub.accounting.ledger_base import LedgerBase
from hybridhub.accounting.ledger_errors import (
    BudgetUnavailable,
    NoBudget,
    NotMember,
    QuotaExceeded,
    fmt_amount,
)
from hybridhub.accounting.models import (
    Budget,
    Group,
    GroupMember,
    Reservation,
    UsageEntry,
    UserUsage,
    from_units,
    to_units,
)
from hybridhub.accounting.periods import ceil_units, cost, resets_at_for

log = logging.getLogger("hybridhub.accounting")

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


class Admission(LedgerBase):
    """Admission, start and release of reservations (mixed into
    :class:`~hybridhub.accounting.ledger.Accounting`)."""

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
        with self.db.session() as s:
            r = s.scalar(
                select(Reservation).where(Reservation.id == reservation_id).with_for_update()
            )
            if r is None:
                raise KeyError(f"no reservation {reservation_id}")
            if r.state == "closed":
                return Released(reservation_id, 0.0, 0.0, already_closed=True)
            charge_u, upto, final_key = self._final_charge(s, r, now_dt)
            charge = from_units(charge_u)
            hold_u = max(0, to_units(r.amount_reserved) - to_units(r.amount_charged))
            rest = from_units(max(0, hold_u - charge_u))
            hold = from_units(hold_u)
            self._settle(s, r, charge, hold)
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

    def _final_charge(
        self, s: Session, r: Reservation, now_dt: datetime
    ) -> tuple[int, datetime | None, str | None]:
        """What a closing reservation still owes: (units, charged until, key of its last line).

        Writes that last ledger line (key ``res:<id>:final``) when there is time or money to
        record; the key is None when none was written.
        """
        final_key = None
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
        return charge_u, upto, final_key

    @staticmethod
    def _settle(s: Session, r: Reservation, charge: float, hold: float) -> None:
        """Add the final charge to the budget (then the user's usage) and give back the hold."""
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
