"""The swarm backend behind a real hub on a three-node swarm (scripts/docker-engines.sh).

The workers ``hhsw1`` and ``hhsw2`` are Docker Engines in their own network namespaces,
each with two ``NVIDIA-GPU`` generic resources and the labels of an enterprise A100 host;
the manager runs on the host.  The hub listens on the bridge so servers on the workers
reach it; the proxy reaches them at their workers' addresses.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
import yaml

from hybridhub.accounting.db import Database
from hybridhub.accounting.sessions import END_HOST_LOST, SessionLog
from hybridhub.backends.swarm import gpu_model_label
from hybridhub.catalog import load_catalog
from tests.fixtures.docker import (
    SWARM_MANAGER_IP,
    SWARM_WORKERS,
    TEST_IMAGE,
    held_gpus,
    host_binds,
    remove_labelled,
    singleuser_cmd,
)
from tests.fixtures.hub import hub_factory, hub_prereqs  # noqa: F401  (fixtures)
from tests.spawner.test_trust_hub import login

pytestmark = pytest.mark.docker

#: One enterprise offering that only the two workers carry (the manager's GPUs are labelled otherwise).
CATALOG = {
    "enterprise": {
        "display_name": "Enterprise GPU",
        "backend": "swarm",
        "image": TEST_IMAGE,
        "offerings": {
            "a100": {"model": "A100 80GB", "counts": [1, 2], "price_per_hour": 1.8, "max_hours": 8,
                     "cpu_limit": 1, "mem_limit": "2G"},
        },
    },
}


def launch(count: int) -> dict:
    return {"class": "enterprise", "model": "a100", "count": count, "hours": 1, "group": "lab-vision"}


def label_workers(client) -> None:
    """Give both workers the labels of an enterprise A100 host (what an operator does once)."""
    model = gpu_model_label(load_catalog(CATALOG).by_key("enterprise/a100"))
    for node in client.nodes():
        if node["Description"]["Hostname"] not in SWARM_WORKERS or node["Status"]["State"] != "ready":
            continue
        spec = node["Spec"]
        spec["Labels"] = {"hybridhub.class": "enterprise", "hybridhub.gpu_model": model}
        client.update_node(node["ID"], node["Version"]["Index"], spec)


@pytest.fixture
def swarm_hub(hub_factory, docker_engines, tmp_path):  # noqa: F811  (fixture imported above)
    manager = docker_engines.client("swarm")
    label_workers(manager)
    label = f"swtest-{uuid.uuid4().hex[:6]}"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    hub = hub_factory(extra_config="\n".join([
        f"c.HybridSpawner.catalog_file = {str(catalog)!r}",
        "c.HybridSpawner.backend_override = ''",
        f"c.JupyterHub.hub_ip = {SWARM_MANAGER_IP!r}",  # the workers reach the hub on the bridge
        "c.JupyterHub.allow_named_servers = True",
        "c.Spawner.poll_interval = 1",
        f"c.SwarmBackend.swarm_url = {docker_engines.urls['swarm']!r}",
        f"c.SwarmBackend.read_only_binds = {host_binds()!r}",
        f"c.SwarmBackend.cmd = {singleuser_cmd()!r}",
        "c.SwarmBackend.run_as = ''",
        f"c.SwarmBackend.hub_label = {label!r}",
        f"c.SwarmBackend.home_volume = '{label}-home-{{username}}'",
    ]))
    hub.manager = manager
    yield hub
    hub.stop()
    remove_labelled(docker_engines, label)


def free_in_picker(hub, user: str) -> str:
    session, _ = login(hub, user)
    page = session.get(f"{hub.url}/hub/spawn", timeout=60)
    assert page.status_code == 200, page.text[:500]
    (free,) = re.findall(r'name="offering" value="enterprise/a100".*?class="free-now">\s*(\S+)', page.text, re.S)
    return free


def node_of(hub, user: str, server: str = "") -> str:
    """The hostname of the node running ``user``'s server, from the swarm manager."""
    def is_it(service) -> bool:
        env = service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
        return f"JUPYTERHUB_SERVER_NAME={server}" in env

    (service,) = [s for s in hub.manager.services(filters={"label": f"hybridhub.user={user}"}) if is_it(s)]
    (task,) = hub.manager.tasks(filters={"service": service["ID"], "desired-state": "running"})
    return hub.manager.inspect_node(task["NodeID"])["Description"]["Hostname"]


def answers(hub, user: str, server: str = "") -> int:
    path = f"/user/{user}/{server + '/' if server else ''}api/status"
    r = requests.get(hub.url + path, headers={"Authorization": f"token {hub.user_token(user)}"}, timeout=10)
    return r.status_code


def test_servers_spread_over_worker_nodes_and_a_lost_node_frees_its_gpus(swarm_hub, docker_engines):
    hub = swarm_hub
    # the picker's "Free now" sums both workers' GPUs (2 + 2)
    assert free_in_picker(hub, "alice") == "4"
    killed = None
    try:
        assert hub.spawn("dave", launch(2)).status_code in (201, 202)
        hub.wait_ready("dave")
        lost_node = node_of(hub, "dave")
        # dave holds one worker's two GPUs, so Swarm must place carol's server on the other
        assert hub.spawn("carol", launch(1)).status_code in (201, 202)
        hub.wait_ready("carol")
        survivor = node_of(hub, "carol")
        assert {lost_node, survivor} == set(SWARM_WORKERS), (lost_node, survivor)
        assert answers(hub, "dave") == answers(hub, "carol") == 200  # through the proxy, at the workers
        assert len(held_gpus(hub)) == 3
        assert free_in_picker(hub, "alice") == "1"

        t0 = time.monotonic()
        docker_engines.kill_node(lost_node)  # the machine dies: its engine and dave's server
        killed = lost_node
        hub.wait_stopped("dave", timeout=90)
        lost_after = time.monotonic() - t0
        held = held_gpus(hub)
        assert all("dave" not in owner for owner in held.values()) and len(held) == 1, held
        print(f"swarm worker kill -> server reported lost and its GPUs free: {lost_after:.1f} s")
        db = Database(hub.db_url)
        try:
            (record,) = SessionLog(db).sessions("dave")
        finally:
            db.dispose()
        assert (record.end_reason, record.host) == (END_HOST_LOST, lost_node), record
        assert f"node {lost_node} lost" in record.end_detail, record

        # the dead node's GPUs are not offered; the survivor's spare one is, and a new launch lands there
        assert free_in_picker(hub, "alice") == "1"
        assert hub.spawn("carol", launch(1), server="lab").status_code in (201, 202)
        hub.wait_ready("carol", "lab")
        assert node_of(hub, "carol", "lab") == survivor
        assert free_in_picker(hub, "alice") == "0"
        assert answers(hub, "carol") == answers(hub, "carol", "lab") == 200  # the other node kept running
        hub.stop_server("carol", "lab")
        hub.stop_server("carol")
    finally:
        if killed:
            docker_engines.start(killed)
