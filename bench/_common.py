"""What the spawn benchmarks share: timing a spawn through the hub, the baseline server's
environment and first answer, the interleaved measurement and the median/ratio report."""

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
    parser.add_argument("--runs", type=int, default=7, help="measurements of each kind (>= 5)")
    return parser.parse_args().runs


def through_hub(hub: Hub, user: str, options: dict) -> float:
    """Seconds from POST spawn to the hub reporting the server ready."""
    t0 = time.perf_counter()
    r = hub.spawn(user, options)
    assert r.status_code in (201, 202), r.text
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


def seconds_to_first_answer(port: int, t0: float, check: Callable[[], None] | None = None) -> float:
    """Seconds since ``t0`` until the server ``bench`` on ``port`` answers; ``check`` may raise."""
    while True:
        if check is not None:
            check()
        try:
            requests.get(f"http://127.0.0.1:{port}/user/bench/api", timeout=1)
            return time.perf_counter() - t0
        except requests.ConnectionError:
            time.sleep(0.01)


def interleaved(
    runs: int, hub_run: Callable[[], float], baseline_run: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """One warm-up of each, then ``runs`` of each, alternating: (hub times, baseline times)."""
    hub_run()  # warm-up
    baseline_run()
    hub_times, baseline_times = [], []
    for _ in range(runs):
        baseline_times.append(baseline_run())
        hub_times.append(hub_run())
    return hub_times, baseline_times


def report(
    header: str,
    baseline: tuple[str, list[float]],
    hub: tuple[str, list[float]],
    ratio: str,
    target: float,
) -> None:
    """Print both medians with every measurement, and the ratio hub / baseline."""
    print(header)
    width = max(len(baseline[0]), len(hub[0])) + 1
    for label, times in (baseline, hub):
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{label + ':':<{width}} median {statistics.median(times):.3f} s  ({runs})")
    h, b = statistics.median(hub[1]), statistics.median(baseline[1])
    print(f"ratio {ratio}: {h / b:.2f}  (target <= {target})")
