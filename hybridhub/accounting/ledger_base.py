"""What admission, metering and reading share: the clock, the database, which budget applies.

:class:`LedgerBase` holds :class:`~hybridhub.accounting.ledger.Accounting`'s settings and
the helpers every part of it (and :class:`~hybridhub.accounting.budgets.BudgetAdmin`) uses.
The rule for the budget a launch draws on lives here once (:meth:`LedgerBase._choose_budget`):
a model-specific budget wins over the class-wide one, an active one over one outside its dates.
A monthly budget's period is rolled by one conditional ``UPDATE`` (``... WHERE period_start <
:current``), so concurrent rolls reset it once.

Time comes from an injectable ``clock`` (seconds since the epoch), so tests never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from hybridhub.accounting.budgets import BudgetAdmin
from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger_errors import NoBudget
from hybridhub.accounting.models import Budget, Group
from hybridhub.accounting.periods import is_active, period_start_for, to_datetime


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
    price_per_hour: float = 0.0  #: the admitted price of one accelerator-hour (money)


class LedgerBase(BudgetAdmin):
    """The settings and shared helpers of :class:`~hybridhub.accounting.ledger.Accounting`
    (which documents the arguments)."""

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
            price_per_hour=r.price_per_hour,
        )
