"""Spawn latency on the theta backend: through the hub vs the same deployment and server by hand.

Against the local Theta controller (tests/fixtures/theta.py: GPU Nodes as containers with a real sshd
on the test Docker engine h1), measures in the same run and interleaved (a) by hand: create the same
community RTX 4090 deployment (a fresh key pair, the same request), read it every 0.1 s until it runs,
log in over SSH and start the venv's ``jupyterhub-singleuser`` with its environment on the connection,
until it first answers; then delete the deployment; and (c) POST /hub/api/users/alice/server with the
RTX 4090 (Theta community) offering through a real hub configured only with the controller's URL, key
and project, to ``ready`` (REST only), then stop.  One warm-up of each first; prints medians, samples,
spread and c/a (target <= 1.10).

    scripts/docker-engines.sh start
    PATH=/work/main/.venv/bin:$PATH python bench/spawn_theta.py [--runs 7]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import interleaved, report, runs_from_args, seconds_to_first_answer, singleuser_env, through_hub  # noqa: E402,I001
from hybridhub.backends.theta import body as tb  # noqa: E402
from hybridhub.backends.theta.client import ThetaClient  # noqa: E402
from hybridhub.backends.theta.ssh import LaunchKey, connect, start_server  # noqa: E402
from tests.fixtures.docker import TEST_IMAGE, run_script  # noqa: E402
from tests.fixtures.hub import VENV_BIN, Hub, free_port  # noqa: E402
from tests.fixtures.theta import TEMPLATE, ThetaController, hub_theta_config  # noqa: E402

OPTIONS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
FLOOR, OURS = "a: deployment + SSH start by hand to first answer", "c: hybridhub spawn (theta)"


async def by_hand_async(ctl: ThetaController, hub: Hub) -> float:
    """Seconds from the create to the server's first answer; the deployment is deleted afterwards."""
    client = ThetaClient(ctl.url, ctl.project, ctl.key)
    port = free_port()
    t0 = time.perf_counter()
    key = LaunchKey()
    request = tb.deployment_body(template_id=TEMPLATE, resource_id="community_node/1", image=TEST_IMAGE,
                                 ssh_public_key=key.public_openssh, name="benchbyhand", display_name="bench",
                                 http_port=port, max_price=0.40)
    dep = tb.deployment(await client.create_gpu_deployment(request))
    try:
        while not (dep := tb.deployment(await client.get_gpu_deployment(dep.id))).running:
            await asyncio.sleep(0.1)
        env = {**singleuser_env(hub, port), "HOME": "/root", "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
        async with await connect(dep.ssh_host, dep.ssh_port, "root", key, dep.ssh_host_public_key, timeout=30) as conn:
            await start_server(conn, [str(VENV_BIN / "jupyterhub-singleuser"), "--allow-root"], env)
        return await asyncio.to_thread(seconds_to_first_answer, port, t0)
    finally:
        await client.delete_gpu_deployment(dep.id)


def main() -> None:
    runs = runs_from_args(__doc__)
    run_script("start")
    with tempfile.TemporaryDirectory(prefix="hh-bench-theta-") as tmp:
        root = Path(tmp)
        ctl = ThetaController(root / "theta")
        ctl.resources[0]["capacity"] = 4
        hub = Hub(root, extra_config=hub_theta_config(ctl))
        hub.start()
        try:
            times = interleaved(runs, {
                FLOOR: lambda: asyncio.run(by_hand_async(ctl, hub)),
                OURS: lambda: through_hub(hub, "alice", OPTIONS),
            })
        finally:
            hub.stop()
            ctl.close()
    report(f"rounds: {runs} (a, c each), interleaved, nodes on engine h1 (sshd in a container)", times,
           [(OURS, FLOOR, 1.10)], spread_target=1.3)


if __name__ == "__main__":
    main()
