"""Scheduling course sessions: checking a new session, and moving one from state to state.

Every field of a new session is checked against the catalog and the clock
(:class:`~hybridhub.accounting.course_errors.InvalidSession` names the field); a course has
at most one live (scheduled, running or ending) session at a time.  Every change of a
session's state is one conditional ``UPDATE`` (``... WHERE state IN (:from_states)``,
:meth:`ScheduleBase._transition`), so a scheduler and an instructor acting at once cannot
both move it: the loser gets :class:`~hybridhub.accounting.course_errors.SessionConflict`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hybridhub.accounting.course_errors import InvalidSession, SessionConflict, SessionNotFound
from hybridhub.accounting.course_model import (
    TIME_EPS,
    Catalog,
    CourseSeat,
    CourseSession,
    CourseSessionInfo,
    Offering,
    SeatInfo,
    _info,
    _sessions,
)
from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Group
from hybridhub.accounting.periods import to_datetime

log = logging.getLogger("hybridhub.courses")


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


def _course_group(s: Session, group: str) -> Group:
    """The course group named ``group``, or :class:`InvalidSession`."""
    g = s.scalar(select(Group).where(Group.name == group))
    if g is None:
        raise InvalidSession("group", f"unknown group {group!r}")
    if g.kind != "course":
        raise InvalidSession("group", f"{group!r} is a {g.kind} group, not a course")
    return g


def _check_no_clash(s: Session, g: Group, group: str, start: datetime, end: datetime) -> None:
    """Refuse a session that overlaps a live session of the same course."""
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


class ScheduleBase:
    """Reading, creating and moving sessions (the base of
    :class:`~hybridhub.accounting.courses.CourseSchedule`, which documents the arguments)."""

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
        start, end = self._checked_times(offering, starts_at, ends_at)
        image = self._checked_image(offering, image)
        title = (title or "").strip() or f"{group} {start:%Y-%m-%d %H:%M}"
        if len(title) > 255:
            raise InvalidSession("title", "must be at most 255 characters")
        with self.db.session() as s:
            g = _course_group(s, group)
            _check_no_clash(s, g, group, start, end)
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

    def _checked_times(
        self, offering: Offering, starts_at: Any, ends_at: Any
    ) -> tuple[datetime, datetime]:
        """A new session's start and end: in order, not past, no longer than ``offering`` allows."""
        start, end = parse_time(starts_at, "starts_at"), parse_time(ends_at, "ends_at")
        if end <= start:
            raise InvalidSession("ends_at", "must be after starts_at")
        if end <= self.now():
            raise InvalidSession("ends_at", "is in the past")
        hours = (end - start).total_seconds() / 3600
        if hours > offering.max_hours + TIME_EPS:
            raise InvalidSession("ends_at", f"the session lasts {hours:g} h; {offering.key} "
                                            f"allows at most {offering.max_hours:g} h")
        return start, end

    def _checked_image(self, offering: Offering, image: str) -> str:
        """A new session's image (empty: the offering's own), if it is one allowed."""
        image = (image or "").strip()
        if image and image != offering.image and image not in self.allowed_images:
            allowed = sorted({offering.image, *self.allowed_images})
            raise InvalidSession("image", f"{image!r} is not allowed; allowed: {allowed}")
        return image

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
