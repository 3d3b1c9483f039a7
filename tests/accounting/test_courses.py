"""Course sessions without a hub: scheduling, whole-class admission, the spawner's hook,
warnings and the end, on SQLite and PostgreSQL (the ``db`` fixture); the scheduler loop
against an in-memory hub with a fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from hybridhub.accounting.courses import (
    END_REASON,
    ClassDoesNotFit,
    CourseSchedule,
    InvalidSession,
    SessionConflict,
    SessionLocked,
    course_banners,
    in_session,
    parse_time,
    roster,
    session_launch,
    sessions_for_user,
)
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Budget, Reservation
from hybridhub.accounting.periods import to_datetime
from hybridhub.catalog import load_catalog
from hybridhub.hubapi import HubApiError
from hybridhub.services.course_scheduler import CourseScheduler, same_hardware

COURSE = "course-ml101"
STUDENTS = [f"s{i:02d}" for i in range(6)]
PROPS = {"kind": "course", "instructors": ["ivy"]}
MEMBERS = [*STUDENTS, "ivy"]


@pytest.fixture
def acct(db, clock) -> Accounting:
    acct = Accounting(db, clock=clock)
    acct.sync_groups({COURSE: MEMBERS, "lab-vision": ["s00"]},
                     kinds={COURSE: "course", "lab-vision": "lab"})
    return acct


@pytest.fixture
def schedule(acct, clock) -> CourseSchedule:
    return CourseSchedule(acct, load_catalog(backend_override="local"), clock=clock,
                          allowed_images=["example.org/exam:1"])


def plan(schedule, clock, minutes: float = 60, start_in: float = 0, **kw):
    start = clock() + start_in * 60
    fields = {"group": COURSE, "resource_class": "community", "model": "rtx4090", "count": 1,
              "starts_at": start, "ends_at": start + minutes * 60, "title": "Lab 3",
              "created_by": "ivy", **kw}
    return schedule.create(**fields)


def reserved(db) -> float:
    with db.session() as s:
        return sum(s.scalars(select(Budget.reserved)))


# ---------------------------------------------------------------- scheduling


@pytest.mark.parametrize("change, field, words", [
    ({"resource_class": "quantum"}, "class", "allowed: ['community', 'enterprise', 'aws']"),
    ({"model": "rtx9999"}, "model", "allowed: ['rtx3090', 'rtx4090', 'rtx5090']"),
    ({"count": 4}, "count", "allowed: [1, 2]"),
    ({"minutes": 9 * 60}, "ends_at", "at most 8 h"),
    ({"minutes": -5}, "ends_at", "after starts_at"),
    ({"image": "evil.example/miner:1"}, "image", "is not allowed"),
    ({"group": "lab-vision"}, "group", "not a course"),
    ({"group": "nope"}, "group", "unknown group"),
])
def test_create_names_the_bad_field(schedule, clock, change, field, words):
    with pytest.raises(InvalidSession) as info:
        plan(schedule, clock, **change)
    assert info.value.field == field and words in str(info.value)


def test_times_parse_iso_with_zone_and_refuse_garbage():
    assert parse_time("2026-11-10T14:00Z", "starts_at") == parse_time(
        "2026-11-10T15:00+01:00", "starts_at")
    with pytest.raises(InvalidSession, match="starts_at: must be an ISO 8601 time"):
        parse_time("tomorrow", "starts_at")


def test_overlapping_sessions_of_one_course_conflict(schedule, clock):
    plan(schedule, clock, minutes=60)
    with pytest.raises(SessionConflict, match="already has session"):
        plan(schedule, clock, minutes=30, start_in=30)
    assert plan(schedule, clock, minutes=30, start_in=60).state == "scheduled"


def test_instructors_get_no_seat():
    assert roster(MEMBERS, PROPS) == STUDENTS
    assert roster(MEMBERS, None) == sorted(MEMBERS)


# ---------------------------------------------------------------- whole-class admission


def test_begin_admits_the_whole_class_at_once(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 100, kind="course")
    info = plan(schedule, clock, minutes=90)
    assert [i.id for i in schedule.due()] == [info.id]
    started = schedule.begin(info.id, MEMBERS, PROPS)
    assert started.state == "running" and started.seats["pending"] == len(STUDENTS)
    seats = schedule.seats(info.id)
    assert [s.username for s in seats] == STUDENTS
    assert reserved(acct.db) == pytest.approx(len(STUDENTS) * 1.5)
    # begin is idempotent per seat key: asking again does not reserve twice
    with pytest.raises(SessionConflict):
        schedule.begin(info.id, MEMBERS, PROPS)
    assert reserved(acct.db) == pytest.approx(len(STUDENTS) * 1.5)


def test_class_that_does_not_fit_is_refused_with_numbers_and_nothing_reserved(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 4.5, kind="course")  # 4 seats of 1 h fit
    info = plan(schedule, clock, minutes=60)
    with pytest.raises(ClassDoesNotFit) as refused:
        schedule.begin(info.id, MEMBERS, PROPS)
    err = refused.value
    assert (err.status, err.students, err.fit, err.each, err.unit) == (409, 6, 4, 1.0, "hours")
    assert "covers 4 of 6 students" in str(err) and "nothing was started" in str(err)
    assert reserved(acct.db) == 0 and schedule.seats(info.id) == []
    after = schedule.get(info.id)
    assert after.state == "refused" and after.refusal["fit"] == 4


def test_refused_start_now_stays_scheduled_and_per_user_caps_count(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 100, kind="course", per_user_cap=0.5)
    info = plan(schedule, clock, minutes=60, start_in=120)
    schedule.request_start(info.id)
    assert [i.id for i in schedule.due()] == [info.id]
    with pytest.raises(ClassDoesNotFit) as refused:
        schedule.begin(info.id, MEMBERS, PROPS)
    assert refused.value.fit == 0 and "per-user cap" in str(refused.value)
    after = schedule.get(info.id)
    assert after.state == "scheduled" and not after.start_requested and schedule.due() == []


def test_no_budget_is_a_403(schedule, clock):
    info = plan(schedule, clock)
    with pytest.raises(ClassDoesNotFit) as refused:
        schedule.begin(info.id, MEMBERS, PROPS)
    assert refused.value.status == 403 and "no budget" in str(refused.value)


# ---------------------------------------------------------------- the spawner's hook


def test_hook_fills_locks_and_hands_over_the_seat_reservation(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 100, kind="course")
    info = plan(schedule, clock, minutes=60, image="example.org/exam:1")
    assert session_launch(acct.db, "s01", "", {}, now=clock()) == ({}, None)  # not begun yet
    schedule.begin(info.id, MEMBERS, PROPS)
    assert in_session(acct.db, "s01", "").id == info.id
    assert in_session(acct.db, "s01", "other") is None and in_session(acct.db, "ivy", "") is None

    options, launch = session_launch(acct.db, "s01", "", {}, now=clock())
    assert options == {"class": "community", "model": "rtx4090", "count": 1, "hours": 1.0,
                       "group": COURSE}
    assert launch.reservation_key == f"course:{info.id}:s01"
    offering = schedule.catalog.offering("community", "rtx4090")
    assert launch.apply(offering).image == "example.org/exam:1"
    # the same hardware spelled by a form is fine; other hardware is a 403 naming the session
    same, _ = session_launch(acct.db, "s01", "", {"class": "community", "count": "1"}, clock())
    assert same["model"] == "rtx4090"
    with pytest.raises(SessionLocked) as locked:
        session_launch(acct.db, "s01", "", {**options, "class": "enterprise", "model": "h100"})
    assert locked.value.status == 403 and "'Lab 3' (course-ml101" in str(locked.value)
    assert "class is 'community'" in str(locked.value)
    # the seat's reservation serves one start: once running, a restart is admitted afresh
    rid = acct.admit(username="s01", group=COURSE, resource_class="community", model="rtx4090",
                     count=1, hours=1, idempotency_key=launch.reservation_key)
    assert rid == schedule.seats(info.id)[1].reservation_id
    acct.mark_running(rid)
    assert session_launch(acct.db, "s01", "", {}, clock())[1].reservation_key is None


def test_home_page_lists_sessions_and_banners_follow_warnings(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 100, kind="course")
    info = plan(schedule, clock, minutes=30)
    listed = sessions_for_user(acct.db, "s02", [COURSE, "lab-vision"], now=clock())
    assert [(x["title"], x["state"], x["seat"]) for x in listed] == [("Lab 3", "scheduled", "")]
    schedule.begin(info.id, MEMBERS, PROPS)
    assert sessions_for_user(acct.db, "s02", [COURSE], now=clock())[0]["seat"] == "pending"
    assert course_banners(acct.db, "s02") == [] and schedule.warnings() == []

    clock.advance(20 * 60 + 1)  # 10 minutes left
    warned = schedule.warnings()
    assert [w.minutes for w in warned] == [10] and schedule.warnings() == []
    assert "in 10 minutes" in course_banners(acct.db, "s02")[0]
    clock.advance(8 * 60)  # 2 minutes left
    assert [w.minutes for w in schedule.warnings()] == [2]
    assert "in 2 minutes" in course_banners(acct.db, "s02")[0]
    assert course_banners(acct.db, "ivy") == []


def test_end_releases_every_session_reservation_as_end_of_course(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 100, kind="course")
    info = plan(schedule, clock, minutes=60)
    schedule.begin(info.id, MEMBERS, PROPS)
    seats = {s.username: s for s in schedule.seats(info.id)}
    acct.mark_running(seats["s00"].reservation_id)  # s00's server is up
    # s01 stopped and started again within the session: a fresh reservation
    restart = acct.admit(username="s01", group=COURSE, resource_class="community",
                         model="rtx4090", count=1, hours=0.5)
    acct.mark_running(restart)
    clock.advance(30 * 60)
    users = schedule.begin_end(info.id)
    assert users == STUDENTS and schedule.get(info.id).state == "ending"
    with acct.db.session() as s:
        rows = s.scalars(select(Reservation).where(Reservation.group_id.is_not(None))).all()
        assert {r.state for r in rows} == {"closed"}
        assert {r.close_reason for r in rows} == {END_REASON}
    assert reserved(acct.db) == pytest.approx(0)
    charged = {r.username: r.amount_charged for r in rows}
    assert charged["s00"] == pytest.approx(0.5) and charged["s02"] == 0
    done = schedule.finish(info.id, users)
    assert done.state == "ended" and done.seats["stopped"] == len(STUDENTS)


def test_late_joiners_get_seats_or_a_reason(schedule, acct, clock):
    acct.ensure_budget(COURSE, "community", 7.5, kind="course")
    info = plan(schedule, clock, minutes=60)
    schedule.begin(info.id, MEMBERS, PROPS)
    late = schedule.add_students(info.id, [*MEMBERS, "zed", "yan"], PROPS)
    assert [(s.username, s.state) for s in late] == [("yan", "pending"), ("zed", "failed")]
    assert "left" in late[1].error
    assert schedule.add_students(info.id, [*MEMBERS, "zed", "yan"], PROPS) == []


def test_a_session_whose_end_passed_before_it_began_is_ended(schedule, acct, clock):
    info = plan(schedule, clock, minutes=10)
    clock.advance(11 * 60)
    assert schedule.begin(info.id, MEMBERS, PROPS).state == "ended"


# ---------------------------------------------------------------- the scheduler loop


class FakeHub:
    """The parts of the hub REST API the scheduler uses, in memory, with spawn delays."""

    def __init__(self, members, properties, spawn_seconds: float = 0.02):
        self.groups = {COURSE: {"users": list(members), "properties": dict(properties)}}
        self.servers: dict[str, dict] = {}
        self.spawn_seconds = spawn_seconds
        self.in_flight = self.most_in_flight = 0
        self.spawned: list[str] = []
        self.stopped: list[str] = []
        self.fail = set()

    async def group(self, name):
        return self.groups[name]

    async def server(self, user, server_name=""):
        return self.servers.get(user)

    async def start_server(self, user, server_name, options, timeout):
        if user in self.servers:
            raise HubApiError(400, f"{user}'s server is already running")
        self.spawned.append(user)
        self.servers[user] = {"ready": False, "pending": "spawn", "user_options": dict(options)}
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.spawn_seconds)
        finally:
            self.in_flight -= 1
        if user in self.fail:
            del self.servers[user]
            raise HubApiError(500, "Spawn failed: no luck")
        self.servers[user].update(ready=True, pending=None)
        return 201

    async def wait_ready(self, user, server_name, timeout):
        while self.servers.get(user, {}).get("pending"):
            await asyncio.sleep(0.005)
        return None if user in self.servers else "the server is gone"

    async def stop_server(self, user, server_name):
        self.stopped.append(user)
        self.servers.pop(user, None)
        return True


@pytest.fixture
def course_budget(acct):
    acct.ensure_budget(COURSE, "community", 1000, kind="course")


async def test_scheduler_starts_every_seat_with_bounded_concurrency(schedule, clock, course_budget):
    students = [f"u{i:02d}" for i in range(12)]
    hub = FakeHub([*students, "ivy"], PROPS)
    scheduler = CourseScheduler(schedule, hub, concurrency=3)
    info = plan(schedule, clock, minutes=60, start_in=5)
    await scheduler.tick()
    assert hub.spawned == []  # not due yet
    clock.advance(5 * 60)
    await scheduler.tick()
    await scheduler.settle()
    assert sorted(hub.spawned) == students and hub.most_in_flight == 3
    assert schedule.get(info.id).seats["ready"] == 12


async def test_scheduler_start_now_failures_restart_and_end(schedule, acct, clock, course_budget):
    hub = FakeHub(MEMBERS, PROPS)
    hub.fail = {"s03"}
    # s05 already runs other hardware, s04 the session's: one is replaced, one adopted
    hub.servers["s05"] = {"ready": True, "pending": None,
                          "user_options": {"class": "enterprise", "model": "h100", "count": 1,
                                           "group": "lab-vision"}}
    scheduler = CourseScheduler(schedule, hub, concurrency=2)
    info = plan(schedule, clock, minutes=60, start_in=60)
    hub.servers["s04"] = {"ready": True, "pending": None,
                          "user_options": info.user_options(to_datetime(clock()))}
    schedule.request_start(info.id)
    await scheduler.tick()
    await scheduler.settle()
    seats = {s.username: s for s in schedule.seats(info.id)}
    assert seats["s03"].state == "failed" and "no luck" in seats["s03"].error
    assert acct.reservation(seats["s03"].reservation_id).state == "closed"  # hold given back
    assert seats["s04"].state == "ready" and "s04" not in hub.spawned
    assert acct.reservation(seats["s04"].reservation_id).state == "closed"
    assert "s05" in hub.stopped and hub.servers["s05"]["user_options"]["class"] == "community"

    # a new scheduler (the service restarted) re-adopts: nothing is spawned twice
    schedule.mark_seat(info.id, "s01", "starting")
    again = CourseScheduler(schedule, hub, concurrency=2)
    before = list(hub.spawned)
    await again.tick()
    await again.settle()
    assert hub.spawned == before and schedule.seats(info.id)[1].state == "ready"

    clock.advance(120 * 60)  # "start now" keeps the planned end
    await again.tick()
    assert sorted(hub.stopped) == sorted(["s05", *STUDENTS])
    assert schedule.get(info.id).state == "ended" and hub.servers == {}


def test_same_hardware_compares_only_the_locked_fields():
    session = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": COURSE}
    assert same_hardware({**session, "hours": 3, "count": "1"}, session)
    assert not same_hardware({**session, "count": 2}, session)
    assert not same_hardware(None, session)


def test_end_time_survives_in_the_database(schedule, acct, clock, db):
    acct.ensure_budget(COURSE, "community", 100, kind="course")
    info = plan(schedule, clock, minutes=45)
    schedule.begin(info.id, MEMBERS, PROPS)
    fresh = CourseSchedule(Accounting(db, clock=clock), schedule.catalog, clock=clock)
    kept = fresh.get(info.id)
    assert kept.state == "running" and kept.ends_at - kept.starts_at == timedelta(minutes=45)
