"""Refused course operations: an HTTP ``status`` and a text for people (``user_message``).

Every error is a :class:`CourseError`; :class:`ClassDoesNotFit` also carries the numbers
(class size, how many fit, each seat's cost, what is left) for the REST answer and the
session's ``refusal`` record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridhub.accounting.ledger_errors import Refusal, fmt_amount


class CourseError(Refusal):
    """A refused course operation: ``status`` is the HTTP status, the text is for people."""

    status = 400


class InvalidSession(CourseError):
    """A session field is missing or out of range; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class SessionNotFound(CourseError):
    """No session with that id (or not one the caller may see)."""

    status = 404

    def __init__(self, session_id: int):
        super().__init__(f"no course session {session_id}")


class SessionConflict(CourseError):
    """The session is in a state that does not allow the operation, or overlaps another."""

    status = 409


class ClassDoesNotFit(CourseError):
    """The course budget cannot cover every student; nothing was started.

    ``students`` is the class size, ``fit`` how many the budget covers now, ``each``
    the cost of one seat in ``unit``; ``status`` is 409 (too little left) or 403
    (no usable budget at all: none for the class, frozen, outside its dates).
    """

    def __init__(self, *, session: str, students: int, fit: int, each: float, left: float,
                 unit: str, reason: str, status: int = 409):
        self.students = students
        self.fit = fit
        self.each = each
        self.left = left
        self.unit = unit
        self.status = status
        super().__init__(
            f"{session}: the course budget covers {fit} of {students} students "
            f"(each seat needs {fmt_amount(each, unit)}, {fmt_amount(left, unit)} left): "
            f"{reason}; nothing was started"
        )

    def as_json(self) -> dict[str, Any]:
        """The numbers, for the REST answer and the session's ``refusal`` record."""
        return {"status": self.status, "message": self.user_message, "students": self.students,
                "fit": self.fit, "each": self.each, "left": self.left, "unit": self.unit}


class SessionLocked(CourseError):
    """A student tried to put the session's server on other hardware."""

    status = 403

    def __init__(self, session: str, field: str, wanted: Any, fixed: Any,
                 session_options: Mapping[str, Any] | None = None):
        self.field = field
        self.session_options = dict(session_options or {})
        super().__init__(
            f"your server belongs to {session} until it ends: {field} is {fixed!r} for "
            f"the session, not {wanted!r}"
        )
