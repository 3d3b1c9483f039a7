"""Course sessions through a real hub (tests.fixtures.hub): 30 students on the local
backend and 10 on the docker backend, started by the scheduler with a token holding only
its service scopes; the locked hardware, a late joiner, warnings, a hub restart mid-session
and the end.  The scheduler runs in the test's loop with a fake clock, so the warnings
and the end come without sleeping; the portal test uses the real managed scheduler."""

from __future__ import annotations

import secrets
import time
import uuid
from collections import Counter

import pytest
import requests
from sqlalchemy import select

from hybridhub.accounting.courses import END_REASON, CourseSchedule
from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Reservation
from hybridhub.catalog import load_catalog
from hybridhub.hubapi import HubApi
from hybridhub.services.course_scheduler import SERVICE_SCOPES, CourseScheduler
from tests.fixtures.courses import make_course, servers, stop_all_servers, wait_seats_requested
from tests.fixtures.db import FakeClock
from tests.fixtures.hub import Hub, hub_factory, hub_prereqs  # noqa: F401  (fixtures)

RTX = {"class": "community", "model": "rtx4090", "count": 1}
H100 = {"class": "enterprise", "model": "h100", "count": 1}
NO_MANAGED_SCHEDULER = {"HYBRIDHUB_COURSE_SCHEDULER": "0"}


def scheduler_config(token: str) -> str:
    """Extra hub config: a test service holding the scheduler's scopes (the hub is started
    with ``HYBRIDHUB_COURSE_SCHEDULER=0``, so the managed one does not run beside it)."""
    return (
        f"c.JupyterHub.services.append({{'name': 'test-courses', 'api_token': {token!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'test-courses', 'services': ['test-courses'],"
        f" 'scopes': {list(SERVICE_SCOPES)!r}}})\n"
    )


def make_scheduler(hub: Hub, token: str, acct: Accounting, clock, concurrency=5, **kw):
    schedule = CourseSchedule(acct, load_catalog(backend_override="local"), clock=clock)
    return CourseScheduler(schedule, HubApi(hub.api_url, token), concurrency=concurrency,
                           start_timeout=180, **kw)


def closed_reasons(acct: Accounting, users: list[str]) -> Counter:
    """How the users' reservations stand: ``(state, close_reason)`` counted."""
    with acct.db.session() as s:
        rows = s.scalars(select(Reservation).where(Reservation.username.in_(users)))
        return Counter((r.state, r.close_reason) for r in rows)


@pytest.fixture
def course_hub(hub_factory):  # noqa: F811  (fixture imported above)
    token = secrets.token_hex(16)
    hub = hub_factory(extra_config=scheduler_config(token), env=NO_MANAGED_SCHEDULER)
    hub.scheduler_token = token
    yield hub
    stop_all_servers(hub)


async def test_thirty_students_on_the_local_backend(course_hub, caplog):
    hub = course_hub
    students = [f"stu{i:02d}" for i in range(30)]
    acct = make_course(hub, "course-big", students, resource_class="community", hours=100,
                       instructors=["prof"])
    clock = FakeClock(time.time())
    scheduler = make_scheduler(hub, hub.scheduler_token, acct, clock, concurrency=5)
    info = scheduler.schedule.create(group="course-big", resource_class="community",
                                     model="rtx4090", count=1, starts_at=clock() + 60,
                                     ends_at=clock() + 60 + 1800, title="Exam")
    await scheduler.tick()
    assert servers(hub, students) == dict.fromkeys(students)  # not due yet

    clock.advance(60)
    t0 = time.monotonic()
    await scheduler.tick()
    await scheduler.settle()
    took = time.monotonic() - t0
    running = servers(hub, students)
    assert all(m and m["ready"] for m in running.values()), running
    assert {m["user_options"]["class"] for m in running.values()} == {"community"}
    assert servers(hub, ["prof"]) == {"prof": None}  # the instructor gets no seat
    assert scheduler.schedule.get(info.id).seats["ready"] == 30
    print(f"30 session servers ready in {took:.1f} s")

    # the session's server cannot move to other hardware: 403 naming the session
    hub.stop_server("stu00")
    r = hub.spawn("stu00", {**H100, "hours": 1, "group": "course-big"})
    assert r.status_code == 403, r.text
    assert "'Exam' (course-big" in r.json()["message"]
    # a student who comes back (no options: the hub page skips the picker) gets the session's
    r = hub.spawn("stu00", None)
    assert r.status_code in (201, 202), r.text
    assert hub.wait_ready("stu00")["user_options"]["model"] == "rtx4090"

    # 10 and 2 minutes before the end: recorded once, on the banner, in the log
    clock.advance(1800 - 600)
    await scheduler.tick()
    home = hub.signed_in("stu05").get(f"{hub.url}/hub/home", timeout=30)
    assert "ends at" in home.text and "in 10 minutes" in home.text and "Exam" in home.text
    clock.advance(8 * 60)
    await scheduler.tick()
    assert "in 2 minutes" in " ".join(r.getMessage() for r in caplog.records)

    # the hub restarts mid-session: servers re-adopted, the end time kept, nothing respawned
    hub.restart()
    again = make_scheduler(hub, hub.scheduler_token, Accounting(Database(hub.db_url)), clock)
    await again.tick()
    await again.settle()
    assert all(m and m["ready"] for m in servers(hub, students).values())
    kept = again.schedule.get(info.id)
    assert kept.state == "running" and kept.ends_at == info.ends_at

    clock.advance(2 * 60)
    await again.tick()
    for user in students:
        hub.wait_stopped(user, timeout=60)
    assert again.schedule.get(info.id).state == "ended"
    # stu00's first server was stopped by hand; every server running at the end is closed
    assert closed_reasons(acct, students) == {("closed", END_REASON): 30, ("closed", "stopped"): 1}


