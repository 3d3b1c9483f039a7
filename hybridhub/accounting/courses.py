"""Course-wide notebook sessions: every student of a course on the same hardware at once.

An instructor (scope ``custom:courses:manage`` on the course group) schedules a
:class:`CourseSession`: the course group, one offering (class, model, count), an
image, and start and end times.  At the start time, or on "start now", the
scheduler (:mod:`hybridhub.services.course_scheduler`, a managed hub service) admits the whole
class against the course's budget in ONE transaction -- every student or nobody; a
class that does not fit is refused with how many would fit (:class:`ClassDoesNotFit`)
-- and then starts a server for every student through the hub's REST API.

While a session runs, the spawner asks :func:`session_launch` what a student's
server must be: the session's offering, whatever the form or the REST body said; a
different choice is refused with a 403 naming the session (:class:`SessionLocked`).
The pre-admitted reservation is handed to the spawner by its idempotency key, so a
seat is never charged twice.  10 and 2 minutes before the end the students are
warned (hub banner, log line); at the end every session reservation is released
("end of course") and the servers are stopped.

The schedule and one :class:`CourseSeat` per student live in the database, so a
restarted hub or scheduler carries on: running servers are re-adopted, the end time
is kept.  Times are naive UTC datetimes, as everywhere in :mod:`hybridhub.accounting.models`.

The parts, one reason to change each: :mod:`~hybridhub.accounting.course_model` (tables,
states, snapshots), :mod:`~hybridhub.accounting.course_errors` (refusals),
:mod:`~hybridhub.accounting.course_schedule` (checking and moving sessions),
:mod:`~hybridhub.accounting.course_seats` (admitting the class, the spawner's hook) and
:mod:`~hybridhub.accounting.course_timing` (due sessions, warnings, the end).  Every name
callers used from this module is still importable from it.
"""

from __future__ import annotations

from hybridhub.accounting.course_errors import (
    ClassDoesNotFit,
    CourseError,
    InvalidSession,
    SessionConflict,
    SessionLocked,
    SessionNotFound,
)
from hybridhub.accounting.course_model import (
    END_REASON,
    INSTRUCTORS_PROPERTY,
    LOCKED_FIELDS,
    MANAGE_SCOPE,
    SEAT_STATES,
    SESSION_SERVER,
    SESSION_STATES,
    TIME_EPS,
    WARN_MINUTES,
    Catalog,
    CourseSeat,
    CourseSession,
    CourseSessionInfo,
    EndWarning,
    Offering,
    OfferingClass,
    SeatInfo,
    SessionLaunch,
    reservation_key,
    roster,
)
from hybridhub.accounting.course_schedule import parse_time
from hybridhub.accounting.course_seats import SeatAdmission, in_session, session_launch
from hybridhub.accounting.course_timing import SessionTiming, course_banners, sessions_for_user, warning_text

__all__ = [
    "END_REASON",
    "INSTRUCTORS_PROPERTY",
    "LOCKED_FIELDS",
    "MANAGE_SCOPE",
    "SEAT_STATES",
    "SESSION_SERVER",
    "SESSION_STATES",
    "TIME_EPS",
    "WARN_MINUTES",
    "Catalog",
    "ClassDoesNotFit",
    "CourseError",
    "CourseSchedule",
    "CourseSeat",
    "CourseSession",
    "CourseSessionInfo",
    "EndWarning",
    "InvalidSession",
    "Offering",
    "OfferingClass",
    "SeatInfo",
    "SessionConflict",
    "SessionLaunch",
    "SessionLocked",
    "SessionNotFound",
    "course_banners",
    "in_session",
    "parse_time",
    "reservation_key",
    "roster",
    "session_launch",
    "sessions_for_user",
    "warning_text",
]


class CourseSchedule(SeatAdmission, SessionTiming):
    """Creates, starts, warns and ends course sessions on one database.

    ``catalog`` is the resource catalog (offerings are checked against it);
    ``allowed_images`` lists images a session may name besides its offering's own;
    ``clock`` returns epoch seconds (injectable, so tests do not sleep).
    """
