"""What the ledger tells pages and pickers: what is left, banners, reservations, totals.

Reads only: nothing here changes a budget.  What is left of a budget is its amount less
what was used and is reserved this period, less again for a per-user cap, and nothing for
a frozen budget or group or one outside its dates (:class:`Remaining`).  The statements
every picker or page view runs are built once at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from hybridhub.accounting.db import unchanged
from hybridhub.accounting.ledger_base import LedgerBase, ReservationInfo
from hybridhub.accounting.ledger_errors import NoBudget
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
    month_start,
    period_start_for,
    period_used,
    resets_at_for,
    to_datetime,
)

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
#: Whether any group has a notice this period, any user a stop pending: most pages, most of the
#: time, need not look for their user's own (:func:`~hybridhub.accounting.db.unchanged`).
_ANY_GROUP_NOTICE = (
    select(Notice.id).join(Budget, Budget.id == Notice.budget_id)
    .where(Notice.reservation_id.is_(None), Notice.period_start == Budget.period_start).limit(1)
)
_ANY_STOP_PENDING = (
    select(Notice.id).join(Reservation, Reservation.id == Notice.reservation_id)
    .where(Reservation.state != "closed", Notice.level == "stop_pending").limit(1)
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


class LedgerReads(LedgerBase):
    """The ledger's reads (mixed into :class:`~hybridhub.accounting.ledger.Accounting`)."""

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
            names = sorted({g for g, _, _ in keys})
            rows = unchanged(s, ("budgets of groups", *names),
                             lambda: s.execute(_BUDGETS_OF_GROUPS, {"names": names}).all())
            for b, g in rows:
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

    def banners_for(self, username: str, now: float | datetime | None = None) -> list[str]:
        """Banner lines for a user: threshold notices of their groups, their pending stops."""
        now_dt = self._now(now)
        lines: list[str] = []
        with self.db.session() as s:
            notices = (s.execute(_GROUP_NOTICES, {"username": username}).all()
                       if unchanged(s, "a group notice", lambda: s.scalar(_ANY_GROUP_NOTICE) is not None) else [])
            rank = {"exhausted": 0, "95": 1, "80": 2}
            current = [
                notice for notice, budget in notices
                # a new month began: the old period's warnings no longer apply
                if not (budget.period == "monthly" and budget.period_start < month_start(now_dt))
            ]
            # every threshold crossed is told, the highest first, budget by budget
            current.sort(key=lambda n: (n.budget_id, rank.get(n.level, 9), n.id))
            lines.extend(n.message for n in current)
            stops = (s.scalars(_STOPS_PENDING, {"username": username}).all()
                     if unchanged(s, "a stop pending", lambda: s.scalar(_ANY_STOP_PENDING) is not None) else [])
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
