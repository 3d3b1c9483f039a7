"""DockerBackend against real Docker Engines: placement, GPUs, home, host failure, restart."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import pytest
from tornado import web

from hybridhub.accounting.allocations import Allocator, GpuAllocation
from hybridhub.accounting.db import Database
from hybridhub.accounting.models import utcnow
from hybridhub.backends.base import KnownServer
from hybridhub.backends.docker import DockerBackend, known_owners
from tests.fixtures.docker import DATA, TEST_IMAGE, fake_gpus

pytestmark = pytest.mark.docker

PY = sys.executable


def enterprise_hosts(engines, h2_gpus: int = 2) -> list[dict]:
    """h1: 8 x H100 (captured nvidia-smi output); h2: a smaller H100 host."""
    return [
        {
            "name": "h1",
            "url": engines.urls["h1"],
            "class": "enterprise",
            "nvidia_smi_file": str(DATA / "nvidia-smi-8xh100.csv"),
        },
        {
            "name": "h2",
            "url": engines.urls["h2"],
            "class": "enterprise",
            "gpus": fake_gpus("b2", "NVIDIA H100 80GB HBM3", h2_gpus),
        },
    ]


def community_host(engines, engine: str = "h2") -> dict:
    return {
        "name": "c1",
        "url": engines.urls[engine],
        "class": "community",
        "nvidia_smi_file": str(DATA / "nvidia-smi-2xrtx4090.csv"),
    }


def container_env(engines, host_engine: str, name: str) -> dict[str, str]:
    info = engines.client(host_engine).inspect_container(name)
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


def run_in(engines, engine: str, container: str, code: str) -> str:
    client = engines.client(engine)
    ex = client.exec_create(container, [PY, "-c", code])
    out = client.exec_start(ex["Id"]).decode()
    assert client.exec_inspect(ex["Id"])["ExitCode"] == 0, out
    return out


def allocator(factory) -> Allocator:
    db = Database(factory.db_url)
    db.upgrade()
    return Allocator(db)


async def test_start_poll_stop_frees_gpus(backend_factory, docker_engines):
    hosts = enterprise_hosts(docker_engines)
    b = backend_factory("alice", "enterprise/h100", 2, hosts=hosts)
    ip, port = await b.start()
    assert (ip, port) == ("127.0.0.1", b.port)
    assert await b.poll() is None
    # best fit: the 2-GPU host h2 is filled before the 8-GPU host h1
    assert b.host_name == "h2"
    env = container_env(docker_engines, "h2", b.object_name)
    held = [a.gpu_uuid for a in allocator(backend_factory).active(owner=b.owner)]
    assert env["NVIDIA_VISIBLE_DEVICES"].split(",") == held and len(held) == 2
    assert env["HYBRIDHUB_MODEL"] == "H100 80GB" and env["HYBRIDHUB_COUNT"] == "2"
    labels = docker_engines.client("h2").inspect_container(b.object_name)["Config"]["Labels"]
    assert labels["hybridhub.hub"] == backend_factory.hub_label
    assert labels["hybridhub.gpus"] == ",".join(held)
    free = await DockerBackend.free_now(b.offering, b.config)
    assert free == 8
    await b.stop()
    assert allocator(backend_factory).active() == []
    assert await DockerBackend.free_now(b.offering, b.config) == 10
    assert await b.poll() == 0


async def test_real_container_is_confined(backend_factory, docker_engines):
    """On a real engine: non-root user, no capabilities, CPU/memory limits of the offering."""
    hosts = [community_host(docker_engines, "h1")]
    b = backend_factory(
        "carol",
        "community/rtx4090",
        1,
        hosts=hosts,
        run_as="1000:100",
        args=[],
        home_host_dir=str(backend_factory.tmp / "homes" / "{username}"),
    )
    (backend_factory.tmp / "homes" / "carol").mkdir(parents=True)
    (backend_factory.tmp / "homes" / "carol").chmod(0o777)
    await b.start()
    try:
        info = docker_engines.client("h1").inspect_container(b.object_name)
        hc = info["HostConfig"]
        assert info["Config"]["User"] == "1000:100"
        assert hc["Privileged"] is False and hc["CapDrop"] == ["ALL"]
        assert hc["NanoCpus"] == 1_000_000_000 and hc["Memory"] == 2 * 1024**3
        assert not any("docker.sock" in bind for bind in hc["Binds"])
        out = run_in(docker_engines, "h1", b.object_name, "import os; print(os.getuid())")
        assert out.strip() == "1000"
    finally:
        await b.stop()


@pytest.mark.parametrize("home", ["volume", "host_dir"])
async def test_same_home_on_community_and_enterprise(backend_factory, docker_engines, home):
    """Write a file on a community server, stop, start an enterprise server, read it back."""
    if home == "volume":
        # a named volume lives on one engine: both classes' hosts on engine h1
        hosts = [community_host(docker_engines, "h1"), enterprise_hosts(docker_engines)[0]]
        traits = {}
    else:
        # shared storage (NFS in production): hosts on different engines
        hosts = [community_host(docker_engines, "h2"), enterprise_hosts(docker_engines)[0]]
        traits = {"home_host_dir": str(backend_factory.tmp / "homes" / "{username}")}
    c = backend_factory("dana", "community/rtx4090", 1, hosts=hosts, **traits)
    await c.start()
    run_in(
        docker_engines,
        docker_engines.engine_of(c),
        c.object_name,
        "import os; open(os.path.expanduser('~/notes.txt'), 'w').write('from community')",
    )
    await c.stop()
    e = backend_factory("dana", "enterprise/h100", 1, hosts=hosts, **traits)
    await e.start()
    try:
        assert e.host_name == "h1"
        out = run_in(
            docker_engines,
            "h1",
            e.object_name,
            "import os; print(open(os.path.expanduser('~/notes.txt')).read())",
        )
        assert out.strip() == "from community"
    finally:
        await e.stop()


async def test_host_failure_releases_gpus_and_moves_launches(backend_factory, docker_engines):
    """Stop engine h2: its server is reported stopped, its GPUs freed; launches go to h1;
    once nothing fits the launch is refused with 429 and Retry-After."""
    hosts = enterprise_hosts(docker_engines)
    on_h2 = backend_factory("erin", "enterprise/h100", 2, hosts=hosts)
    await on_h2.start()
    assert on_h2.host_name == "h2"
    docker_engines.stop("h2")
    try:
        status = await on_h2.poll()
        assert status is not None and "unreachable" in str(status)
        assert allocator(backend_factory).active(host="h2") == []
        big = backend_factory("frank", "enterprise/h100", 8, hosts=hosts)
        await big.start()
        assert big.host_name == "h1"
        # h2 counts as free in the database but its engine is down; h1 is full
        more = backend_factory("gina", "enterprise/h100", 4, hosts=hosts)
        with pytest.raises(web.HTTPError) as e:
            await more.start()
        assert e.value.status_code == 429
        assert e.value.headers == {"Retry-After": "60"}
        assert "No capacity for 4 x H100 80GB" in e.value.jupyterhub_message
        await on_h2.stop()  # the hub stops a dead server: must not fail on a dead engine
        await big.stop()
    finally:
        docker_engines.start("h2")


async def test_20_concurrent_launches_onto_8_gpus(backend_factory, docker_engines):
    hosts = enterprise_hosts(docker_engines)[:1]
    backends = [backend_factory(f"u{i}", "enterprise/h100", 1, hosts=hosts) for i in range(20)]
    results = await asyncio.gather(*(b.start() for b in backends), return_exceptions=True)
    ok = [b for b, r in zip(backends, results, strict=True) if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, web.HTTPError) and r.status_code == 429]
    try:
        assert len(ok) == 8 and len(refused) == 12, results
        seen = [
            container_env(docker_engines, "h1", b.object_name)["NVIDIA_VISIBLE_DEVICES"] for b in ok
        ]
        assert len(set(seen)) == 8
    finally:
        await asyncio.gather(*(b.stop() for b in ok))


async def test_restart_readopts_and_reconciler_cleans_up(backend_factory, docker_engines):
    """Three servers survive a hub restart (state round trip); the backend's reconciliation hook, handed
    the servers the hub knows, removes an unknown container and an unknown allocation, and closes one
    whose container vanished."""
    hosts = enterprise_hosts(docker_engines)
    first = [backend_factory(f"r{i}", "enterprise/h100", 2, hosts=hosts) for i in range(3)]
    for b in first:
        await b.start()
    states = [b.get_state() for b in first]
    held_before = {a.gpu_uuid: a.owner for a in allocator(backend_factory).active()}
    assert len(held_before) == 6

    # "restart": fresh spawner objects that only have the saved state
    again = []
    for b, state in zip(first, states, strict=True):
        n = backend_factory(b.user.name, "enterprise/h100", 2, hosts=hosts)
        n.load_state(state)
        again.append(n)
    assert [await n.poll() for n in again] == [None, None, None]
    assert {a.gpu_uuid: a.owner for a in allocator(backend_factory).active()} == held_before
    newcomer = backend_factory("s0", "enterprise/h100", 2, hosts=hosts)
    await newcomer.start()
    held = [a.gpu_uuid for a in allocator(backend_factory).active()]
    assert len(held) == len(set(held)) == 8

    # an orphan container (labelled by this hub, unknown to the database) ...
    client = docker_engines.client("h1")
    orphan = client.create_container(
        TEST_IMAGE,
        [PY, "-c", "import time; time.sleep(600)"],
        name=f"{backend_factory.hub_label}-orphan",
        labels={
            "hybridhub.hub": backend_factory.hub_label,
            "hybridhub.owner": f"{backend_factory.hub_label}/jupyter-ghost",
        },
        host_config=client.create_host_config(
            binds={p: {"bind": p, "mode": "ro"} for p in backend_factory.binds}, network_mode="host"
        ),
    )
    client.start(orphan["Id"])
    # ... an allocation whose server the hub does not know, and a container that vanished
    alloc = allocator(backend_factory)
    with alloc.db.session() as s:
        s.add(
            GpuAllocation(
                host="h1",
                gpu_uuid="GPU-not-on-any-container",
                owner=f"{newcomer.hub_label}/jupyter-lost",
                model="",
                username="lost",
                server_name="",
                offering="",
                allocated_at=utcnow() - timedelta(hours=1),
            )
        )
    vanished = again[0]
    docker_engines.client(vanished.host_name).remove_container(vanished.object_name, force=True)
    with alloc.db.session() as s:  # age the real allocations past the grace period
        s.query(GpuAllocation).update({"allocated_at": utcnow() - timedelta(hours=1)})

    servers = [KnownServer(n.user.name, "", n.get_state()) for n in [*again[1:], newcomer]]
    report = await DockerBackend.reconcile(servers, newcomer.config)
    assert f"{backend_factory.hub_label}-orphan" in report.removed
    assert set(report.released) == {vanished.owner, f"{newcomer.hub_label}/jupyter-lost"}
    owners = {a.owner for a in alloc.active()}
    assert owners == {n.owner for n in again[1:]} | {newcomer.owner}
    assert [await n.poll() for n in again[1:]] == [None, None]
    for n in [*again[1:], newcomer]:
        await n.stop()
    assert alloc.active() == []


def test_known_owners():
    """The docker hook's view of the hub's servers: the container names in their backends' states."""
    known = [
        KnownServer("alice", "", {"object_name": "jupyter-alice"}),
        KnownServer("alice", "gpu", {"object_name": "jupyter-alice--gpu"}),
        KnownServer("alice", "idle", {}, pending="spawn"),  # no container yet
    ]
    assert known_owners(known, "hh") == {"hh/jupyter-alice", "hh/jupyter-alice--gpu"}
