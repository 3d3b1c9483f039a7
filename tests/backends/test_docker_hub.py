"""The docker backend behind a real hub: REST spawn, 429 at capacity, restart re-adoption."""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from hybridhub.accounting.db import Database
from hybridhub.accounting.demand import demand_report
from tests.fixtures.docker import TEST_IMAGE, h100_host, held_gpus, host_binds, hub_docker_config, remove_labelled
from tests.fixtures.hub import hub_factory, hub_prereqs  # noqa: F401  (fixtures)

pytestmark = pytest.mark.docker

USERS = ["gpu1", "gpu2", "gpu3", "gpu4", "gpu5"]


def h100(count: int) -> dict:
    return {
        "class": "enterprise",
        "model": "h100",
        "count": count,
        "hours": 1,
        "group": "lab-vision",
    }


@pytest.fixture
def docker_hub(hub_factory, docker_engines):  # noqa: F811  (fixture imported above)
    label = f"hubtest-{uuid.uuid4().hex[:6]}"
    hosts = [h100_host(docker_engines.urls["h1"])]
    config = hub_docker_config(hosts, hub_label=label, users=USERS) + "\nc.ReconcileRunner.interval = 1\n"
    hub = hub_factory(extra_config=config)
    hub.hub_label = label
    yield hub
    hub.stop()
    remove_labelled(docker_engines, label)


def test_hub_restart_readopts_three_gpu_servers(docker_hub, docker_engines):
    hub = docker_hub
    for user in USERS[:3]:
        r = hub.spawn(user, h100(2))
        assert r.status_code in (201, 202), r.text
    for user in USERS[:3]:
        hub.wait_ready(user)
    held = held_gpus(hub)
    assert len(held) == 6
    containers = {c["Id"] for c in docker_engines.client("h1").containers()}

    hub.restart()
    for user in USERS[:3]:
        assert hub.server_model(user)["ready"], hub.log()[-2000:]
    assert held_gpus(hub) == held
    assert {c["Id"] for c in docker_engines.client("h1").containers()} >= containers

    # the restarted hub's reconciliation runner hands the docker hook its three servers: an orphan
    # container of this hub goes, the servers' containers and GPUs stay
    client = docker_engines.client("h1")
    orphan = client.create_container(
        TEST_IMAGE, [sys.executable, "-c", "import time; time.sleep(600)"], name=f"{hub.hub_label}-orphan",
        labels={"hybridhub.hub": hub.hub_label, "hybridhub.owner": f"{hub.hub_label}/jupyter-ghost"},
        host_config=client.create_host_config(
            binds={p: {"bind": p, "mode": "ro"} for p in host_binds()}, network_mode="host"),
    )
    client.start(orphan["Id"])
    deadline = time.monotonic() + 30
    while client.containers(all=True, filters={"id": orphan["Id"]}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.containers(all=True, filters={"id": orphan["Id"]}) == [], hub.log()[-3000:]
    assert "Reconcile: DockerBackend with 3 known server(s)" in hub.log()
    assert {c["Id"] for c in client.containers()} >= containers
    assert held_gpus(hub) == held

    # the two GPUs left go to a newcomer; nothing is booked twice
    r = hub.spawn(USERS[3], h100(2))
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(USERS[3])
    now = held_gpus(hub)
    assert len(now) == 8 and set(held) <= set(now)

    # and then the host is full: 429 with Retry-After, and a message for the person
    r = hub.spawn(USERS[4], h100(1))
    assert r.status_code == 429, r.text
    assert r.headers.get("Retry-After") == "60"
    assert "No capacity for 1 x H100 80GB" in r.json()["message"]
    db = Database(hub.db_url)
    try:  # and it is recorded as unmet demand
        assert [(d.reason, d.refusals, d.accelerators) for d in demand_report(db)] == [
            ("capacity", 1, 1)]
    finally:
        db.dispose()

    for user in USERS[:4]:
        hub.stop_server(user)
    assert held_gpus(hub) == {}
