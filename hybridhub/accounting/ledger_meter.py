"""The metering tick: charge running reservations, record warnings, list servers to stop.

One tick charges every running reservation in a few set-based statements
(:mod:`hybridhub.accounting.meter_sql`); the usage ledger
(:class:`~hybridhub.accounting.models.UsageEntry`) is append-only and every entry carries an
idempotency key, so a restarted hub that meters again never charges a span twice, and a
repeated tick at the same ``now`` charges nothing.  Threshold notices (80%, 95%, used up)
are recorded once per budget period, a pending stop once per reservation (``dedup_key``,
``INSERT ... ON CONFLICT DO NOTHING``).  A server that ran out is warned first and stopped
only ``grace_seconds`` after that warning.

Lock order: a tick locks the running reservations, then the budgets, the per-user usage,
then the budgets' charged hours (:func:`~hybridhub.accounting.meter_sql.apply_charges`);
a release (:mod:`hybridhub.accounting.ledger_admit`) takes them in the same order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import update
from sqlalchemy.orm import Session

from hybridhub.accounting import meter_sql
from hybridhub.accounting.ledger_base import LedgerBase, ReservationInfo
from hybridhub.accounting.ledger_errors import fmt_amount
from hybridhub.accounting.models import Budget, Notice, from_units
from hybridhub.accounting.periods import month_start, resets_at_for

log = logging.getLogger("hybridhub.accounting")

#: Warning thresholds in percent of the budget, highest first.
WARN_LEVELS = ((95, "95"), (80, "80"))
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


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


class Metering(LedgerBase):
    """The metering tick (mixed into :class:`~hybridhub.accounting.ledger.Accounting`)."""

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
