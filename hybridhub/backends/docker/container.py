"""The container config: a pure function of plain data (its security properties are unit tested
without an engine), and the labels that mark a container or service as this hub's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Labels put on every container this backend creates.
LABEL_HUB = "hybridhub.hub"
LABEL_OWNER = "hybridhub.owner"
LABEL_USER = "hybridhub.user"
LABEL_HOST = "hybridhub.host"
LABEL_GPUS = "hybridhub.gpus"
LABEL_OFFERING = "hybridhub.offering"

DOCKER_SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class HomeMount:
    """The per-user home: a named ``volume`` or a host directory (``bind``) at ``target``."""

    kind: str
    source: str
    target: str


@dataclass
class ContainerSpec:
    """Everything :func:`container_config` needs; plain data, no engine."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    home: HomeMount | None
    user: str = ""
    gpu_uuids: tuple[str, ...] = ()
    device_requests: bool = True
    cpu_limit: float | None = None
    mem_limit: str | int | None = None
    network_mode: str = "host"
    pids_limit: int | None = 1024
    read_only_binds: dict[str, str] = field(default_factory=dict)
    tmpfs: dict[str, str] = field(default_factory=lambda: {"/tmp": "rw,nosuid,nodev,size=1g"})
    extra_host_config: dict[str, Any] = field(default_factory=dict)


def check_binds(binds: dict[str, dict[str, str]]) -> None:
    """Refuse any bind that would hand a notebook the Docker socket (root on the host)."""
    for source, b in binds.items():
        if (
            source.rstrip("/") in DOCKER_SOCKET_PATHS
            or source.endswith("docker.sock")
            or (b["bind"].endswith("docker.sock"))
        ):
            raise ValueError(f"refusing to mount the Docker socket into a notebook ({source})")


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """``create_container`` kwargs, with ``host_config`` as ``create_host_config`` kwargs.

    Always unprivileged, with every capability dropped, ``no-new-privileges``,
    no Docker socket, and the CPU/memory limits given; the GPUs are device
    requests (when enabled) and ``NVIDIA_VISIBLE_DEVICES``.
    """
    binds: dict[str, dict[str, str]] = {}
    for source, target in spec.read_only_binds.items():
        binds[source] = {"bind": target, "mode": "ro"}
    if spec.home is not None:
        binds[spec.home.source] = {"bind": spec.home.target, "mode": "rw"}
    check_binds(binds)
    env = dict(spec.env)
    env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpu_uuids) if spec.gpu_uuids else "void"
    if spec.gpu_uuids:
        env.setdefault("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    if spec.home is not None:
        env["HOME"] = spec.home.target
    host_config: dict[str, Any] = {
        "binds": binds,
        "network_mode": spec.network_mode,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "tmpfs": dict(spec.tmpfs),
        "auto_remove": False,
    }
    if spec.pids_limit:
        host_config["pids_limit"] = spec.pids_limit
    if spec.cpu_limit:
        host_config["nano_cpus"] = int(spec.cpu_limit * 1e9)
    if spec.mem_limit:
        host_config["mem_limit"] = spec.mem_limit
    if spec.gpu_uuids and spec.device_requests:
        host_config["device_requests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_uuids), "Capabilities": [["gpu"]]}
        ]
    for key, value in spec.extra_host_config.items():
        if key in ("privileged", "cap_add") and value:
            raise ValueError(f"extra_host_config may not set {key}: notebooks run unprivileged")
        host_config[key] = value
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "command": list(spec.command),
        "environment": env,
        "labels": dict(spec.labels),
        "volumes": sorted(b["bind"] for b in binds.values()),
        "host_config": host_config,
    }
    if spec.user:
        kwargs["user"] = spec.user
    return kwargs
