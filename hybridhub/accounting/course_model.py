"""The records of course sessions: tables, states, read-only snapshots and the reads that make them.

A :class:`CourseSession` is one sitting of a course (one offering for every student, start to
end); a :class:`CourseSeat` is one student's place in it, at most one per student and session
(``uq_course_seats``).  A seat's pre-admitted reservation is found again by its idempotency key
(:func:`reservation_key`), so a seat is never charged twice.  Sessions move through
:data:`SESSION_STATES`, seats through :data:`SEAT_STATES`.  Times are naive UTC datetimes, as
everywhere in :mod:`hybridhub.accounting.models`.  What leaves a database session is a frozen
snapshot (:class:`CourseSessionInfo`, :class:`SeatInfo`), safe to hand to other threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from hybridhub.accounting.db import read_memo, unchanged
from hybridhub.accounting.models import Base, Group, json_ready, utcnow


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
        out = json_ready(self)
        out["class"] = out.pop("resource_class")
        out["model"] = out.pop("offering")
        out["refusal"] = None if self.refusal is None else dict(self.refusal)
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

#: Whether any course session runs: most pages, most of the time, need not look for the user's seat.
_ANY_SESSION_RUNS = select(CourseSession.id).where(CourseSession.state == "running").limit(1)


def _seat_session(
    s: Session, username: str, server_name: str
) -> tuple[CourseSessionInfo, CourseSeat] | None:
    """The running session holding ``username``'s server, with their seat."""
    if server_name != SESSION_SERVER:
        return None
    memo = read_memo(s)  # a page asks it twice: the picker's course check and the banners
    if memo is not None and ("seat", username) in memo:
        return memo[("seat", username)]
    row = (s.execute(_SEAT_SESSION, {"username": username}).first()
           if unchanged(s, "a course session runs", lambda: s.scalar(_ANY_SESSION_RUNS) is not None) else None)
    found = (_info(s, row[0], row[1]), row[2]) if row else None
    if memo is not None:
        memo[("seat", username)] = found
    return found
