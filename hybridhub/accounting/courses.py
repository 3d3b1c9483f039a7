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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from hybridhub.accounting.db import Database, read_memo
from hybridhub.accounting.ledger import Accounting, AdmissionError, fmt_amount
from hybridhub.accounting.models import Base, Group, Reservation, to_units, utcnow
from hybridhub.accounting.periods import ceil_units, cost, to_datetime


class Offering(Protocol):
    """What course rules read of an offering (plain data; ``hybridhub.catalog.Offering`` fits)."""

    name: str
    key: str
    image: str
    counts: Sequence[int]
    max_hours: float
    billing_weight: float
    price_per_hour: float


class OfferingClass(Protocol):
    """A resource class: its name and offerings."""

    name: str
    offerings: Sequence[Offering]


class Catalog(Protocol):
    """The resource catalog as course rules see it (``hybridhub.catalog.Catalog`` fits)."""

    classes: Sequence[OfferingClass]

    def get_class(self, name: str) -> OfferingClass | None: ...

    def offering(self, class_name: str, model: str) -> Offering | None: ...


log = logging.getLogger("hybridhub.courses")

#: The custom scope that lets an instructor schedule and run sessions (``!group=`` filtered).
MANAGE_SCOPE = "custom:courses:manage"
#: Hub group property listing a course's instructors: members who get no session server.
INSTRUCTORS_PROPERTY = "instructors"
#: Reason recorded on every reservation a session's end releases.
END_REASON = "end of course"
#: Minutes before the end at which students are warned.
WARN_MINUTES = (10, 2)
#: Tolerance for comparing durations computed from datetimes (hours, minutes).
TIME_EPS = 1e-9
SESSION_STATES = ("scheduled", "running", "ending", "ended", "cancelled", "refused")
SEAT_STATES = ("pending", "starting", "ready", "failed", "stopped")
#: Session servers are the students' default servers: where the hub lands them.
SESSION_SERVER = ""
#: user_options fields a student may not change during a session.
LOCKED_FIELDS = ("class", "model", "count", "group")


# ---------------------------------------------------------------- models


