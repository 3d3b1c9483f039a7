"""What the spawn benchmarks share: timing a spawn through a hub, the floor server's boot to its
first answer, interleaved rounds of every kind and the report (medians, samples, spread, ratios)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import requests

from tests.fixtures.hub import Hub


def runs_from_args(doc: str, extra: list[tuple[str, str]] | None = None):
    """The ``--runs`` argument of a benchmark described by ``doc`` (its module docstring).

    With ``extra`` (flag, help) switches, the parsed arguments instead (``.runs`` and one bool per flag).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds; each measures every kind once (>= 5)")
    for flag, text in extra or []:
        parser.add_argument(flag, action="store_true", help=text)
    args = parser.parse_args()
    return args if extra else args.runs


def through_hub(hub: Hub, user: str, options: dict | None) -> float:
    """Seconds from POST spawn to the hub reporting the server ready (REST only), then stop it.

    The POST itself answers 201 once the server is ready and routed when that takes less than the
    hub's ``slow_spawn_timeout`` (10 s); a 202 is followed by polling the user's model.
    """
    t0 = time.perf_counter()
    r = hub.spawn(user, options)
    if r.status_code not in (201, 202):
        errors = [ln for ln in hub.log().splitlines() if ln.startswith(("[E ", "[W ", "Traceback", "  ", "    "))]
        raise AssertionError(f"spawn answered {r.status_code}: {r.text}\n" + "\n".join(errors[-60:]))
    if r.status_code == 202:
        hub.wait_ready(user, interval=0.01)
    elapsed = time.perf_counter() - t0
    hub.stop_server(user)
    return elapsed


def singleuser_env(hub: Hub, port: int) -> dict[str, str]:
    """The hub's environment for a single-user server ``bench`` started by hand on ``port``."""
    return {
        "JUPYTERHUB_API_TOKEN": hub.token,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/bench/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}/user/bench/",
        "JUPYTERHUB_USER": "bench",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bench",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/bench/oauth_callback",
    }


def seconds_to_first_answer(
    port: int, t0: float, check: Callable[[], None] | None = None, path: str = "/user/bench/api",
    headers: dict[str, str] | None = None, interval: float = 0.01, host: str = "127.0.0.1",
) -> float:
    """Seconds since ``t0`` until the server on ``host:port`` answers ``path`` (any status); ``check`` may raise."""
    while True:
        if check is not None:
            check()
        try:
            requests.get(f"http://{host}:{port}{path}", headers=headers, timeout=1)
            return time.perf_counter() - t0
        except requests.ConnectionError:
            time.sleep(interval)


def interleaved(runs: int, kinds: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """One warm-up of each kind, then ``runs`` rounds measuring each kind once, in order.

    Rounds rather than blocks: load from other work on the machine, caches and drift hit every kind alike.
    """
    for run in kinds.values():
        run()  # warm-up: imports, page cache, first database connections
    times: dict[str, list[float]] = {label: [] for label in kinds}
    for i in range(runs):
        for label, run in kinds.items():
            times[label].append(run())
        print(f"round {i + 1}/{runs}: " + ", ".join(f"{lb.split(':')[0]} {t[-1]:.2f}" for lb, t in times.items()),
              flush=True)
    return times


def spread(times: list[float]) -> float:
    """Slowest over fastest sample."""
    return max(times) / min(times)


def report(
    header: str,
    times: dict[str, list[float]],
    ratios: list[tuple[str, str, float]],
    spread_target: float | None = None,
) -> None:
    """Print each kind's median, spread and samples, then each ratio of medians with its target.

    ``ratios`` holds (numerator label, denominator label, target: the ratio must be <= it).
    """
    print(header)
    width = max(map(len, times)) + 1
    for label, ts in times.items():
        samples = ", ".join(f"{t:.2f}" for t in ts)
        target = f" (target <= {spread_target})" if spread_target else ""
        print(f"{label + ':':<{width}} median {statistics.median(ts):.3f} s  spread {spread(ts):.2f}{target}"
              f"  samples ({samples})")
    for num, den, target in ratios:
        r = statistics.median(times[num]) / statistics.median(times[den])
        verdict = "ok" if r <= target else "MISSED"
        print(f"ratio {num.split(':')[0]} / {den.split(':')[0]}: {r:.2f}  (target <= {target}: {verdict})")


#: Hub DEBUG-log lines that mark a spawn's events (JupyterHub 5/6 wording; a local server's own lines land in
#: the hub's log because it inherits the hub's stdout).  The first one starts a spawn.
SPAWN_MARKS = (
    ("POST handled", "Checking access to /hub/api/users/{user}/server via scope start:servers"),
    ("spawn initiated", "Initiating spawn for {user}"),
    ("token, oauth client made; start()", "Calling Spawner.start for {user}"),
    ("server process started", "Spawning "),
    ("start() returned", "Polling subprocess every"),
    ("server listening", "is running at:"),
    ("hub's readiness check passed", "responded in"),
    ("proxy route added, 201 sent", "201 POST /hub/api/users/{user}/server"),
)


def _stamp(line: str) -> float | None:
    """Seconds of the day of a JupyterHub or ServerApp log line (``[D 2026-12-02 02:28:36.586 ...``)."""
    import re

    m = re.match(r"\[\w \d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d\.\d+)", line)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def spawn_events(log: str, user: str) -> list[dict[str, float]]:
    """Per complete spawn of ``user`` in a hub's log: seconds from the POST to each event of :data:`SPAWN_MARKS`."""
    marks = [(name, text.format(user=user)) for name, text in SPAWN_MARKS]
    spawns, current, t0 = [], None, 0.0
    for line in log.splitlines():
        t = _stamp(line)
        if t is None:
            continue
        if marks[0][1] in line:
            current, t0 = {marks[0][0]: 0.0}, t
            continue
        if current is None:
            continue
        for name, text in marks[1:]:
            if text in line and name not in current:
                current[name] = t - t0
                break
        if len(current) == len(marks):
            spawns.append(current)
            current = None
    return spawns


def report_events(label: str, spawns: list[dict[str, float]]) -> None:
    """Median seconds from the POST to each event, in the order they happen, and the step from the one before."""
    if not spawns:
        print(f"{label}: no complete spawn found in the hub's log")
        return
    print(f"{label}: {len(spawns)} spawns in the hub's DEBUG log (warm-up included), median ms after the POST")
    medians = {name: statistics.median(s[name] for s in spawns) for name in spawns[0]}
    prev = 0.0
    for name, m in sorted(medians.items(), key=lambda kv: kv[1]):
        vals = [s[name] for s in spawns]
        lo, hi = min(vals) * 1000, max(vals) * 1000
        print(f"  {name:<36} {m * 1000:7.0f}  (+{(m - prev) * 1000:5.0f})   range {lo:.0f}..{hi:.0f}")
        prev = m
    # what the hub adds around the server's own boot, free of the boot's noise: before the process starts,
    # and from the server listening to the 201 (readiness check, back-off, proxy route)
    before = [s["server process started"] for s in spawns]
    after = [s["proxy route added, 201 sent"] - s["server listening"] for s in spawns]
    for what, vals in (("POST to server process started", before), ("server listening to 201", after)):
        print(f"  {what}: median {statistics.median(vals) * 1000:.0f} ms, samples "
              + ", ".join(f"{v * 1000:.0f}" for v in vals))
