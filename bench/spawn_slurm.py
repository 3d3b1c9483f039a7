"""Spawn latency on the slurm backend: through the hub vs ``sbatch`` of the same job by hand.

Measures, in the same run and interleaved, (a) ``sbatch`` by hand of the job script the backend
builds (:func:`hybridhub.backends.slurm.sbatch_script` with an equivalent JobSpec: 1 x H100 on
partition ``h100``, the venv's ``jupyterhub-singleuser`` on a known port) to its first HTTP answer,
probed from the host at node hhn1's address, then ``scancel`` until Slurm says it ended; and
(c) POST /hub/api/users/carol/server with the 1 x H100 offering through a real hub to ``ready``
(REST only), then stop.  One warm-up of each first; prints medians, samples, spread and c/a.

Then one status poll over 100 jobs: 100 tiny ``sleep`` jobs are submitted held (``--hold``: the
two nodes have 16 cores between them, and running them would starve anyone else's jobs on this
shared cluster), and the hub's status command (``squeue --json --states=all --me``, one call
for all) is timed over them; they are cancelled at the end, also on failure.

    scripts/slurm.sh start
    PATH=/work/main/.venv/bin:$PATH python bench/spawn_slurm.py [--runs 7]
"""

from __future__ import annotations

import json
import os
import statistics
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
from hybridhub.backends.slurm import JobSpec, sbatch_script  # noqa: E402
from tests.fixtures.hub import VENV_BIN, Hub, free_port  # noqa: E402
from tests.fixtures.slurm import HOST_IP, NODE_IP, SLURM_DIR, hub_slurm_config, run_script  # noqa: E402

