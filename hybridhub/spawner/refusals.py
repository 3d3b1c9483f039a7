"""Refused launches: the one place HybridSpawner builds, counts and records a refusal.

Every refusal is a :class:`~hybridhub.errors.SpawnRefusal` (JupyterHub's ``SpawnException``) made by
:meth:`RefusalLogMixin.refused`, with a stable reason from :data:`~hybridhub.errors.REFUSAL_REASONS`;
it is counted in ``hybridhub_refusals_total`` (the hub counts it in its own spawn metric).
:meth:`RefusalLogMixin.note_refusal` writes unmet demand to :mod:`hybridhub.accounting.demand` at
the refusal points (budget, capacity 429, barred group, course lock).  Recording never turns a
refusal into a different error: a failure to write is logged and the user still gets the refusal.
"""

from __future__ import annotations

from typing import Any

from hybridhub import metrics
from hybridhub.accounting.demand import record_refusal
from hybridhub.accounting.ledger import QuotaExceeded
from hybridhub.catalog import Offering
from hybridhub.errors import SpawnRefusal, refusal


def admission_reason(exc: Exception) -> str:
    """``budget`` when too little is left, ``no_budget`` when there is none or no membership."""
    return "budget" if isinstance(exc, QuotaExceeded) else "no_budget"


def error_text(exc: Exception) -> str:
    """The message the user was shown for a refusal raised as an HTTP error."""
    return str(getattr(exc, "jupyterhub_message", None) or getattr(exc, "reason", None) or exc)


def offering_labels(offering: Offering | None) -> tuple[str, str]:
    """The ``class`` and ``offering`` metric labels of a launch ('' before it was validated)."""
    return (offering.resource_class, offering.key) if offering is not None else ("", "")


class RefusalLogMixin:
    """Builds refusals (counted in the metrics) and writes refused launches to the accounting database."""

    def refused(self, status: int, message: str, reason: str,
                headers: dict[str, str] | None = None) -> SpawnRefusal:
        """This launch's refusal (status, the person's text, stable reason), counted once."""
        return self.counted(refusal(status, message, reason, headers))

    def counted(self, error: SpawnRefusal) -> SpawnRefusal:
        """Count ``error`` in ``hybridhub_refusals_total`` (and as a refused admission); return it."""
        offering = getattr(self, "offering", None)
        labels = offering_labels(offering)
        metrics.REFUSALS.labels(error.reason, *labels, offering.backend if offering is not None else "").inc()
        metrics.ADMISSIONS.labels("refused", *labels).inc()
        return error

    def note_refusal(self, reason: str, message: str,
                     options: dict[str, Any] | None = None) -> None:
        """Record a refusal of this launch (runs in a thread; never raises)."""
        req = self.launch
        if req is not None:
            asked = {"class": req.resource_class, "model": req.model, "count": req.count,
                     "hours": req.hours, "group": req.group}
        else:  # refused before validation: what was asked, cut to size by record_refusal
            asked = dict(options or self.user_options or {})
        try:
            record_refusal(
                self.accounting.db, username=self.user.name,
                group=str(asked.get("group") or ""), resource_class=asked.get("class"),
                model=asked.get("model"), count=asked.get("count", 1),
                hours=asked.get("hours", 0.0), reason=reason, message=message,
            )
        except Exception:
            self.log.exception("Could not record the refused launch of %s", self._log_name)
