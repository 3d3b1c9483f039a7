"""Spawn latency on the docker backend: through the hub vs a plain ``docker run``.

Measures, in the same run and interleaved, (a) POST /hub/api/users/<u>/server to
``ready`` through a real hub (jupyterhub_config.py with every class on the docker
backend, GPU hosts = local Docker Engines from scripts/docker-engines.sh), and
(b) ``docker run`` of the same image and command to its first answered request.
Then 20 concurrent launches of 1 x H100 onto a host with 8: wall-clock time and
how many succeeded (8 expected; the rest answered 429 with Retry-After).

    scripts/docker-engines.sh start
    .venv/bin/python bench/spawn_docker.py [--runs 7]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.docker import (  # noqa: E402
    DATA,
    TEST_IMAGE,
    Engines,
    engine_url,
    host_binds,
    hub_docker_config,
    remove_labelled,
    run_script,
    singleuser_cmd,
)
from tests.fixtures.hub import Hub, free_port  # noqa: E402

OPTIONS = {"class": "enterprise", "model": "h100", "count": 1, "hours": 1, "group": "course-ml101"}
CONCURRENT = 20


def through_hub(hub: Hub, user: str) -> float:
    """Seconds from POST spawn to the hub reporting the server ready."""
    t0 = time.perf_counter()
    r = hub.spawn(user, OPTIONS)
    assert r.status_code in (201, 202), r.text
    if r.status_code == 202:
        hub.wait_ready(user, interval=0.01)
    elapsed = time.perf_counter() - t0
    hub.stop_server(user)
    return elapsed


def plain_docker_run(hub: Hub, engine: str) -> float:
    """Seconds from ``docker run`` of the same image and command to its first answer."""
    port = free_port()
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    env = {
        "JUPYTERHUB_API_TOKEN": hub.token,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/bench/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}/user/bench/",
        "JUPYTERHUB_USER": "bench",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bench",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/bench/oauth_callback",
        "HOME": "/home/jovyan",
    }
    cmd = [
        "docker",
        "-H",
        engine,
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--tmpfs",
        "/tmp",
        "-v",
        f"{name}:/home/jovyan",
    ]
    for src, dst in host_binds().items():
        cmd += ["-v", f"{src}:{dst}:ro"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    cmd += [TEST_IMAGE, *singleuser_cmd(), "--allow-root", "--ip=127.0.0.1", f"--port={port}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/user/bench/api", timeout=1)
                return time.perf_counter() - t0
            except requests.ConnectionError:
                time.sleep(0.01)
    finally:
        subprocess.run(["docker", "-H", engine, "rm", "-f", name], stdout=subprocess.DEVNULL)
        subprocess.run(
            ["docker", "-H", engine, "volume", "rm", "-f", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def concurrent_launches(hub: Hub, users: list[str]) -> tuple[float, int, dict[int, int]]:
    """Launch ``users`` at once; wall-clock until every launch is ready or refused."""

    def launch(user: str) -> int:
        r = hub.spawn(user, {**OPTIONS, "group": "lab-vision"})
        if r.status_code == 202:
            hub.wait_ready(user, timeout=180)
            return 201
        return r.status_code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        codes = list(pool.map(launch, users))
    wall = time.perf_counter() - t0
    counts: dict[int, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    for user, code in zip(users, codes, strict=True):
        if code == 201:
            hub.stop_server(user)
    return wall, counts.get(201, 0), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measurements of each kind (>= 5)")
    args = parser.parse_args()
    run_script("start")
    engines = Engines({n: engine_url(n) for n in ("h1", "h2", "swarm")})
    label = f"bench-{uuid.uuid4().hex[:6]}"
    hosts = [
        {
            "name": "h1",
            "url": engines.urls["h1"],
            "class": "enterprise",
            "nvidia_smi_file": str(DATA / "nvidia-smi-8xh100.csv"),
        }
    ]
    users = [f"load{i:02d}" for i in range(CONCURRENT)]
    with tempfile.TemporaryDirectory(prefix="hh-bench-docker-") as tmp:
        hub = Hub(Path(tmp), extra_config=hub_docker_config(hosts, hub_label=label, users=users))
        hub.start()
        try:
            through_hub(hub, "alice")  # warm-up
            plain_docker_run(hub, engines.urls["h1"])
            hub_times, plain_times = [], []
            for _ in range(args.runs):
                plain_times.append(plain_docker_run(hub, engines.urls["h1"]))
                hub_times.append(through_hub(hub, "alice"))
            wall, ok, codes = concurrent_launches(hub, users)
        finally:
            hub.stop()
            remove_labelled(engines, label)
    h, p = statistics.median(hub_times), statistics.median(plain_times)
    print(f"runs: {args.runs} each, interleaved, same engine")
    plain_all = ", ".join(f"{t:.2f}" for t in plain_times)
    hub_all = ", ".join(f"{t:.2f}" for t in hub_times)
    print(f"plain docker run to first answer: median {p:.3f} s  ({plain_all})")
    print(f"hub POST spawn to ready (docker): median {h:.3f} s  ({hub_all})")
    print(f"ratio hub / plain docker run: {h / p:.2f}  (target <= 1.2)")
    print(
        f"{CONCURRENT} concurrent launches of 1 x H100 onto 8 GPUs: wall {wall:.2f} s, "
        f"{ok} succeeded, status codes {codes}"
    )


if __name__ == "__main__":
    main()
