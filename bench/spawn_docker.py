"""Spawn latency on the docker backend: through the hub vs a plain ``docker run``.

Measures, in the same run and interleaved: (a) the floor, ``docker run`` of the same image
and command to its first answered request; (b) the peer, plain JupyterHub + DockerSpawner on
the same engine (bench/peer_dockerspawner_config.py); (c) hybridhub, POST
/hub/api/users/<u>/server to ``ready`` (jupyterhub_config.py with every class on the docker
backend, GPU hosts = local Docker Engines from scripts/docker-engines.sh).
Then 20 concurrent launches of 1 x H100 onto a host with 8: wall-clock time and
how many succeeded (8 expected; the rest answered 429 with Retry-After).

    scripts/docker-engines.sh start
    .venv/bin/python bench/spawn_docker.py [--runs 7]
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (  # noqa: E402
    interleaved,
    report,
    runs_from_args,
    seconds_to_first_answer,
    singleuser_env,
    through_hub,
)
from tests.fixtures.docker import (  # noqa: E402
    TEST_IMAGE,
    Engines,
    engine_url,
    h100_host,
    host_binds,
    hub_docker_config,
    remove_labelled,
    run_script,
    singleuser_cmd,
)
from tests.fixtures.hub import Hub, free_port  # noqa: E402

OPTIONS = {"class": "enterprise", "model": "h100", "count": 1, "hours": 1, "group": "course-ml101"}
CONCURRENT = 20
FLOOR, PEER, OURS = ("a: plain docker run to first answer", "b: plain JupyterHub + DockerSpawner",
                     "c: hybridhub spawn (docker)")
PEER_CONFIG = Path(__file__).resolve().parent / "peer_dockerspawner_config.py"


def plain_docker_run(hub: Hub, engine: str) -> float:
    """Seconds from ``docker run`` of the same image and command to its first answer."""
    port = free_port()
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    env = {**singleuser_env(hub, port), "HOME": "/home/jovyan"}
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
        return seconds_to_first_answer(port, t0)
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
    runs = runs_from_args(__doc__)
    run_script("start")
    engines = Engines({n: engine_url(n) for n in ("h1", "h2", "swarm")})
    label = f"bench-{uuid.uuid4().hex[:6]}"
    hosts = [h100_host(engines.urls["h1"])]
    users = [f"load{i:02d}" for i in range(CONCURRENT)]
    with tempfile.TemporaryDirectory(prefix="hh-bench-docker-") as tmp:
        (Path(tmp) / "ours").mkdir()
        (Path(tmp) / "peer").mkdir()
        hub = Hub(Path(tmp) / "ours", extra_config=hub_docker_config(hosts, hub_label=label, users=users))
        peer_env = {"image": TEST_IMAGE, "engine": engines.urls["h1"], "binds": host_binds(),
                    "cmd": singleuser_cmd(), "port": free_port()}
        peer = Hub(Path(tmp) / "peer", config_file=PEER_CONFIG,
                   env={"HYBRIDHUB_BENCH_DOCKER": json.dumps(peer_env)})
        try:
            hub.start()
            peer.start()
            times = interleaved(runs, {
                FLOOR: lambda: plain_docker_run(hub, engines.urls["h1"]),
                PEER: lambda: through_hub(peer, "alice", None),
                OURS: lambda: through_hub(hub, "alice", OPTIONS),
            })
            wall, ok, codes = concurrent_launches(hub, users)
        finally:
            for h in (hub, peer):
                h.stop()
            remove_labelled(engines, label)
    report(f"rounds: {runs} (a, b, c each), interleaved, same engine", times,
           [(OURS, FLOOR, 1.10), (OURS, PEER, 1.0), (PEER, FLOOR, float("inf"))], spread_target=1.3)
    print(
        f"{CONCURRENT} concurrent launches of 1 x H100 onto 8 GPUs: wall {wall:.2f} s, "
        f"{ok} succeeded, status codes {codes}"
    )


if __name__ == "__main__":
    main()
