"""Forecasts per budget: the burn rate over the last days and when the budget runs out.

The rate is what the ledger charged to the budget in the window (default 7 days) divided
by its length, read from the budgets' charged hours
(:class:`~hybridhub.accounting.models.ChargedHour`): the window runs from the hour ``now - 7
days`` falls in to the end of the hour ``now`` falls in (exact when ``now`` is on the
hour); the run-out date is ``now + remaining / rate``.  An idle budget (or one
that would last beyond :data:`HORIZON_DAYS`) never runs out ("never"); one that would
last past its next reset says so.  The clock is an argument, so a synthetic history is
forecast exactly in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select

from hybridhub.accounting.db import Database, unchanged
from hybridhub.accounting.models import ChargedHour

#: Days of history the burn rate is measured over.
WINDOW_DAYS = 7
#: A run-out further away than this (100 years) is shown as "never".
HORIZON_DAYS = 36_500


@dataclass(frozen=True)
class Forecast:
    """One budget's burn rate and run-out moment (``None``: never at this rate)."""

    budget_id: int
    burn_per_day: float
    remaining: float
    runs_out_at: datetime | None
    resets_at: datetime | None
    window_days: int = WINDOW_DAYS

    @property
    def label(self) -> str:
        """What a page shows: ``never``, ``exhausted``, a date, or that a reset comes first."""
        if self.remaining <= 0:
            return "exhausted"
        if self.runs_out_at is None:
            return "never"
        if self.resets_at is not None and self.runs_out_at >= self.resets_at:
            return f"not before its reset on {self.resets_at:%Y-%m-%d}"
        return f"{self.runs_out_at:%Y-%m-%d %H:%M} UTC"

    def as_dict(self) -> dict[str, Any]:
        """The forecast as the JSON API shows it."""
        return {"burn_per_day": self.burn_per_day, "window_days": self.window_days,
                "runs_out_at": self.runs_out_at, "label": self.label}


_ch = ChargedHour.__table__
#: Built once (each picker view asks it): units charged per budget in hours [since, upto).
_CHARGED = (
    select(_ch.c.budget_id, func.sum(_ch.c.amount))
    .where(_ch.c.budget_id.in_(bindparam("ids", expanding=True)), _ch.c.hour >= bindparam("since"),
           _ch.c.hour < bindparam("upto"))
    .group_by(_ch.c.budget_id)
)
_EPOCH, _HOUR = datetime(1970, 1, 1), timedelta(hours=1)


def burn_rates(db: Database, budget_ids: Iterable[int], now: datetime,
               days: int = WINDOW_DAYS) -> dict[int, float]:
    """Budget units charged per day over the ``days`` before ``now``, per budget."""
    ids = sorted(set(budget_ids))
    if not ids:
        return {}
    since = (now - timedelta(days=days) - _EPOCH) // _HOUR
    upto = -((_EPOCH - now) // _HOUR)  # the end of the hour ``now`` is in
    with db.session() as s:
        rows = unchanged(s, ("charged", since, upto, *ids),
                         lambda: s.execute(_CHARGED, {"ids": ids, "since": since, "upto": upto}).all())
    charged = {b: float(a or 0.0) for b, a in rows}
    return {b: charged.get(b, 0.0) / days for b in ids}


def forecast(budget: Mapping[str, Any], rate: float, now: datetime,
             days: int = WINDOW_DAYS) -> Forecast:
    """The forecast of one budget view (``id``, ``remaining``, ``resets_at``) at ``rate``/day."""
    remaining = float(budget["remaining"])
    runs_out = None
    if remaining <= 0:
        runs_out = now
    elif rate > 0 and remaining / rate <= HORIZON_DAYS:
        runs_out = now + timedelta(days=remaining / rate)
    return Forecast(budget["id"], rate, remaining, runs_out, budget.get("resets_at"), days)


def forecasts(db: Database, budgets: Iterable[Mapping[str, Any]], now: datetime,
              days: int = WINDOW_DAYS) -> dict[int, Forecast]:
    """Forecasts of budget views (as :func:`hybridhub.web.budgets.groups_view` lists them)."""
    budgets = list(budgets)
    rates = burn_rates(db, (b["id"] for b in budgets), now, days)
    return {b["id"]: forecast(b, rates.get(b["id"], 0.0), now, days) for b in budgets}


def remaining_forecasts(db: Database, remaining: Iterable[Any], now: datetime,
                        days: int = WINDOW_DAYS) -> dict[int, Forecast]:
    """Forecasts keyed by budget id of :class:`hybridhub.accounting.ledger.Remaining` values (None skipped)."""
    found = {r.budget_id: r for r in remaining if r is not None}
    rates = burn_rates(db, found, now, days)
    return {
        bid: forecast({"id": bid, "remaining": r.amount_left, "resets_at": r.resets_at},
                      rates.get(bid, 0.0), now, days)
        for bid, r in found.items()
    }
