"""Spawn latency on the local backend: through the hub vs jupyterhub-singleuser alone.

Measures, in the same run and interleaved, (a) POST /hub/api/users/<u>/server to
``ready`` through a real hub running jupyterhub_config.py, and (b) starting
``jupyterhub-singleuser`` by itself to its first answered request.  Prints both
medians and the ratio (target <= 1.15).

    .venv/bin/python bench/spawn_local.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.hub import VENV_BIN, Hub, free_port  # noqa: E402

OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


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


def singleuser_alone(hub: Hub, workdir: Path) -> float:
    """Seconds from starting jupyterhub-singleuser to its first answered request."""
    port = free_port()
    home = workdir / "bench-home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTERHUB_API_TOKEN": hub.token,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/bench/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}/user/bench/",
        "JUPYTERHUB_USER": "bench",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bench",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/bench/oauth_callback",
    }
    cmd = [str(VENV_BIN / "jupyterhub-singleuser"), "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--notebook-dir={home}", "--SingleUserNotebookApp.default_url=/lab"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterhub-singleuser exited with {proc.returncode}")
            try:
                requests.get(f"http://127.0.0.1:{port}/user/bench/api", timeout=1)
                return time.perf_counter() - t0
            except requests.ConnectionError:
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measurements of each kind (>= 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as tmp:
        hub = Hub(Path(tmp)).start()
        try:
            through_hub(hub, "alice")  # warm-up: first import of the single-user stack
            singleuser_alone(hub, Path(tmp))
            hub_times, alone_times = [], []
            for _ in range(args.runs):
                alone_times.append(singleuser_alone(hub, Path(tmp)))
                hub_times.append(through_hub(hub, "alice"))
        finally:
            hub.stop()
    h, a = statistics.median(hub_times), statistics.median(alone_times)
    print(f"runs: {args.runs} each, interleaved")
    print(f"singleuser alone to first answer: median {a:.3f} s  ({', '.join(f'{t:.2f}' for t in alone_times)})")
    print(f"hub POST spawn to ready:          median {h:.3f} s  ({', '.join(f'{t:.2f}' for t in hub_times)})")
    print(f"ratio hub / alone: {h / a:.2f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
