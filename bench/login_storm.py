"""A lecture hall at the start of class: a login storm, picker pages and a burst of spawns.

Runs the same storm against two hubs started here, one after the other:

- ours: hybridhub's demo hub (jupyterhub_config.py, local backend, real servers, no simulated
  inventory), the students in the demo course ``course-ml101`` (its budget admits them);
- the peer: plain JupyterHub with ``SimpleLocalProcessSpawner`` (bench/peer_jupyterhub_config.py).

Both use JupyterHub's ``shared-password`` authenticator with the same students and password.
A storm: ``--students`` (200) students each log in through the login form, at evenly spread
moments within ``--window`` (30) seconds, then load the picker (ours: ``/hub/spawn``; the peer
has no picker, so its home page ``/hub/home``).  Then ``--spawns`` (30) of them start a server at
once (REST POST, 1 x RTX 4090 for ours) and each waits until it is ready (bounded by
``--spawn-timeout``).  Prints p50/p99 of login, page and spawn POST, spawns ready / refused 429 /
failed, time until the last server was ready, and the hub process's CPU seconds during the storm.

Targets (issue #14): our picker p99 <= 1.5 x the peer's home page p99 under the same storm;
0 failed spawns other than 429 at capacity.  Loopback only; every loop is bounded.

    PATH=.venv/bin:$PATH .venv/bin/python bench/login_storm.py [--students 200] [--spawns 30]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from portal.hubconfig import DEMO_USER_PASSWORD  # noqa: E402
from tests.fixtures.hub import Hub, _stop_user_processes  # noqa: E402

PEER_CONFIG = Path(__file__).resolve().parent / "peer_jupyterhub_config.py"
OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def students(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def in_course(names: list[str]) -> list[str]:
    """Config lines: the demo's hub groups, the students in its course ``course-ml101``."""
    return [
        "from portal.hubconfig import DEMO_GROUPS",
        "import copy",
        "_groups = copy.deepcopy(DEMO_GROUPS)",
        f"_groups['course-ml101']['users'] += {names!r}",
        "c.JupyterHub.load_groups = _groups",
    ]


def ours_config(names: list[str]) -> str:
    """The students join the demo course (whose budget admits them) and may log in."""
    return "\n".join([
        *in_course(names),
        f"c.Authenticator.allowed_users.update({names!r})",
        "c.JupyterHub.log_level = 'INFO'",
    ])


def peer_config(names: list[str], groups: bool = True) -> str:
    """The same authenticator, password and students on plain JupyterHub; with ``groups``, in
    the same hub groups as ours (JupyterHub's cookie auth loads a user's groups and their
    roles on every request, so membership has a cost of its own, ours or not)."""
    return "\n".join([
        *(in_course(names) if groups else []),
        "c.JupyterHub.authenticator_class = 'shared-password'",
        f"c.SharedPasswordAuthenticator.user_password = {DEMO_USER_PASSWORD!r}",
        f"c.Authenticator.allowed_users = set({names!r})",
        "c.JupyterHub.log_level = 'INFO'",
    ])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def student_visit(hub: Hub, user: str, page_path: str, at: float, out: dict, lock: threading.Lock) -> None:
    """Log ``user`` in through the form at monotonic time ``at``, then load ``page_path``."""
    time.sleep(max(0.0, at - time.monotonic()))
    s = requests.Session()
    try:
        t0 = time.perf_counter()
        form = s.get(f"{hub.url}/hub/login", timeout=60).text
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
        r = s.post(f"{hub.url}/hub/login", data={"username": user, "password": DEMO_USER_PASSWORD, "_xsrf": xsrf},
                   timeout=60, allow_redirects=False)
        login = time.perf_counter() - t0
        ok = r.status_code == 302
        t1 = time.perf_counter()
        page = s.get(f"{hub.url}{page_path}", timeout=60, allow_redirects=False)
        shown = time.perf_counter() - t1
        with lock:
            out["login"].append(login)
            out["page"].append(shown)
            if not ok or page.status_code != 200:
                out["errors"].append(f"{user}: login {r.status_code}, page {page.status_code}")
    except (requests.RequestException, AttributeError) as e:
        with lock:
            out["errors"].append(f"{user}: {type(e).__name__}: {e}")
    finally:
        s.close()


def spawn_one(hub: Hub, user: str, options: dict | None, timeout: float) -> tuple[float, str, float]:
    """(POST seconds, outcome, seconds until ready) of one student's spawn."""
    t0 = time.perf_counter()
    try:
        r = hub.spawn(user, options)
    except requests.RequestException as e:
        return time.perf_counter() - t0, f"error {type(e).__name__}", float("nan")
    posted = time.perf_counter() - t0
    if r.status_code == 429:
        return posted, "429", float("nan")
    if r.status_code not in (201, 202):
        return posted, f"failed {r.status_code}", float("nan")
    try:
        hub.wait_ready(user, timeout=timeout, interval=0.2)
    except (TimeoutError, AssertionError) as e:
        return posted, f"failed {type(e).__name__}", float("nan")
    return posted, "ready", time.perf_counter() - t0