class CourseSession(Base):
    """One scheduled sitting of a course: one offering for every student, start to end."""

    __tablename__ = "course_sessions"
    __table_args__ = (
        Index("ix_course_sessions_state", "state", "starts_at"),
        Index("ix_course_sessions_group", "group_id", "starts_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(255))
    resource_class: Mapped[str] = mapped_column(String(64))
    offering: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(512), default="")
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    start_requested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    warned_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(String(1000), default="")
    refusal: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CourseSeat(Base):
    """One student's place in a running session: their reservation and server state."""

    __tablename__ = "course_seats"
    __table_args__ = (
        UniqueConstraint("session_id", "username", name="uq_course_seats"),
        Index("ix_course_seats_user", "username", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("course_sessions.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(255))
    reservation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str] = mapped_column(String(1000), default="")
    requested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# ---------------------------------------------------------------- errors


class CourseError(Exception):
    """A refused course operation: ``status`` is the HTTP status, the text is for people."""

    status = 400

    def __init__(self, message: str):
        self.user_message = message
        super().__init__(message)


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


# ---------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class CourseSessionInfo:
    """A read-only snapshot of a session and how its seats stand."""

    id: int
    group: str
    title: str
    resource_class: str
    offering: str
    count: int
    image: str
    starts_at: datetime
    ends_at: datetime
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    warned_minutes: int | None
    message: str
    refusal: Mapping[str, Any] | None
    start_requested: bool
    created_by: str
    seats: Mapping[str, int]

    @property
    def label(self) -> str:
        """How people see the session: ``'Lab 3' (course-ml101, session 4)``."""
        return f"{self.title!r} ({self.group}, session {self.id})"

    def user_options(self, now: datetime) -> dict[str, Any]:
        """The ``user_options`` of a session server launched at ``now``."""
        hours = max((self.ends_at - now).total_seconds() / 3600.0, 1 / 60)
        return {"class": self.resource_class, "model": self.offering, "count": self.count,
                "hours": round(hours, 4), "group": self.group}

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO 8601 UTC)."""
        out = dataclasses.asdict(self)
        out["class"] = out.pop("resource_class")
        out["model"] = out.pop("offering")
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat() + "Z"
        out["seats"] = dict(self.seats)
        return out


@dataclass(frozen=True)
class SeatInfo:
    """One student's seat: who, which reservation, how their server stands."""

    session_id: int
    username: str
    reservation_id: int | None
    state: str
    error: str


@dataclass(frozen=True)
class SessionLaunch:
    """What :func:`session_launch` tells the spawner about a session server."""

    session: CourseSessionInfo
    reservation_key: str | None

    def apply(self, offering: Offering) -> Offering:
        """The offering with the session's image, when the session names one."""
        if self.session.image and self.session.image != offering.image:
            return dataclasses.replace(offering, image=self.session.image)
        return offering


@dataclass(frozen=True)
class EndWarning:
    """A pre-end warning recorded for a session (logged once, shown as a banner)."""

    session: CourseSessionInfo
    minutes: int


def reservation_key(session_id: int, username: str) -> str:
    """The idempotency key of a seat's pre-admitted reservation."""
    return f"course:{session_id}:{username}"


def roster(members: Iterable[str], properties: Mapping[str, Any] | None) -> list[str]:
    """The students of a course group: its members less its instructors."""
    instructors = set((properties or {}).get(INSTRUCTORS_PROPERTY) or ())
    return sorted(set(members) - instructors)


def parse_time(value: Any, field: str) -> datetime:
    """A naive UTC datetime from ISO 8601 text (``Z`` or an offset), epoch seconds or a datetime."""
    if isinstance(value, datetime | int | float) and not isinstance(value, bool):
        return to_datetime(value)
    if isinstance(value, str) and value.strip():
        try:
            return to_datetime(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            pass
    raise InvalidSession(field, f"must be an ISO 8601 time (2026-11-10T14:00Z), got {value!r}")


# ---------------------------------------------------------------- queries (hub and scheduler)

_SEAT_COUNTS = {state: 0 for state in SEAT_STATES}


def _info(s: Session, row: CourseSession, group: str) -> CourseSessionInfo:
    counts = dict(_SEAT_COUNTS)
    for (state,) in s.execute(select(CourseSeat.state).where(CourseSeat.session_id == row.id)):
        counts[state] = counts.get(state, 0) + 1
    return CourseSessionInfo(
        id=row.id, group=group, title=row.title, resource_class=row.resource_class,
        offering=row.offering, count=row.count, image=row.image, starts_at=row.starts_at,
        ends_at=row.ends_at, state=row.state, started_at=row.started_at,
        ended_at=row.ended_at, warned_minutes=row.warned_minutes, message=row.message,
        refusal=row.refusal, start_requested=row.start_requested_at is not None,
        created_by=row.created_by, seats=counts,
    )


def _sessions(s: Session, *where) -> list[CourseSessionInfo]:
    rows = s.execute(
        select(CourseSession, Group.name)
        .join(Group, Group.id == CourseSession.group_id)
        .where(*where)
        .order_by(CourseSession.starts_at, CourseSession.id)
    ).all()
    return [_info(s, row, gname) for row, gname in rows]


#: Built once: every page view asks it (building a statement costs more than running it).
_SEAT_SESSION = (
    select(CourseSession, Group.name, CourseSeat)
    .join(Group, Group.id == CourseSession.group_id)
    .join(CourseSeat, CourseSeat.session_id == CourseSession.id)
    .where(CourseSession.state == "running", CourseSeat.username == bindparam("username"),
           CourseSeat.state != "stopped")
    .order_by(CourseSession.started_at, CourseSession.id)
)


def _seat_session(
    s: Session, username: str, server_name: str
) -> tuple[CourseSessionInfo, CourseSeat] | None:
    """The running session holding ``username``'s server, with their seat."""
    if server_name != SESSION_SERVER:
        return None
    memo = read_memo(s)  # a page asks it twice: the picker's course check and the banners
    if memo is not None and ("seat", username) in memo:
        return memo[("seat", username)]
    row = s.execute(_SEAT_SESSION, {"username": username}).first()
    found = (_info(s, row[0], row[1]), row[2]) if row else None
    if memo is not None:
        memo[("seat", username)] = found
    return found


# ---------------------------------------------------------------- the spawner's hook


def in_session(db: Database, username: str, server_name: str) -> CourseSessionInfo | None:
    """The running session that owns this server (the picker is skipped for it)."""
    with db.session() as s:
        found = _seat_session(s, username, server_name)
    return found[0] if found else None


def session_launch(
    db: Database, username: str, server_name: str, user_options: Mapping[str, Any] | None,
    now: float | datetime | None = None,
) -> tuple[dict[str, Any], SessionLaunch | None]:
    """The options a launch must use, and the session it belongs to (None: no session).

    Outside a session the options come back unchanged.  Inside one, empty options
    become the session's; options that name other hardware (or another group) raise
    :class:`SessionLocked`; ``hours`` is always the time left until the session ends.
    """
    options = dict(user_options or {})
    with db.session() as s:
        found = _seat_session(s, username, server_name)
        if found is None:
            return options, None
        session, seat = found
        key = None
        if seat.reservation_id is not None:
            state = s.scalar(select(Reservation.state).where(Reservation.id == seat.reservation_id))
            if state == "admitted":  # the seat's reservation, not yet used by a server
                key = reservation_key(session.id, username)
    fixed = session.user_options(to_datetime(time.time() if now is None else now))
    for name in LOCKED_FIELDS:
        if name in options and str(options[name]) != str(fixed[name]):
            raise SessionLocked(session.label, name, options[name], fixed[name], fixed)
    return {**options, **fixed}, SessionLaunch(session, key)


# ---------------------------------------------------------------- what the hub pages show


def sessions_for_user(
    db: Database, username: str, groups: Iterable[str], now: float | datetime | None = None
) -> list[dict[str, Any]]:
    """Upcoming and running sessions of the user's groups, for the hub home page."""
    groups = sorted(set(groups))
    if not groups:
        return []
    now_dt = to_datetime(time.time() if now is None else now)
    with db.session() as s:
        infos = _sessions(
            s, Group.name.in_(groups),
            CourseSession.state.in_(("scheduled", "running", "ending")),
            CourseSession.ends_at > now_dt - timedelta(minutes=5),
        )
        seats = dict(
            s.execute(
                select(CourseSeat.session_id, CourseSeat.state).where(
                    CourseSeat.username == username,
                    CourseSeat.session_id.in_([i.id for i in infos]),
                )
            ).all()
        )
    return [
        {"id": i.id, "title": i.title, "group": i.group, "state": i.state,
         "hardware": f"{i.count} x {i.resource_class}/{i.offering}",
         "starts_at": f"{i.starts_at:%Y-%m-%d %H:%M}", "ends_at": f"{i.ends_at:%Y-%m-%d %H:%M}",
         "seat": seats.get(i.id, "")}
        for i in infos
    ]


def course_banners(db: Database, username: str) -> list[str]:
    """Banner lines for a student whose running session has been warned of its end."""
    with db.session() as s:
        found = _seat_session(s, username, SESSION_SERVER)
    if found is None or found[0].warned_minutes is None:
        return []
    info = found[0]
    return [warning_text(info, info.warned_minutes)]


def warning_text(info: CourseSessionInfo, minutes: int) -> str:
    """The words of a pre-end warning."""
    return (
        f"Course session {info.label} ends at {info.ends_at:%H:%M} UTC, in {minutes} "
        f"minutes: save your work; your server will be stopped then."
    )


# ---------------------------------------------------------------- the schedule


class CourseSchedule:
    """Creates, starts, warns and ends course sessions on one database.

    ``catalog`` is the resource catalog (offerings are checked against it);
    ``allowed_images`` lists images a session may name besides its offering's own;
    ``clock`` returns epoch seconds (injectable, so tests do not sleep).
    """

    def __init__(
        self,
        accounting: Accounting,
        catalog: Catalog,
        *,
        clock: Callable[[], float] = time.time,
        allowed_images: Iterable[str] = (),
    ):
        self.accounting = accounting
        self.db: Database = accounting.db
        self.catalog = catalog
        self.clock = clock
        self.allowed_images = frozenset(allowed_images)

    def now(self) -> datetime:
        """The schedule's current time (naive UTC)."""
        return to_datetime(self.clock())

    # ------------------------------------------------------------ reading

    def get(self, session_id: int) -> CourseSessionInfo:
        """One session, or :class:`SessionNotFound`."""
        with self.db.session() as s:
            found = _sessions(s, CourseSession.id == session_id)
        if not found:
            raise SessionNotFound(session_id)
        return found[0]

    def list(self, groups: Iterable[str] | None = None,
             states: Iterable[str] | None = None) -> list[CourseSessionInfo]:
        """Sessions, optionally of some groups and in some states, by start time."""
        where = []
        if groups is not None:
            where.append(Group.name.in_(sorted(set(groups))))
        if states is not None:
            where.append(CourseSession.state.in_(sorted(set(states))))
        with self.db.session() as s:
            return _sessions(s, *where)

    def seats(self, session_id: int, states: Iterable[str] | None = None) -> list[SeatInfo]:
        """A session's seats, optionally in some states, by username."""
        query = select(CourseSeat).where(CourseSeat.session_id == session_id)
        if states is not None:
            query = query.where(CourseSeat.state.in_(sorted(set(states))))
        with self.db.session() as s:
            return [
                SeatInfo(r.session_id, r.username, r.reservation_id, r.state, r.error)
                for r in s.scalars(query.order_by(CourseSeat.username))
            ]

    # ------------------------------------------------------------ scheduling

    def _offering(self, resource_class: str, model: str) -> Offering:
        rc = self.catalog.get_class(resource_class)
        if rc is None:
            names = [c.name for c in self.catalog.classes]
            raise InvalidSession("class", f"unknown class {resource_class!r}; allowed: {names}")
        offering = self.catalog.offering(resource_class, model)
        if offering is None:
            names = [o.name for o in rc.offerings]
            raise InvalidSession(
                "model", f"unknown model {model!r} in {resource_class!r}; allowed: {names}"
            )
        return offering

    def create(
        self,
        *,
        group: str,
        resource_class: str,
        model: str,
        count: int,
        starts_at: Any,
        ends_at: Any,
        image: str = "",
        title: str = "",
        created_by: str = "",
    ) -> CourseSessionInfo:
        """Schedule a session; every field is checked (:class:`InvalidSession` names it)."""
        offering = self._offering(resource_class, model)
        if isinstance(count, bool) or not isinstance(count, int) or count not in offering.counts:
            raise InvalidSession("count", f"{count!r} is not allowed for {offering.key}; "
                                          f"allowed: {list(offering.counts)}")
        start, end = parse_time(starts_at, "starts_at"), parse_time(ends_at, "ends_at")
        if end <= start:
            raise InvalidSession("ends_at", "must be after starts_at")
        if end <= self.now():
            raise InvalidSession("ends_at", "is in the past")
        hours = (end - start).total_seconds() / 3600
        if hours > offering.max_hours + TIME_EPS:
            raise InvalidSession("ends_at", f"the session lasts {hours:g} h; {offering.key} "
                                            f"allows at most {offering.max_hours:g} h")
        image = (image or "").strip()
        if image and image != offering.image and image not in self.allowed_images:
            allowed = sorted({offering.image, *self.allowed_images})
            raise InvalidSession("image", f"{image!r} is not allowed; allowed: {allowed}")
        title = (title or "").strip() or f"{group} {start:%Y-%m-%d %H:%M}"
        if len(title) > 255:
            raise InvalidSession("title", "must be at most 255 characters")
        with self.db.session() as s:
            g = s.scalar(select(Group).where(Group.name == group))
            if g is None:
                raise InvalidSession("group", f"unknown group {group!r}")
            if g.kind != "course":
                raise InvalidSession("group", f"{group!r} is a {g.kind} group, not a course")
            clash = s.scalar(
                select(CourseSession).where(
                    CourseSession.group_id == g.id,
                    CourseSession.state.in_(("scheduled", "running", "ending")),
                    CourseSession.starts_at < end,
                    CourseSession.ends_at > start,
                )
            )
            if clash is not None:
                raise SessionConflict(
                    f"{group} already has session {clash.id} ({clash.title!r}) from "
                    f"{clash.starts_at:%Y-%m-%d %H:%M} to {clash.ends_at:%H:%M} UTC"
                )
            row = CourseSession(
                group_id=g.id, title=title, resource_class=resource_class, offering=model,
                count=count, image=image, starts_at=start, ends_at=end, state="scheduled",
                message="", created_by=created_by, created_at=self.now(),
            )
            s.add(row)
            s.flush()
            info = _info(s, row, group)
        log.info("course session %s scheduled by %s: %s x %s from %s to %s", info.label,
                 created_by or "?", count, offering.key, start, end)
        return info

    def _transition(
        self, session_id: int, from_states: Sequence[str], **values: Any
    ) -> CourseSessionInfo:
        """Move a session on only if it is in one of ``from_states`` (one conditional UPDATE)."""
        with self.db.session() as s:
            result = s.execute(
                update(CourseSession)
                .where(CourseSession.id == session_id, CourseSession.state.in_(from_states))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            changed = result.rowcount == 1
        info = self.get(session_id)
        if not changed:
            raise SessionConflict(f"session {info.label} is {info.state}")
        return info

    def request_start(self, session_id: int) -> CourseSessionInfo:
        """"Start now": the scheduler begins the session at its next tick; the end is kept."""
        info = self.get(session_id)
        offering = self._offering(info.resource_class, info.offering)
        hours = (info.ends_at - self.now()).total_seconds() / 3600
        if hours > offering.max_hours + TIME_EPS:
            raise SessionConflict(
                f"starting {info.label} now would make it last {hours:.2f} h (it ends at "
                f"{info.ends_at:%Y-%m-%d %H:%M} UTC); {offering.key} allows at most "
                f"{offering.max_hours:g} h"
            )
        return self._transition(session_id, ("scheduled", "refused"),
                                start_requested_at=self.now(), message="start requested",
                                refusal=None)

    def cancel(self, session_id: int) -> CourseSessionInfo:
        """Cancel a session that has not started."""
        return self._transition(session_id, ("scheduled", "refused"), state="cancelled",
                                ended_at=self.now(), message="cancelled")

    def end_now(self, session_id: int) -> CourseSessionInfo:
        """End a running session now (the scheduler stops its servers at its next tick)."""
        return self._transition(session_id, ("running",), ends_at=self.now())

    # ------------------------------------------------------------ starting

    def due(self) -> list[CourseSessionInfo]:
        """Scheduled sessions whose start time has come, or whose start was requested."""
        now = self.now()
        with self.db.session() as s:
            return _sessions(
                s, CourseSession.state.in_(("scheduled", "refused")),
                or_(
                    CourseSession.start_requested_at.is_not(None),
                    (CourseSession.state == "scheduled") & (CourseSession.starts_at <= now),
                ),
            )

    def _fit(self, info: CourseSessionInfo, students: Sequence[str], each: float) -> tuple[int, float]:
        """How many of ``students`` the budget covers now, and what is left of it."""
        left = self.accounting.remaining(info.group, info.resource_class, info.offering)
        if left is None or each <= 0:
            return (0 if left is None else len(students)), (left.amount_left if left else 0.0)
        each_units = ceil_units(each)  # what admission will reserve per student, exactly
        by_group = to_units(left.amount_left) // each_units
        by_user = 0
        for name in students:
            mine = self.accounting.remaining(info.group, info.resource_class, info.offering,
                                             username=name)
            if mine is not None and (mine.user_left is None
                                     or to_units(mine.user_left) >= each_units):
                by_user += 1
        return min(by_group, by_user, len(students)), left.amount_left

    def begin(self, session_id: int, members: Iterable[str],
              properties: Mapping[str, Any] | None = None) -> CourseSessionInfo:
        """Admit the whole class (every student or nobody) and open their seats.

        ``members`` and ``properties`` are the hub group's; instructors (the
        ``instructors`` property) get no seat.  Raises :class:`ClassDoesNotFit` with the
        numbers when the budget does not cover everyone: nothing is reserved then, and
        the session is marked ``refused`` (a "start now" leaves it ``scheduled``).
        """
        info = self.get(session_id)
        if info.state not in ("scheduled", "refused"):
            raise SessionConflict(f"session {info.label} is {info.state}")
        now = self.now()
        if info.ends_at <= now:
            return self._transition(session_id, ("scheduled", "refused"), state="ended",
                                    ended_at=now, message="its end passed before it could start")
        members = sorted(set(members))
        students = roster(members, properties)
        offering = self._offering(info.resource_class, info.offering)
        hours = (info.ends_at - now).total_seconds() / 3600
        self.accounting.sync_groups({info.group: members})
        launches = [self._launch(info, name, offering, hours) for name in students]
        try:
            ids = self.accounting.admit_all(launches)
        except AdmissionError as exc:
            raise self._refuse(info, students, offering, hours, exc) from None
        with self.db.session() as s:
            for name, rid in zip(students, ids, strict=True):
                s.add(CourseSeat(session_id=session_id, username=name, reservation_id=rid,
                                 state="pending", error=""))
        started = self._transition(
            session_id, ("scheduled", "refused"), state="running", started_at=now,
            start_requested_at=None, refusal=None,
            message=f"started for {len(students)} students",
        )
        log.info("course session %s started: %d students admitted for %.2f h of %s",
                 started.label, len(students), hours, offering.key)
        return started

    @staticmethod
    def _launch(info: CourseSessionInfo, username: str, offering: Offering, hours: float) -> dict:
        return {
            "username": username, "group": info.group, "resource_class": info.resource_class,
            "model": info.offering, "count": info.count, "hours": hours,
            "billing_weight": offering.billing_weight, "price_per_hour": offering.price_per_hour,
            "server_name": SESSION_SERVER, "idempotency_key": reservation_key(info.id, username),
        }

    def _refuse(self, info: CourseSessionInfo, students: Sequence[str], offering: Offering,
                hours: float, exc: AdmissionError) -> ClassDoesNotFit:
        left = self.accounting.remaining(info.group, info.resource_class, info.offering)
        unit = left.unit if left else "hours"
        each = cost(unit, info.count, hours, offering.billing_weight, offering.price_per_hour)
        fit, amount_left = self._fit(info, students, each)
        usable = left is not None and left.active and not left.frozen
        refusal = ClassDoesNotFit(
            session=info.label, students=len(students), fit=fit, each=each, left=amount_left,
            unit=unit, reason=exc.user_message, status=409 if usable else 403,
        )
        values: dict[str, Any] = {"message": str(refusal)[:1000], "start_requested_at": None,
                                  "refusal": refusal.as_json()}
        if not self._start_requested(info.id):
            values["state"] = "refused"  # its start time came; a refused "start now" keeps it
        self._transition(info.id, ("scheduled", "refused"), **values)
        log.warning("course session %s refused: %s", info.label, refusal)
        return refusal

    def _start_requested(self, session_id: int) -> bool:
        with self.db.session() as s:
            return s.scalar(
                select(CourseSession.start_requested_at).where(CourseSession.id == session_id)
            ) is not None

    def add_students(self, session_id: int, members: Iterable[str],
                     properties: Mapping[str, Any] | None = None) -> list[SeatInfo]:
        """Seats for students who joined the course group after the session started.

        Each is admitted on its own; one who does not fit gets a ``failed`` seat saying why.
        """
        info = self.get(session_id)
        if info.state != "running":
            return []
        members = sorted(set(members))
        have = {seat.username for seat in self.seats(session_id)}
        new = [name for name in roster(members, properties) if name not in have]
        if not new:
            return []
        offering = self._offering(info.resource_class, info.offering)
        hours = (info.ends_at - self.now()).total_seconds() / 3600
        if hours <= 0:
            return []
        self.accounting.sync_groups({info.group: members})
        seats = []
        for name in new:
            rid, state, error = None, "pending", ""
            try:
                rid = self.accounting.admit(**self._launch(info, name, offering, hours))
            except AdmissionError as exc:
                state, error = "failed", exc.user_message
            with self.db.session() as s:
                s.add(CourseSeat(session_id=session_id, username=name, reservation_id=rid,
                                 state=state, error=error[:1000]))
            seats.append(SeatInfo(session_id, name, rid, state, error))
            log.info("course session %s: late joiner %s (%s%s)", info.label, name, state,
                     f": {error}" if error else "")
        return seats

    def mark_seat(self, session_id: int, username: str, state: str, error: str = "") -> None:
        """Record how a seat's server stands (``starting``, ``ready``, ``failed``...)."""
        if state not in SEAT_STATES:
            raise ValueError(f"seat state {state!r} is not one of {SEAT_STATES}")
        values: dict[str, Any] = {"state": state, "error": error[:1000]}
        if state == "starting":
            values["requested_at"] = self.now()
        elif state == "ready":
            values["ready_at"] = self.now()
        with self.db.session() as s:
            s.execute(
                update(CourseSeat)
                .where(CourseSeat.session_id == session_id, CourseSeat.username == username)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def release_unused(self, seat: SeatInfo, reason: str) -> None:
        """Give back a seat's pre-admitted reservation if no server ever used it."""
        if seat.reservation_id is None:
            return
        held = self.accounting.reservation(seat.reservation_id)
        if held is not None and held.state == "admitted":
            self.accounting.release(seat.reservation_id, reason)

    # ------------------------------------------------------------ running and ending

    def running(self) -> list[CourseSessionInfo]:
        """Sessions that are running or being ended."""
        with self.db.session() as s:
            return _sessions(s, CourseSession.state.in_(("running", "ending")))

    def warnings(self, minutes: Sequence[int] = WARN_MINUTES) -> list[EndWarning]:
        """Record the pre-end warnings that are due; each is returned (and logged) once."""
        now = self.now()
        out = []
        for info in self.running():
            if info.state != "running" or info.ends_at <= now:
                continue
            left = (info.ends_at - now).total_seconds() / 60
            due = [m for m in sorted(minutes) if left <= m + TIME_EPS]
            if not due:
                continue
            level = due[0]
            with self.db.session() as s:
                changed = s.execute(
                    update(CourseSession)
                    .where(CourseSession.id == info.id, CourseSession.state == "running",
                           or_(CourseSession.warned_minutes.is_(None),
                               CourseSession.warned_minutes > level))
                    .values(warned_minutes=level)
                    .execution_options(synchronize_session=False)
                ).rowcount
            if changed:
                warned = dataclasses.replace(info, warned_minutes=level)
                log.warning("%s (%d students)", warning_text(warned, level),
                            info.seats.get("ready", 0) + info.seats.get("starting", 0))
                out.append(EndWarning(warned, level))
        return out

    def begin_end(self, session_id: int) -> list[str]:
        """End a session whose time is up: release every session reservation.

        Returns the students whose servers must now be stopped.  Idempotent: a
        scheduler that restarts mid-way calls it again.
        """
        info = self.get(session_id)
        if info.state == "running":
            info = self._transition(session_id, ("running",), state="ending",
                                    message="ending: stopping servers")
        seats = self.seats(session_id)
        names = [seat.username for seat in seats]
        with self.db.session() as s:
            open_ids = set(
                s.scalars(
                    select(Reservation.id)
                    .join(Group, Group.id == Reservation.group_id)
                    .where(Group.name == info.group, Reservation.state != "closed",
                           Reservation.server_name == SESSION_SERVER,
                           Reservation.username.in_(names))
                )
            )
        open_ids |= {seat.reservation_id for seat in seats if seat.reservation_id is not None}
        for rid in sorted(open_ids):
            self.accounting.release(rid, END_REASON)
        return [seat.username for seat in seats if seat.state != "stopped"]

    def finish(self, session_id: int, stopped: Iterable[str]) -> CourseSessionInfo:
        """Mark the stopped students' seats; the session is ended once all are."""
        with self.db.session() as s:
            names = sorted(set(stopped))
            if names:
                s.execute(
                    update(CourseSeat)
                    .where(CourseSeat.session_id == session_id, CourseSeat.username.in_(names))
                    .values(state="stopped")
                    .execution_options(synchronize_session=False)
                )
        info = self.get(session_id)
        left = sum(n for state, n in info.seats.items() if state != "stopped")
        if info.state == "ending" and left == 0:
            stopped_count = info.seats.get("stopped", 0)
            info = self._transition(session_id, ("ending",), state="ended", ended_at=self.now(),
                                    message=f"ended; {stopped_count} servers stopped")
            log.info("course session %s ended", info.label)
        return info

