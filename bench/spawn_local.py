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

    PATH=.venv/bin:$PATH .venv/bin/python bench/spawn_local.py [--runs 7]
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
from bench._common import interleaved, report, runs_from_args, seconds_to_first_answer, through_hub  # noqa: E402
from tests.fixtures.hub import VENV_BIN, Hub, free_port  # noqa: E402

OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
PEER_CONFIG = Path(__file__).resolve().parent / "peer_jupyterhub_config.py"
FLOOR, PEER, OURS = "a: bare jupyter lab to /api/status", "b: plain JupyterHub spawn", "c: hybridhub spawn"


def bare_lab(workdir: Path) -> float:
    """Seconds from starting ``jupyter lab`` to its first answer of ``/api/status``."""
    port, token = free_port(), secrets.token_hex(16)
    home = workdir / "bench-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
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


def main() -> None:
    runs = runs_from_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as tmp:
        root = Path(tmp)
        (root / "peer").mkdir()
        (root / "ours").mkdir()
        peer = Hub(root / "peer", config_file=PEER_CONFIG)
        ours = Hub(root / "ours", env={"HYBRIDHUB_DEMO_INVENTORY": "1"})  # the demo as shipped
        try:
            peer.start()
            ours.start()
            times = interleaved(runs, {
                FLOOR: lambda: bare_lab(root),
                PEER: lambda: through_hub(peer, "alice", None),
                OURS: lambda: through_hub(ours, "alice", OPTIONS),
            })
        finally:
            for hub in (peer, ours):
                hub.stop()
    report(
        f"rounds: {runs} (a, b, c each), interleaved, after one warm-up of each",
        times,
        [(OURS, FLOOR, 1.10), (OURS, PEER, 0.65), (PEER, FLOOR, float("inf"))],
        spread_target=1.3,
    )


if __name__ == "__main__":
    main()
