"""DockerBackend against real Docker Engines: placement, GPUs, home, failures, restart."""

from __future__ import annotations

import pytest

from tests.fixtures.docker import DATA, fake_gpus

pytestmark = pytest.mark.docker


def hosts_two(engines) -> list[dict]:
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
            "gpus": fake_gpus("b2", "NVIDIA H100 80GB HBM3", 2),
        },
    ]


def container_env(engines, host: str, name: str) -> dict[str, str]:
    info = engines.client(host).inspect_container(name)
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


async def test_start_poll_stop(backend_factory, docker_engines):
    hosts = hosts_two(docker_engines)
    b = backend_factory("alice", "enterprise/h100", 2, hosts=hosts)
    ip, port = await b.start()
    assert (ip, port) == ("127.0.0.1", b.port)
    assert await b.poll() is None
    env = container_env(docker_engines, b.host_name, b.object_name)
    assert len(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == 2
    await b.stop()
    assert await b.poll() == 0
