"""Spawn latency on the local backend: hybridhub vs plain JupyterHub vs a bare ``jupyter lab``.

Each round measures, in this order:

(a) the floor: a bare ``jupyter lab`` (the venv's ``jupyter-lab``, no hub) from its start to its
    first answer of ``/api/status``;
(b) the peer: plain JupyterHub with ``jupyterhub.spawner.SimpleLocalProcessSpawner``
    (bench/peer_jupyterhub_config.py): REST POST /hub/api/users/alice/server to the server ready;
(c) ours: hybridhub's demo hub (jupyterhub_config.py, local backend, simulated inventory on), same
    REST path with a 1 x RTX 4090 launch.

Both hubs run at once on this machine with the same proxy, log level and timeouts; one warm-up of
each kind first.  Prints medians, every sample, the spread (max/min) and the ratios c/a and c/b.

    PATH=.venv/bin:$PATH .venv/bin/python bench/spawn_local.py [--runs 7] [--singleuser]

Then, from both hubs' DEBUG logs, the median time from the POST to each step of a spawn (token and
OAuth client, server process started, start() returned, server listening, readiness check, proxy route).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (  # noqa: E402
    interleaved,
    report,
    report_events,
    runs_from_args,
    seconds_to_first_answer,
    singleuser_env,
    spawn_events,
    through_hub,
)
from tests.fixtures.hub import ROOT, VENV_BIN, Hub, free_port  # noqa: E402

OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
PEER_CONFIG = Path(__file__).resolve().parent / "peer_jupyterhub_config.py"
FLOOR, PEER, OURS = "a: bare jupyter lab to /api/status", "b: plain JupyterHub spawn", "c: hybridhub spawn"
ALONE = "d: jupyterhub-singleuser alone to first answer"


def bare_lab(workdir: Path) -> float:
    """Seconds from starting ``jupyter lab`` to its first answer of ``/api/status``."""
    port, token = free_port(), secrets.token_hex(16)
    home = workdir / "bench-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}  # as a hub's server: this checkout's extension
    cmd = [str(VENV_BIN / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--ServerApp.root_dir={home}", f"--IdentityProvider.token={token}"]

    def check() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return seconds_to_first_answer(port, t0, check, path="/api/status",
                                       headers={"Authorization": f"token {token}"})
    finally:
        proc.terminate()
        proc.wait(10)


def singleuser_alone(hub: Hub, workdir: Path) -> float:
    """Seconds from starting ``jupyterhub-singleuser`` by hand (the hub's env) to its first answer."""
    port = free_port()
    home = workdir / "bench-home"
    home.mkdir(exist_ok=True)
    env = {**hub.env, "HOME": str(home), **singleuser_env(hub, port)}
    cmd = [sys.executable, "-m", "jupyterhub.singleuser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--ServerApp.root_dir={home}"]

    def check() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyterhub-singleuser exited with {proc.returncode}")

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return seconds_to_first_answer(port, t0, check)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    runs = runs_from_args(__doc__, extra=[(
        "--singleuser", "also time d: jupyterhub-singleuser started by hand (what any hub must start)")])
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as tmp:
        root = Path(tmp)
        (root / "peer").mkdir()
        (root / "ours").mkdir()
        peer = Hub(root / "peer", config_file=PEER_CONFIG)
        ours = Hub(root / "ours", env={"HYBRIDHUB_DEMO_INVENTORY": "1"})  # the demo as shipped
        try:
            peer.start()
            ours.start()
            kinds = {
                FLOOR: lambda: bare_lab(root),
                PEER: lambda: through_hub(peer, "alice", None),
                OURS: lambda: through_hub(ours, "alice", OPTIONS),
            }
            if runs.singleuser:
                kinds[ALONE] = lambda: singleuser_alone(ours, root)
            times = interleaved(runs.runs, kinds)
            events = {label: spawn_events(hub.log(), "alice") for label, hub in ((PEER, peer), (OURS, ours))}
        finally:
            for hub in (peer, ours):
                hub.stop()
    report(
        f"rounds: {runs.runs} (a, b, c{', d' if runs.singleuser else ''} each), interleaved, after one warm-up of each",
        times,
        [(OURS, FLOOR, 1.10), (OURS, PEER, 0.65), (PEER, FLOOR, float("inf"))],
        spread_target=1.3,
    )
    for label, spawns in events.items():
        report_events(label, spawns)


if __name__ == "__main__":
    main()