OPTIONS = {"class": "enterprise", "model": "h100", "count": 1, "hours": 1, "group": "lab-vision"}
FLOOR, OURS = "a: sbatch by hand to first answer", "c: hybridhub spawn (slurm)"
SQUEUE = ["squeue", "--json", "--states=all", "--me"]  # SlurmCommands.squeue's default
TINY_JOBS, SQUEUE_CALLS = 100, 10
ENDED = {"CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def slurm(*argv: str, stdin: str = "", env: dict | None = None) -> str:
    return subprocess.run(argv, input=stdin, env=env or os.environ, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def job_states(job_ids: set[int]) -> dict[int, str]:
    jobs = json.loads(slurm("squeue", "--json", "--states=all"))["jobs"]
    return {j["job_id"]: j["job_state"] for j in jobs if j["job_id"] in job_ids}


def cancel_and_wait(job_ids: set[int], timeout: float = 30) -> None:
    """``scancel`` the jobs and wait (bounded) until Slurm says each ended."""
    if not job_ids:
        return
    subprocess.run(["scancel", *map(str, job_ids)], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s in ENDED for s in job_states(job_ids).values()):
            return
        time.sleep(0.1)
    print(f"warning: jobs {sorted(job_ids)} not ended {timeout:g} s after scancel", file=sys.stderr)


def sbatch_by_hand(hub: Hub, hub_port: int, tag: str, home: Path) -> float:
    """Seconds from ``sbatch`` of the backend's script (same directives, command, env) to the first answer."""
    port = free_port()
    env = {
        **singleuser_env(hub, port),
        "JUPYTERHUB_API_URL": f"http://{HOST_IP}:{hub_port}/hub/api",  # as the hub gives its jobs
        "HOME": str(home), "USER": "bench", "PATH": hub.env["PATH"], "PYTHONPATH": hub.env.get("PYTHONPATH", ""),
        "SLURM_CONF": os.environ["SLURM_CONF"],
    }
    spec = JobSpec(
        job_name=f"hybridhub-{tag}-bench", comment=f"hybridhub:{tag}:bench:", gres="gpu:h100", count=1, hours=1,
        command=[str(VENV_BIN / "jupyterhub-singleuser"), "--ip=0.0.0.0", f"--port={port}", "--allow-root"],
        env_names=tuple(sorted(env)), workdir=str(home), output=str(home / "slurm-%j.log"), partition="h100",
    )
    script = sbatch_script(spec)
    t0 = time.perf_counter()
    job_id = int(slurm("sbatch", "--parsable", stdin=script, env=env).strip().split(";")[0])
    last_check = [0.0]

    def check() -> None:  # fail rather than wait forever on a job that ended (every 0.5 s: one squeue each)
        if time.perf_counter() - last_check[0] < 0.5:
            return
        last_check[0] = time.perf_counter()
        state = job_states({job_id}).get(job_id, "")
        if state in ENDED:
            log = home / f"slurm-{job_id}.log"
            raise RuntimeError(f"job {job_id} ended: {state}\n" + (log.read_text()[-3000:] if log.exists() else ""))
        if time.perf_counter() - t0 > 120:
            raise TimeoutError(f"job {job_id} did not answer within 120 s ({state})")

    try:
        return seconds_to_first_answer(port, t0, check, host=NODE_IP["hhn1"])
    finally:
        cancel_and_wait({job_id})


def squeue_over_tiny_jobs(tag: str) -> tuple[list[float], int, dict[str, int]]:
    """Submit :data:`TINY_JOBS` held ``sleep`` jobs, time the hub's status command over them, cancel them."""
    ids: set[int] = set()
    try:
        for i in range(TINY_JOBS):
            out = slurm("sbatch", "--parsable", "--hold", f"--job-name=hybridhub-{tag}-tiny{i}",
                        f"--comment=hybridhub:{tag}:tiny{i}:", "--partition=a100", "--time=5",
                        "--output=/dev/null", "--wrap=sleep 300")
            ids.add(int(out.strip().split(";")[0]))
        samples, listed = [], 0
        for _ in range(SQUEUE_CALLS):
            t0 = time.perf_counter()
            out = slurm(*SQUEUE)
            samples.append(time.perf_counter() - t0)
            listed = len(json.loads(out)["jobs"])
        states: dict[str, int] = {}
        for s in job_states(ids).values():
            states[s] = states.get(s, 0) + 1
        return samples, listed, states
    finally:
        cancel_and_wait(ids, timeout=60)


def main() -> None:
    runs = runs_from_args(__doc__)
    run_script("start")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    tag = f"bench{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="hh-bench-slurm-") as tmp:
        root = Path(tmp)
        home = root / "bench-home"
        home.mkdir()
        hub_port = free_port()  # the hub's own API (on the bridge), which the by-hand server talks to too
        config = hub_slurm_config(root, os.environ["SLURM_CONF"], tag) + f"\nc.JupyterHub.hub_port = {hub_port}"
        hub = Hub(root, extra_config=config)
        hub.start()
        try:
            times = interleaved(runs, {
                FLOOR: lambda: sbatch_by_hand(hub, hub_port, f"{tag}f", home),  # another hub id: not its to reconcile
                OURS: lambda: through_hub(hub, "carol", OPTIONS),
            })
        finally:
            hub.stop()
            leftovers = json.loads(slurm("squeue", "--json", "--states=all"))["jobs"]
            cancel_and_wait({j["job_id"] for j in leftovers if j["name"].startswith(f"hybridhub-{tag}")
                             and j["job_state"] not in ENDED})
    report(f"rounds: {runs} (a, c each), interleaved, same node (hhn1, 1 x gpu:h100)", times, [(OURS, FLOOR, 1.15)],
           spread_target=1.3)
    samples, listed, states = squeue_over_tiny_jobs(f"{tag}t")
    print(f"status poll ({' '.join(SQUEUE)}, one call) over {TINY_JOBS} held sleep jobs {states} "
          f"({listed} jobs listed in all): median {statistics.median(samples) * 1000:.0f} ms, samples "
          + ", ".join(f"{s * 1000:.0f}" for s in samples))


if __name__ == "__main__":
    main()
