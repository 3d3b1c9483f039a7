"""SwarmBackend on a single-node swarm whose GPUs are node generic resources."""

from __future__ import annotations

import time

import pytest
from tornado import web

from hybridhub.backends.base import KnownServer
from hybridhub.backends.docker import ContainerSpec, HomeMount
from hybridhub.backends.swarm import SwarmBackend, gpu_model_label, orphan_services, service_config

pytestmark = pytest.mark.docker

SWARM_GPUS = {
    "GPU-5a4d0001-0000-4000-8000-000000000001",
    "GPU-5a4d0001-0000-4000-8000-000000000002",
}


def test_service_config_asks_for_gpus_and_is_confined():
    spec = ContainerSpec(
        name="jupyter-alice",
        image="img",
        command=["start"],
        env={},
        labels={"a": "b"},
        home=HomeMount("volume", "home-alice", "/home/jovyan"),
        user="1000:100",
        cpu_limit=4,
        mem_limit="16G",
    )
    kw = service_config(
        spec,
        gpu_kind="NVIDIA-GPU",
        gpu_count=2,
        constraints=["node.labels.hybridhub.class==enterprise"],
    )
    task = kw["task_template"]
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    assert task["Resources"]["Limits"]["NanoCPUs"] == 4_000_000_000
    cs = task["ContainerSpec"]
    assert cs["User"] == "1000:100" and cs["CapabilityDrop"] == ["ALL"]
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Placement"]["Constraints"] == ["node.labels.hybridhub.class==enterprise"]
    assert {m["Target"] for m in cs["Mounts"]} >= {"/home/jovyan", "/tmp"}


def test_gpu_model_label():
    from hybridhub.catalog import load_catalog

    cat = load_catalog()
    assert gpu_model_label(cat.by_key("enterprise/h100")) == "h10080gb"
    assert gpu_model_label(cat.by_key("community/rtx4090")) == "rtx4090"


@pytest.fixture
def swarm_node(docker_engines):
    """Label the single swarm node as an enterprise H100 host."""
    client = docker_engines.client("swarm")
    node = client.inspect_node(client.info()["Swarm"]["NodeID"])
    spec = node["Spec"]
    spec["Labels"] = {"hybridhub.class": "enterprise", "hybridhub.gpu_model": "h10080gb"}
    client.update_node(node["ID"], node["Version"]["Index"], spec)
    deadline = time.monotonic() + 60  # a removed service's task gives its GPUs back when its container ends
    while client.containers(filters={"label": "com.docker.swarm.service.id"}) or client.tasks():
        assert time.monotonic() < deadline, "an earlier test's swarm tasks are still running"
        time.sleep(0.2)
    return client


def task_env(client, service: str) -> dict[str, str]:
    (c,) = client.containers(filters={"label": f"com.docker.swarm.service.name={service}"})
    info = client.inspect_container(c["Id"])
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


async def test_swarm_assigns_gpus_and_refuses_when_full(backend_factory, swarm_node):
    make = lambda user, n=1: backend_factory(  # noqa: E731
        user, "enterprise/h100", n, hosts=[], cls=SwarmBackend, start_timeout=60
    )
    a = make("sw-a")
    off, config = a.offering, None
    await a.start()
    config = a.config
    try:
        assert await a.poll() is None
        env = task_env(swarm_node, a.object_name)
        assert env["DOCKER_RESOURCE_NVIDIA-GPU"] in SWARM_GPUS
        assert list(a._gpus) == [env["DOCKER_RESOURCE_NVIDIA-GPU"]]
        assert await SwarmBackend.free_now(off, config) == 1
        b = make("sw-b")
        await b.start()
        env_b = task_env(swarm_node, b.object_name)
        assert {
            env["DOCKER_RESOURCE_NVIDIA-GPU"],
            env_b["DOCKER_RESOURCE_NVIDIA-GPU"],
        } == SWARM_GPUS
        assert await SwarmBackend.free_now(off, config) == 0
        c = make("sw-c")
        with pytest.raises(web.HTTPError) as e:
            await c.start()
        assert e.value.status_code == 429 and e.value.headers == {"Retry-After": "60"}
        assert swarm_node.services(filters={"name": c.object_name}) == []
        await b.stop()
    finally:
        await a.stop()
    assert await SwarmBackend.free_now(off, config) == 2
    assert await a.poll() == 0


def test_orphan_services_are_unknown_and_old_enough():
    def service(owner, created):
        return {"Spec": {"Labels": {"hybridhub.owner": owner}}, "CreatedAt": created}

    old, young = "2026-12-07T08:00:00.123456789Z", "2026-12-07T09:00:00.5Z"
    cutoff = 1796632800.0  # 2026-12-07 08:40 UTC
    services = [service("h/known", old), service("h/ghost", old), service("h/new", young)]
    assert orphan_services(services, {"h/known"}, cutoff) == [services[1]]


async def test_reconcile_removes_services_no_known_server_holds(backend_factory, swarm_node):
    """The swarm hook, handed the hub's known servers, removes another service of this hub (past the
    grace) with its GPU records, and leaves the known one running."""
    make = lambda user: backend_factory(user, "enterprise/h100", 1, hosts=[], cls=SwarmBackend,  # noqa: E731
                                        start_timeout=60)
    kept, orphan = make("sw-kept"), make("sw-orphan")
    await kept.start()
    await orphan.start()
    try:
        config = kept.config.copy()
        config.SwarmBackend.reconcile_grace = 0
        report = await SwarmBackend.reconcile([KnownServer("sw-kept", "", kept.get_state())], config)
        assert report.removed == [orphan.object_name]
        assert report.released == [orphan.owner]
        assert swarm_node.services(filters={"name": orphan.object_name}) == []
        assert await kept.poll() is None
        assert [a.owner for a in kept.allocator.active()] == [kept.owner]
        again = await SwarmBackend.reconcile([KnownServer("sw-kept", "", kept.get_state())], config)
        assert again.removed == []
    finally:
        await kept.stop()
        await orphan.stop()