def storm(hub: Hub, names: list[str], page_path: str, options: dict | None, args) -> dict:
    """One storm against ``hub``: logins and pages, then the spawn burst; the measurements."""
    out: dict = {"login": [], "page": [], "errors": []}
    lock = threading.Lock()
    cpu0, t0 = cpu_seconds(hub.proc.pid), time.monotonic()
    start = time.monotonic() + 0.5
    with ThreadPoolExecutor(max_workers=min(len(names), 64)) as pool:
        for i, user in enumerate(names):
            pool.submit(student_visit, hub, user, page_path, start + i * args.window / len(names), out, lock)
    out["storm_s"] = time.monotonic() - t0
    burst = names[: args.spawns]
    t1 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(burst)) as pool:
        results = list(pool.map(lambda u: spawn_one(hub, u, options, args.spawn_timeout), burst))
    out["burst_s"] = time.monotonic() - t1
    out["cpu_s"] = cpu_seconds(hub.proc.pid) - cpu0
    out["wall_s"] = time.monotonic() - t0
    out["post"] = [p for p, _, _ in results]
    out["ready"] = [t for _, outcome, t in results if outcome == "ready"]
    out["outcomes"] = [o for _, o, _ in results]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda u: _quietly(hub.stop_server, u), burst))
    return out


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:  # a server that never started; the report has its outcome
        print(f"  (cleanup: {type(e).__name__}: {e})", file=sys.stderr)


def summary(label: str, m: dict) -> None:
    outcomes = m["outcomes"]
    failed = [o for o in outcomes if o not in ("ready", "429")]
    print(f"{label}")
    print(f"  logins: {len(m['login'])} in {m['storm_s']:.1f} s, errors {len(m['errors'])}"
          + (f" (first: {m['errors'][0]})" if m["errors"] else ""))
    for key, name in (("login", "login"), ("page", "page"), ("post", "spawn POST")):
        v = m[key]
        print(f"  {name:<11} p50 {statistics.median(v) * 1000:8.1f} ms   p99 {pct(v, 0.99) * 1000:8.1f} ms   "
              f"max {max(v) * 1000:8.1f} ms   (n={len(v)})")
    ready = m["ready"]
    print(f"  spawns: {outcomes.count('ready')} ready, {outcomes.count('429')} refused 429, {len(failed)} failed"
          + (f" {sorted(set(failed))}" if failed else "")
          + (f"; ready p50 {statistics.median(ready):.1f} s, last {max(ready):.1f} s" if ready else ""))
    share = 100 * m["cpu_s"] / m["wall_s"]
    print(f"  hub CPU: {m['cpu_s']:.1f} s over {m['wall_s']:.1f} s ({share:.0f} % of one core)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=200, help="students who log in")
    parser.add_argument("--window", type=float, default=30.0, help="seconds over which they log in")
    parser.add_argument("--spawns", type=int, default=30, help="students who then start a server at once")
    parser.add_argument("--spawn-timeout", type=float, default=240.0, help="seconds a spawn may take to be ready")
    args = parser.parse_args()
    names = students(args.students)
    args.spawns = min(args.spawns, len(names))
    results = {}
    with tempfile.TemporaryDirectory(prefix="hh-storm-") as tmp:
        root = Path(tmp)
        runs = (
            ("ours: hybridhub, picker /hub/spawn", "ours", {"extra_config": ours_config(names)}, "/hub/spawn", OPTIONS),
            ("peer: plain JupyterHub, home /hub/home, students in the same groups", "peer",
             {"extra_config": peer_config(names), "config_file": PEER_CONFIG}, "/hub/home", None),
            ("peer: plain JupyterHub, home /hub/home, students in no group", "peer-bare",
             {"extra_config": peer_config(names, groups=False), "config_file": PEER_CONFIG}, "/hub/home", None),
        )
        for label, name, kwargs, page_path, options in runs:
            (root / name).mkdir()
            hub = Hub(root / name, **kwargs)
            try:
                hub.start()
                results[label] = storm(hub, names, page_path, options, args)
            finally:
                hub.stop()
                _stop_user_processes(root / name)
    print(f"\n== login storm: {args.students} students within {args.window:.0f} s, then {args.spawns} spawns at once")
    for label, m in results.items():
        summary(label, m)
    (_, ours), (_, peer), (_, bare) = results.items()
    ratio = pct(ours["page"], 0.99) / pct(peer["page"], 0.99)
    failed = [o for o in ours["outcomes"] if o not in ("ready", "429")]
    print(f"ratio picker p99 / plain home p99, same groups: {ratio:.2f}  "
          f"(target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})")
    print(f"ratio picker p99 / plain home p99, students in no group: "
          f"{pct(ours['page'], 0.99) / pct(bare['page'], 0.99):.2f}")
    print(f"failed spawns other than 429: {len(failed)}  (target 0: {'ok' if not failed else 'MISSED'})")
    return 0 if ratio <= 1.5 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
