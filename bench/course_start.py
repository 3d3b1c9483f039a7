"""A class of 30 on the local backend: course "start now" vs 30 direct REST spawns.

Same hub, same run, same 30 users: (a) 30 concurrent ``POST /hub/api/users/<u>/server``
(one thread each, nothing bounding them) until the hub reports all 30 ready; then (b)
the course way: a session scheduled in the portal, "start now" through the portal's REST
API, the managed scheduler service admitting the class and starting every server (at
most ``--concurrency`` in flight) until all 30 are ready.  Each is timed from the first
request to the last server ready; servers are stopped between runs.  Prints both times
and the ratio course / direct (target <= 1.1).

    .venv/bin/python bench/course_start.py [--students 30] [--rounds 1] [--concurrency 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.courses import all_ready, make_course, servers  # noqa: E402
from tests.fixtures.hub import Hub  # noqa: E402

GROUP = "course-bench"
OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": GROUP}


def wait_all(hub: Hub, users: list[str], timeout: float = 600) -> None:
    """Poll the hub until every user's server is ready."""
    deadline = time.monotonic() + timeout
    while not all_ready(hub, users):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all ready: {servers(hub, users)}\n{hub.log()[-3000:]}")
        time.sleep(0.1)


def stop_all(hub: Hub, users: list[str]) -> None:
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(hub.stop_server, users))


def direct(hub: Hub, users: list[str]) -> float:
    """Seconds until all are ready, every spawn POSTed at once."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(users)) as pool:
        codes = list(pool.map(lambda u: hub.spawn(u, OPTIONS).status_code, users))
    assert set(codes) <= {201, 202}, codes
    wait_all(hub, users)
    elapsed = time.perf_counter() - t0
    stop_all(hub, users)
    return elapsed


def course(hub: Hub, users: list[str], admin_token: str) -> float:
    """Seconds from "start now" in the portal until all are ready."""
    portal = f"{hub.url}/services/hybridhub-portal/api/courses"
    headers = {"Authorization": f"token {admin_token}"}
    start = time.time() + 3600
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    r = requests.post(portal, headers=headers, timeout=60, json={
        "group": GROUP, **{k: OPTIONS[k] for k in ("class", "model", "count")},
        "starts_at": time.strftime(fmt, time.gmtime(start)),
        "ends_at": time.strftime(fmt, time.gmtime(start + 1800))})
    r.raise_for_status()
    session = r.json()["id"]
    t0 = time.perf_counter()
    r = requests.post(f"{portal}/{session}/start", headers=headers, timeout=60)
    assert r.status_code in (200, 202), r.text
    wait_all(hub, users)
    elapsed = time.perf_counter() - t0
    requests.post(f"{portal}/{session}/end", headers=headers, timeout=60).raise_for_status()
    for user in users:
        hub.wait_stopped(user, timeout=120)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30, help="class size")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each kind")
    parser.add_argument("--concurrency", type=int, default=5,
                        help="session servers the scheduler starts at once")
    args = parser.parse_args()
    users = [f"bench{i:02d}" for i in range(args.students)]
    with tempfile.TemporaryDirectory(prefix="hh-course-bench-") as tmp:
        hub = Hub(Path(tmp), env={"HYBRIDHUB_COURSE_INTERVAL": "0.5",
                                  "HYBRIDHUB_COURSE_CONCURRENCY": str(args.concurrency),
                                  "HYBRIDHUB_METER_INTERVAL": "3600"}).start()
        try:
            make_course(hub, GROUP, users, resource_class="community", hours=10_000)
            admin_token = hub.user_token("admin")
            hub.spawn(users[0], OPTIONS)  # warm-up: first import of the single-user stack
            hub.wait_ready(users[0], timeout=120)
            hub.stop_server(users[0])
            direct_times, course_times = [], []
            for _ in range(args.rounds):
                direct_times.append(direct(hub, users))
                course_times.append(course(hub, users, admin_token))
        finally:
            hub.stop()
    d, c = statistics.median(direct_times), statistics.median(course_times)
    print(f"students: {args.students}, rounds: {args.rounds}, scheduler concurrency: "
          f"{args.concurrency}")
    print(f"direct: {args.students} concurrent REST spawns to all ready: median {d:.1f} s "
          f"({', '.join(f'{t:.1f}' for t in direct_times)})")
    print(f"course: 'start now' to all ready:                 median {c:.1f} s "
          f"({', '.join(f'{t:.1f}' for t in course_times)})")
    print(f"ratio course / direct: {c / d:.2f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
