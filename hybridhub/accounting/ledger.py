"""Per-group quota accounting: admit-if-fits, metering, warnings, stop at zero, release.

:class:`Accounting` is put together from parts with one reason to change each:

* :mod:`~hybridhub.accounting.ledger_admit` -- admission and release.  A launch of N
  accelerators for H hours reserves its whole cost up front, as Slurm's
  ``AccountingStorageEnforce=safe`` does.  Every change to a budget is one conditional
  ``UPDATE`` (``... WHERE amount - used - reserved >= :x``), never a read followed by a
  write, so concurrent launches on separate connections cannot overspend, on SQLite and
  PostgreSQL alike.  Release locks in a metering tick's order: the reservation, the
  budget, the user's usage, then the budget's charged hours.
* :mod:`~hybridhub.accounting.ledger_meter` -- the metering tick, warnings and stop orders.
  The usage ledger (:class:`~hybridhub.accounting.models.UsageEntry`) is append-only and
  every entry carries an idempotency key, so a restarted hub that meters again never
  charges a span twice.
* :mod:`~hybridhub.accounting.ledger_read` -- what is left, banners, reservations, totals.
* :mod:`~hybridhub.accounting.ledger_errors` -- refusals and how amounts are written;
  :mod:`~hybridhub.accounting.ledger_base` -- settings, clock and the budget-choice rule.

Every name callers used from this module is still importable from it.
Time comes from an injectable ``clock`` (seconds since the epoch), so tests never sleep.
"""

from __future__ import annotations

from hybridhub.accounting.ledger_admit import Admission, Released
from hybridhub.accounting.ledger_base import ReservationInfo
from hybridhub.accounting.ledger_errors import (
    AdmissionError,
    BudgetUnavailable,
    NoBudget,
    NotMember,
    QuotaExceeded,
    fmt_amount,
)
from hybridhub.accounting.ledger_meter import WARN_LEVELS, Metering, MeterReport, NoticeInfo, StopOrder
from hybridhub.accounting.ledger_read import LedgerReads, Remaining

__all__ = [
    "WARN_LEVELS",
    "Accounting",
    "AdmissionError",
    "BudgetUnavailable",
    "MeterReport",
    "NoBudget",
    "NotMember",
    "NoticeInfo",
    "QuotaExceeded",
    "Released",
    "Remaining",
    "ReservationInfo",
    "StopOrder",
    "fmt_amount",
]


class Accounting(Admission, Metering, LedgerReads):
    """Admission, metering and release of accelerator time against group budgets.

    ``clock`` returns seconds since the epoch (``time.time`` by default, injectable for
    tests); ``meter_interval`` is the metering granularity in seconds; ``grace_seconds``
    is how long a server may go on after its reservation or budget ran out, with a
    warning, before it is put on the stop list; that time is charged too (the budget
    may go below zero by it, shown as ``overdrawn``).  ``min_charge_seconds`` (default
    one ``meter_interval``) is the least any launch that ran is charged for.
    """
