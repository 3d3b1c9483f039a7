"""The ``docker`` backend: notebook servers in containers on GPU hosts running Docker Engine.

For each launch it picks a host from :class:`hybridhub.backends.inventory.GpuInventory`
with ``count`` free GPUs of the offering's model (best fit, see
:mod:`hybridhub.accounting.allocations`), records one allocation row per GPU, and creates the
container on that host's engine with those GPUs as device requests (and their
UUIDs in ``NVIDIA_VISIBLE_DEVICES``).  The container config is built by the
pure function :func:`container_config`, so its security properties are unit
tested without an engine.  The per-user home is a named volume (or a per-user
host directory on shared storage), mounted at the same path on every class.

The synchronous Docker SDK runs in a thread pool (never on the hub's loop);
each host has its own client.  A host that stops answering makes ``poll``
report its servers stopped and release their GPUs.  :class:`Reconciler` makes
the engines and the allocation table agree after a crash or a hub restart.

Modules: ``engines`` (a client per engine, the thread pool), ``container`` (the pure container
config and the labels), ``mixin`` (what ``docker`` and ``swarm`` share), ``backend`` (the
spawner) and ``reconcile``; every name is importable from here.
"""

from hybridhub.backends.docker.backend import DockerBackend, candidates_for
from hybridhub.backends.docker.container import (
    DOCKER_SOCKET_PATHS,
    LABEL_GPUS,
    LABEL_HOST,
    LABEL_HUB,
    LABEL_OFFERING,
    LABEL_OWNER,
    LABEL_USER,
    ContainerSpec,
    HomeMount,
    check_binds,
    container_config,
)
from hybridhub.backends.docker.engines import ENGINE_DOWN_ERRORS, docker_executor, engine_client, engine_down
from hybridhub.backends.docker.mixin import ContainerBackendMixin
from hybridhub.backends.docker.reconcile import Reconciler, ReconcileReport, known_owners

__all__ = [
    "DOCKER_SOCKET_PATHS", "ENGINE_DOWN_ERRORS", "LABEL_GPUS", "LABEL_HOST", "LABEL_HUB", "LABEL_OFFERING",
    "LABEL_OWNER", "LABEL_USER", "ContainerBackendMixin", "ContainerSpec", "DockerBackend", "HomeMount",
    "ReconcileReport", "Reconciler", "candidates_for", "check_binds", "container_config", "docker_executor",
    "engine_client", "engine_down", "known_owners",
]
