"""The container config built for a launch (pure function, no engine): security and limits."""

from __future__ import annotations

import pytest

from hybridhub.backends.docker import ContainerSpec, DockerBackend, HomeMount, container_config
from hybridhub.backends.swarm import SwarmBackend


def production_spec(**overrides) -> ContainerSpec:
    """What DockerBackend builds with its production defaults for a 2 x H100 launch."""
    spec = dict(
        name="jupyter-alice",
        image="quay.io/jupyter/pytorch-notebook:2025-06-02",
        command=["start-singleuser.py", "--ip=10.0.0.7", "--port=41234"],
        env={"JUPYTERHUB_API_TOKEN": "secret"},
        labels={"hybridhub.hub": "hybridhub"},
        home=HomeMount("volume", "hybridhub-home-alice", "/home/jovyan"),
        user=DockerBackend.run_as.default_value,
        gpu_uuids=("GPU-aaaa", "GPU-bbbb"),
        device_requests=DockerBackend.device_requests.default_value,
        cpu_limit=8.0,
        mem_limit="64G",
        pids_limit=DockerBackend.pids_limit.default_value,
    )
    spec.update(overrides)
    return ContainerSpec(**spec)


def test_production_container_is_non_root_unprivileged_and_limited():
    kw = container_config(production_spec())
    hc = kw["host_config"]
    assert kw["user"] == "1000:100"
    assert hc["privileged"] is False
    assert hc["cap_drop"] == ["ALL"] and "cap_add" not in hc
    assert "no-new-privileges" in hc["security_opt"]
    assert hc["nano_cpus"] == 8_000_000_000
    assert hc["mem_limit"] == "64G"
    assert hc["pids_limit"] == 4096
    assert not any(
        "docker.sock" in src or "docker.sock" in b["bind"] for src, b in hc["binds"].items()
    )
    assert hc["network_mode"] == "host"


def test_gpus_are_device_requests_and_visible_devices():
    kw = container_config(production_spec())
    assert kw["host_config"]["device_requests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["GPU-aaaa", "GPU-bbbb"], "Capabilities": [["gpu"]]}
    ]
    assert kw["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    off = container_config(production_spec(device_requests=False))
    assert "device_requests" not in off["host_config"]
    assert off["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    none = container_config(production_spec(gpu_uuids=()))
    assert none["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_home_is_mounted_read_write_and_system_binds_read_only():
    kw = container_config(production_spec(read_only_binds={"/usr": "/usr"}))
    binds = kw["host_config"]["binds"]
    assert binds["hybridhub-home-alice"] == {"bind": "/home/jovyan", "mode": "rw"}
    assert binds["/usr"] == {"bind": "/usr", "mode": "ro"}
    assert kw["environment"]["HOME"] == "/home/jovyan"
    assert "/home/jovyan" in kw["volumes"]


@pytest.mark.parametrize(
    "binds",
    [
        {"/var/run/docker.sock": "/var/run/docker.sock"},
        {"/run/docker.sock": "/tmp/d.sock"},
        {"/srv/x/docker.sock": "/x"},
    ],
)
def test_docker_socket_is_refused(binds):
    with pytest.raises(ValueError, match="Docker socket"):
        container_config(production_spec(read_only_binds=binds))


@pytest.mark.parametrize("extra", [{"privileged": True}, {"cap_add": ["SYS_ADMIN"]}])
def test_extra_host_config_cannot_grant_privileges(extra):
    with pytest.raises(ValueError, match="unprivileged"):
        container_config(production_spec(extra_host_config=extra))


def test_no_limits_when_offering_has_none():
    hc = container_config(production_spec(cpu_limit=None, mem_limit=None))["host_config"]
    assert "nano_cpus" not in hc and "mem_limit" not in hc


@pytest.mark.parametrize("cls", [DockerBackend, SwarmBackend])
def test_every_configurable_trait_has_help(cls):
    own = [n for n in cls.class_own_traits(config=True)]
    assert own
    missing = [n for n in own if not cls.class_traits()[n].help]
    assert missing == []
