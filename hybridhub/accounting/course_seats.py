"""Seats: admitting a whole class, late joiners, and handing a seat to the spawner.

At a session's start the whole class is admitted against the course's budget in ONE
transaction (:meth:`~hybridhub.accounting.ledger.Accounting.admit_all`) -- every student or
nobody; a class that does not fit is refused with how many would fit
(:class:`~hybridhub.accounting.course_errors.ClassDoesNotFit`) and nothing is reserved.  A
student who joins later is admitted alone.  While a session runs, :func:`session_launch`
fixes what a student's server must be (:data:`~hybridhub.accounting.course_model.LOCKED_FIELDS`
cannot change) and hands the spawner the seat's pre-admitted reservation by its idempotency
key, so a seat is never charged twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from hybridhub.accounting.course_errors import ClassDoesNotFit, SessionConflict, SessionLocked
from hybridhub.accounting.course_model import (
    LOCKED_FIELDS,
    SEAT_STATES,
    SESSION_SERVER,
    CourseSeat,
    CourseSession,
    CourseSessionInfo,
    Offering,
    SeatInfo,
    SessionLaunch,
    _seat_session,
    reservation_key,
    roster,
)
from hybridhub.accounting.course_schedule import ScheduleBase
from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger_errors import AdmissionError
from hybridhub.accounting.models import Reservation, to_units
from hybridhub.accounting.periods import ceil_units, cost, to_datetime

log = logging.getLogger("hybridhub.courses")


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


class SeatAdmission(ScheduleBase):
    """Starting a session and keeping its seats (mixed into
    :class:`~hybridhub.accounting.courses.CourseSchedule`)."""

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