@pytest.mark.docker
async def test_ten_students_on_the_docker_backend(hub_factory, docker_engines):  # noqa: F811
    from tests.fixtures.docker import fake_gpus, hub_docker_config, remove_labelled

    label = f"course-{uuid.uuid4().hex[:6]}"
    hosts = [{"name": n, "url": docker_engines.urls[n], "class": "enterprise",
              "gpus": fake_gpus(n, "NVIDIA H100 80GB HBM3", 6)} for n in ("h1", "h2")]
    token = secrets.token_hex(16)
    hub = hub_factory(extra_config=hub_docker_config(hosts, hub_label=label)
                      + scheduler_config(token), env=NO_MANAGED_SCHEDULER)
    try:
        students = [f"dk{i:02d}" for i in range(10)]
        acct = make_course(hub, "course-gpu", students, resource_class="enterprise", hours=50)
        clock = FakeClock(time.time())
        scheduler = make_scheduler(hub, token, acct, clock, concurrency=4)
        info = scheduler.schedule.create(group="course-gpu", resource_class="enterprise",
                                         model="h100", count=1, starts_at=clock(),
                                         ends_at=clock() + 3600, title="GPU lab")
        await scheduler.tick()
        await scheduler.settle()
        running = servers(hub, students)
        assert all(m and m["ready"] for m in running.values()), (running, hub.log()[-3000:])
        containers = docker_engines.client("h1").containers() + docker_engines.client("h2").containers()
        mine = [c for c in containers if c["Labels"].get("hybridhub.hub") == label]
        assert len(mine) == 10
        clock.advance(3600)
        await scheduler.tick()
        for user in students:
            hub.wait_stopped(user, timeout=60)
        assert scheduler.schedule.get(info.id).state == "ended"
        assert closed_reasons(acct, students) == {("closed", END_REASON): 10}
    finally:
        stop_all_servers(hub)
        hub.stop()
        remove_labelled(docker_engines, label)


def test_portal_start_now_refuses_with_numbers_then_starts_the_class(hub_factory, request):  # noqa: F811
    """The managed scheduler service and the portal's REST API, as an instructor uses them."""
    hub = hub_factory(env={"HYBRIDHUB_COURSE_INTERVAL": "0.5"})
    request.addfinalizer(lambda: stop_all_servers(hub))
    portal = f"{hub.url}/services/hybridhub-portal/api/courses"
    ivy = {"Authorization": f"token {hub.user_token('ivy')}"}
    alice = {"Authorization": f"token {hub.user_token('alice')}"}
    now = time.time()
    window = {"starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7200)),
              "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 7200 + 1800))}
    # 8 H100s each for half an hour: 2 x 8 x 0.5 x weight 4 = 32 h, the budget has 10
    r = requests.post(portal, headers=ivy, timeout=30, json={
        "group": "course-ml101", **H100, "count": 8, "title": "Too big", **window})
    assert r.status_code == 201, r.text
    big = r.json()
    assert big["state"] == "scheduled" and big["created_by"] == "ivy"
    r = requests.post(portal, headers=alice, timeout=30, json={
        "group": "course-ml101", **RTX, **window})
    assert r.status_code == 403, r.text  # a student may not schedule

    r = requests.post(f"{portal}/{big['id']}/start", headers=ivy, timeout=60)
    assert r.status_code == 409, r.text
    body = r.json()
    assert (body["students"], body["fit"]) == (2, 0) and "covers 0 of 2 students" in body["message"]
    assert hub.server_model("alice") is None and hub.server_model("bob") is None
    requests.post(f"{portal}/{big['id']}/cancel", headers=ivy, timeout=30).raise_for_status()

    r = requests.post(portal, headers=ivy, timeout=30, json={
        "group": "course-ml101", **RTX, "title": "Lab 1", **window})
    assert r.status_code == 201, r.text
    lab = r.json()
    r = requests.post(f"{portal}/{lab['id']}/start", headers=ivy, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "running" and r.json()["seats"]["pending"] + r.json()["seats"][
        "starting"] + r.json()["seats"]["ready"] == 2
    wait_seats_requested(hub, f"{portal}/{lab['id']}", ivy)  # on the scheduler's next tick
    for user in ("alice", "bob"):
        assert hub.wait_ready(user, timeout=120)["user_options"]["group"] == "course-ml101"
    assert hub.server_model("ivy") is None
    seen = requests.get(f"{portal}/{lab['id']}", headers=alice, timeout=30).json()
    assert seen["title"] == "Lab 1" and "seat_list" not in seen

    r = requests.post(f"{portal}/{lab['id']}/end", headers=ivy, timeout=30)
    assert r.status_code == 200, r.text
    for user in ("alice", "bob"):
        hub.wait_stopped(user, timeout=60)
    deadline = time.monotonic() + 30
    while requests.get(f"{portal}/{lab['id']}", headers=ivy, timeout=30).json()["state"] != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
