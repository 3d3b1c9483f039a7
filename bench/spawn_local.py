"""Spawn latency on the local backend: through the hub vs jupyterhub-singleuser alone.

Measures, in the same run and interleaved, (a) POST /hub/api/users/<u>/server to
``ready`` through a real hub running jupyterhub_config.py, and (b) starting
``jupyterhub-singleuser`` by itself to its first answered request.  Prints both
medians and the ratio (target <= 1.15).

    .venv/bin/python bench/spawn_local.py [--runs 7]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
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
from tests.fixtures.hub import VENV_BIN, Hub, free_port  # noqa: E402

OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def singleuser_alone(hub: Hub, workdir: Path) -> float:
    """Seconds from starting jupyterhub-singleuser to its first answered request."""
    port = free_port()
    home = workdir / "bench-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), **singleuser_env(hub, port)}
    cmd = [str(VENV_BIN / "jupyterhub-singleuser"), "--ip=127.0.0.1", f"--port={port}", "--allow-root",
           f"--notebook-dir={home}", "--SingleUserNotebookApp.default_url=/lab"]

    def check() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyterhub-singleuser exited with {proc.returncode}")

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return seconds_to_first_answer(port, t0, check)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    runs = runs_from_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="hh-bench-") as tmp:
        hub = Hub(Path(tmp)).start()
        try:
            hub_times, alone_times = interleaved(
                runs,
                lambda: through_hub(hub, "alice", OPTIONS),
                lambda: singleuser_alone(hub, Path(tmp)),
            )
        finally:
            hub.stop()
    report(
        f"runs: {runs} each, interleaved",
        ("singleuser alone to first answer", alone_times),
        ("hub POST spawn to ready", hub_times),
        "hub / alone",
        1.15,
    )


if __name__ == "__main__":
    main()
