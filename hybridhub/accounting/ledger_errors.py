"""Why a launch is refused, in words for the person launching.

Every refusal is a :class:`Refusal` whose ``user_message`` is the text shown (a refused
launch an :class:`AdmissionError`, a refused course operation a
:class:`hybridhub.accounting.course_errors.CourseError`); a :class:`QuotaExceeded` says what
was asked, what is left and when it resets.
:func:`fmt_amount` writes amounts the same way everywhere (refusals, warnings, mail).
Nothing here touches the database.
"""

from __future__ import annotations

from datetime import datetime


class Refusal(Exception):
    """Something a person asked for was refused; ``user_message`` is the text for them."""

    def __init__(self, message: str):
        self.user_message = message
        super().__init__(message)


class AdmissionError(Refusal):
    """A launch was refused.  ``user_message`` is the text for the person launching."""


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
