"""Unmet demand from the spawner: each refused launch is written to :mod:`hybridhub.accounting.demand`.

HybridSpawner calls :meth:`RefusalLogMixin.note_refusal` at its refusal points (budget,
capacity 429, barred group, course lock).  Recording never turns a refusal into a
different error: a failure to write is logged and the user still gets the refusal.
"""

from __future__ import annotations

from typing import Any

from hybridhub.accounting.demand import record_refusal
from hybridhub.accounting.ledger import QuotaExceeded


def admission_reason(exc: Exception) -> str:
    """``budget`` when too little is left, ``no_budget`` when there is none or no membership."""
    return "budget" if isinstance(exc, QuotaExceeded) else "no_budget"


def error_text(exc: Exception) -> str:
    """The message the user was shown for a refusal raised as an HTTP error."""
    return str(getattr(exc, "jupyterhub_message", None) or getattr(exc, "reason", None) or exc)


class RefusalLogMixin:
    """Writes refused launches (what was asked for and why not) to the accounting database."""

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
