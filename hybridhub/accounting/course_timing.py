"""Session timing: when sessions are due, the warnings before the end, and the end itself.

10 and 2 minutes (:data:`~hybridhub.accounting.course_model.WARN_MINUTES`) before a running
session ends, its students are warned once per level: the level is recorded by one
conditional ``UPDATE`` (``warned_minutes`` only ever goes down), so a restarted scheduler
does not warn again.  At the end every session reservation is released
(:data:`~hybridhub.accounting.course_model.END_REASON`) and the servers are stopped; ending
is idempotent, and a session is ``ended`` once every seat is stopped.  The hub's pages read
upcoming and running sessions, and the banners of a warned one, from here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from hybridhub.accounting.course_model import (
    END_REASON,
    SESSION_SERVER,
    TIME_EPS,
    WARN_MINUTES,
    CourseSeat,
    CourseSession,
    CourseSessionInfo,
    EndWarning,
    _seat_session,
    _sessions,
)
from hybridhub.accounting.course_schedule import ScheduleBase
from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Group, Reservation
from hybridhub.accounting.periods import to_datetime

log = logging.getLogger("hybridhub.courses")


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


class SessionTiming(ScheduleBase):
    """Due sessions, pre-end warnings and ending (mixed into
    :class:`~hybridhub.accounting.courses.CourseSchedule`)."""

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
