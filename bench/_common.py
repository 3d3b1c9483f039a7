"""What the spawn benchmarks share: timing a spawn through a hub, the floor server's boot to its
first answer, interleaved rounds of every kind and the report (medians, samples, spread, ratios)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import requests

from tests.fixtures.hub import Hub


def runs_from_args(doc: str) -> int:
    """The ``--runs`` argument of a benchmark described by ``doc`` (its module docstring)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds; each measures every kind once (>= 5)")
    return parser.parse_args().runs


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
    headers: dict[str, str] | None = None, interval: float = 0.01,
) -> float:
    """Seconds since ``t0`` until the server on ``port`` answers ``path`` (any status); ``check`` may raise."""
    while True:
        if check is not None:
            check()
        try:
            requests.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=1)
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
