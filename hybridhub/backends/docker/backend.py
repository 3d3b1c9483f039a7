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
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Dict, Float, Int, Unicode, default
from traitlets.config import Config

from hybridhub.accounting.allocations import Allocator, Candidate, NoCapacity, Placement, allocator_for, utcnow
from hybridhub.backends.base import BackendMixin, db_url_from_config, free_counts
from hybridhub.backends.inventory import GpuInventory, Host
from hybridhub.errors import ConfinementError, no_capacity_error

log = logging.getLogger("hybridhub.docker")

#: Labels put on every container this backend creates.
LABEL_HUB = "hybridhub.hub"
LABEL_OWNER = "hybridhub.owner"
LABEL_USER = "hybridhub.user"
LABEL_HOST = "hybridhub.host"
LABEL_GPUS = "hybridhub.gpus"
LABEL_OFFERING = "hybridhub.offering"

DOCKER_SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")

#: Errors that mean "the engine did not answer" (as opposed to "it said no").
ENGINE_DOWN_ERRORS = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)

_executor: ThreadPoolExecutor | None = None


def docker_executor(threads: int = 16) -> ThreadPoolExecutor:
    """The process-wide thread pool for blocking Docker SDK calls."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(threads, thread_name_prefix="hybridhub-docker")
    return _executor


_clients: dict[tuple[str, float], docker.APIClient] = {}


def engine_client(url: str, timeout: float = 10, tls: dict | None = None) -> docker.APIClient:
    """A cached low-level client for the engine at ``url`` (blocking: call in a thread)."""
    key = (url, timeout)
    client = _clients.get(key)
    if client is None:
        kwargs: dict[str, Any] = {"base_url": url, "version": "auto", "timeout": timeout}
        if tls:
            kwargs["tls"] = docker.tls.TLSConfig(**tls)
        client = docker.APIClient(**kwargs)
        _clients[key] = client
    return client


def engine_down(exc: BaseException) -> bool:
    """Whether ``exc`` says the engine is unreachable (not merely an API error)."""
    if isinstance(exc, APIError):
        return False
    if isinstance(exc, ENGINE_DOWN_ERRORS):
        return True
    # docker.APIClient(version="auto") wraps a refused connection in DockerException
    return isinstance(exc, DockerException) and "Error while fetching server API version" in str(
        exc
    )


# --- the container config: a pure function --------------------------------------------------


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


# --- configuration helpers shared by the classmethods -----------------------------------------


def candidates_for(inventory: GpuInventory, offering) -> list[Candidate]:
    """The allocation candidates (host name and matching GPU UUIDs) for ``offering``."""
    return [
        Candidate(h.name, tuple(g.uuid for g in gpus)) for h, gpus in inventory.candidates(offering)
    ]


class ContainerBackendMixin(BackendMixin):
    """What the ``docker`` and ``swarm`` backends share (a DockerSpawner comes after it).

    Host networking on a random port, the per-user home, the image and limits of the
    offering, GPU allocation records, the readiness probe, and the GPUs, address and
    port kept in the state, with the traits for all of it.  The subclass names the trait that
    says where the server runs (:attr:`placement_key`) and what an unreachable engine means
    (:meth:`_unreachable`).
    """

    #: Failed readiness probes between checks that the server has not died (0: never check).
    died_check_every: ClassVar[int] = 0
    #: The state key and trait naming where the server runs.
    placement_key: ClassVar[tuple[str, str]] = ("host", "host_name")

    @classmethod
    def host_labels(cls, offering, config: Config) -> list[Mapping[str, str]]:
        """The inventory labels of every host the offering may land on."""
        return [host.labels for host, _gpus in GpuInventory(config=config).candidates(offering)]

    hub_label = Unicode(
        "hybridhub",
        help="Value of the `hybridhub.hub` label on every container or service this hub creates. "
        "The reconciler only ever removes what carries it, so give each hub its own.",
    ).tag(config=True)

    image_override = Unicode(
        "",
        help="Run this image for every offering instead of the offering's `image` "
        "(air-gapped sites, tests).",
    ).tag(config=True)

    home_volume = Unicode(
        "hybridhub-home-{username}",
        help="Per-user named volume mounted as the home ({username} is the escaped user name). "
        "A named volume lives on one engine: for several hosts use `home_host_dir` on shared "
        "storage, or a volume driver that every host reaches (docs/docker.md).",
    ).tag(config=True)

    home_host_dir = Unicode(
        "",
        help="Per-user host directory mounted as the home, e.g. /srv/homes/{username} on an NFS "
        "mount present on every GPU host. When set it wins over `home_volume`.",
    ).tag(config=True)

    home_path = Unicode(
        "/home/jovyan",
        help="Where the home is mounted inside the container (HOME points there). Keep it the "
        "same on every class so notebooks move unchanged.",
    ).tag(config=True)

    run_as = Unicode(
        "1000:100",
        help="uid:gid the server runs as (the docker-stacks `jovyan` user). Empty keeps the "
        "image's user; tests on root-only images set it empty and pass --allow-root.",
    ).tag(config=True)

    read_only_binds = Dict(
        help="Host path -> container path, mounted read-only wherever the server runs (tests "
        "bind the host's /usr, /lib, /etc and the Python environment into an empty image).",
    ).tag(config=True)

    allocation_db_url = Unicode(
        "",
        help="SQLAlchemy URL of the database holding GPU allocations. Empty: the owning "
        "HybridSpawner's `db_url` (one database for accounting and allocations).",
    ).tag(config=True)

    api_timeout = Float(
        10.0,
        help="Seconds a Docker Engine (or the swarm manager) may take to answer one API call "
        "before it counts as unreachable.",
    ).tag(config=True)

    ready_poll_interval = Float(
        0.02,
        help="Seconds between readiness probes of the new server before start() returns "
        "(answering fast here saves the hub's slower back-off poll). 0 disables the probe.",
    ).tag(config=True)

    _gpus: tuple[str, ...] = ()

    @default("network_name")
    def _default_network_name(self):
        return "host"

    @default("use_internal_ip")
    def _default_use_internal_ip(self):
        return True

    @default("name_template")
    def _default_name_template(self):
        return "{prefix}-{username}--{servername}" if self.name else "{prefix}-{username}"

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def executor(self):
        """The shared thread pool for Docker SDK calls."""
        return docker_executor()

    @property
    def db_url(self) -> str:
        """The allocation database URL."""
        if self.allocation_db_url:
            return self.allocation_db_url
        if self.context is not None and self.context.db_url:
            return self.context.db_url
        return db_url_from_config(self.config)

    @property
    def allocator(self) -> Allocator:
        """The allocator on :attr:`db_url`."""
        return allocator_for(self.db_url)

    @property
    def owner(self) -> str:
        """The allocation owner key: this hub and this server's container or service name."""
        return f"{self.hub_label}/{self.object_name}"

    @property
    def placed_on(self) -> str:
        """Name of the host (or swarm node) the server runs on; empty before placement."""
        return getattr(self, self.placement_key[1])

    def _in_thread(self, fn: Callable, *args, **kwargs):
        return asyncio.wrap_future(self.executor.submit(fn, *args, **kwargs))

    def _allocator_call(self, method: str, *args, **kwargs):
        """``self.allocator.<method>(...)`` in the worker thread (the first ``allocator`` use reads the database)."""
        return self._in_thread(lambda: getattr(self.allocator, method)(*args, **kwargs))

    async def _release(self, reason: str) -> int:
        """Release this server's GPU allocations; how many were released."""
        if not self.object_name:
            return 0
        return await self._allocator_call("release", owner=self.owner, reason=reason)

    # --- the container --------------------------------------------------------------------

    def _apply_offering(self) -> None:
        """Take the image (unless overridden) and the CPU/memory limits from the offering."""
        if self.image_override:
            self.image = self.image_override
        elif self.offering is not None:
            self.image = self.offering.image
        if self.offering is not None:
            if self.offering.cpu_limit:
                self.cpu_limit = self.offering.cpu_limit
            if self.offering.mem_limit:
                self.mem_limit = self.offering.mem_limit

    def home_mount(self) -> HomeMount:
        """The per-user home: host directory if configured, else the named volume."""
        ns = self.template_namespace()
        if self.home_host_dir:
            return HomeMount("bind", self.home_host_dir.format(**ns), self.home_path)
        return HomeMount("volume", self.home_volume.format(**ns), self.home_path)

    def get_args(self):
        """Listen on the host's address and our chosen port (host networking)."""
        args = list(super().get_args())
        if self.network_name == "host":
            args += [f"--ip={self.ip}", f"--port={self.port}"]
        return args

    # --- lifecycle ------------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> str:
        """The status (and release reason) when the engine does not answer ``poll``."""
        raise NotImplementedError

    async def poll(self):
        """None while running; once it stopped or its engine is unreachable, a status (GPUs released)."""
        try:
            status = await super().poll()
        except Exception as e:
            if not engine_down(e):
                raise
            status = self._unreachable(e)
            await self._release(status)
            return status
        if status is not None:
            await self._release(f"exited: {status}")
        return status

    # --- state --------------------------------------------------------------------------------

    def _placement_state(self) -> dict:
        """The GPUs, address and port for :meth:`get_state` (with where the server runs)."""
        return {"gpus": list(self._gpus), "port": self.port, "ip": self.ip}

    def get_state(self):
        """Container or service id and name, where it runs, GPUs, address and port."""
        state = super().get_state()
        if self.placed_on or self.object_id:
            state.update({self.placement_key[0]: self.placed_on}, **self._placement_state())
        return state

    def load_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().load_state(state)
        key, trait = self.placement_key
        setattr(self, trait, state.get(key, "") or "")
        self._gpus = tuple(state.get("gpus") or ())
        if state.get("port"):
            self.port = int(state["port"])
        if state.get("ip"):
            self.ip = state["ip"]

    def clear_state(self):
        """Forget where it ran and the GPUs once the server is gone."""
        super().clear_state()
        setattr(self, self.placement_key[1], "")
        self._gpus = ()

    def hide_paths(self, paths: list[str]) -> None:
        """Mount an empty read-only tmpfs over each folder of the home."""
        from docker.types import Mount

        extra = self.extra_host_config or {}
        if callable(extra):
            raise ConfinementError("extra_host_config is callable; cannot add the hiding mounts")
        mounts = list(extra.get("mounts") or [])
        for p in paths:
            mounts.append(
                Mount(posixpath.join(self.home_path, p), None, type="tmpfs", read_only=True,
                      tmpfs_size=16384, tmpfs_mode=0o555)
            )
        self.extra_host_config = {**extra, "mounts": mounts}

    async def image_identity(self) -> dict[str, str]:
        """``image_id`` and ``image_digest`` (the repository digest) from the Docker Engine.

        A Swarm service carries the digest in its spec; empty when the engine does not answer.
        """
        if not self.object_id or self.object_type not in ("container", "service"):
            return {}
        try:
            if self.object_type == "service":  # Swarm pins the image by digest in the service spec
                spec = (await self.docker("inspect_service", self.object_id))["Spec"]["TaskTemplate"]
                image = spec["ContainerSpec"]["Image"]
                return {"image_digest": image} if "@sha256:" in image else {}
            info = await self.docker("inspect_container", self.object_id)
            image_id = info.get("Image") or ""
            out = {"image_id": image_id} if image_id else {}
            if image_id:
                digests = (await self.docker("inspect_image", image_id)).get("RepoDigests") or []
                if digests:
                    out["image_digest"] = digests[0]
            return out
        except Exception as e:  # the record is still written, without the digest
            self.log.warning("Could not inspect the image of %s: %s", self.object_id, e)
            return {}

    def provenance(self) -> dict[str, object]:
        """Host, GPU UUIDs, image and container (or service) id."""
        return {
            "host": self.placed_on,
            "gpus": list(self._gpus),
            "image": self.image,
            self.object_type: self.object_id,
        }


class DockerBackend(ContainerBackendMixin, DockerSpawner):
    """Run the server in a container on a GPU host with enough free GPUs of the wanted model."""

    device_requests = Bool(
        True,
        help="Pass the allocated GPUs as Docker device requests (needs the NVIDIA container "
        "runtime on the host). Turn off on hosts without it (tests); the UUIDs are in "
        "NVIDIA_VISIBLE_DEVICES either way.",
    ).tag(config=True)

    pids_limit = Int(
        4096, help="Most processes (and threads) a notebook container may run; 0 for no limit."
    ).tag(config=True)

    reconcile_interval = Float(
        300.0,
        help="Seconds between reconciliation passes in the hub (remove this hub's containers "
        "that the hub's database does not know, release allocations whose container "
        "vanished). 0 turns the loop off.",
    ).tag(config=True)

    reconcile_grace = Float(
        120.0,
        help="Seconds a new allocation is left alone by the reconciler (its container may "
        "still be starting).",
    ).tag(config=True)

    host_name = Unicode("", help="Inventory name of the host the server runs on (state).")

    @default("remove")
    def _default_remove(self):
        return True

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"

    # --- plumbing ---------------------------------------------------------------------------

    died_check_every = 25

    @property
    def inventory(self) -> GpuInventory:
        """The configured GPU inventory."""
        return GpuInventory(config=self.config)

    @property
    def host(self) -> Host | None:
        """The inventory entry of the host this server runs on."""
        return self.inventory.host(self.host_name) if self.host_name else None

    @property
    def client(self):
        """The client of this server's host (blocking on first use: only call in the executor)."""
        host = self.host
        if host is None:
            raise RuntimeError("no host chosen yet")
        return engine_client(host.url, self.api_timeout, self.tls_config or None)

    # --- reconciliation loop (one per hub process) ---------------------------------------------

    _reconciler_task: ClassVar[asyncio.Task | None] = None

    def _ensure_reconciler(self) -> None:
        if self.reconcile_interval <= 0 or DockerBackend._reconciler_task is not None:
            return
        DockerBackend._reconciler_task = asyncio.ensure_future(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        hub_db = self.db if self.db is not None else getattr(self.context, "hub_db", None)
        reconciler = Reconciler(
            self.inventory,
            self.allocator,
            hub_label=self.hub_label,
            grace=timedelta(seconds=self.reconcile_grace),
            api_timeout=self.api_timeout,
        )
        delay = min(60.0, self.reconcile_interval)
        while True:
            await asyncio.sleep(delay)
            delay = self.reconcile_interval
            try:
                known = known_owners_from_hub_db(hub_db, self.hub_label) if hub_db else None
                report = await self._in_thread(reconciler.run, known)
                if report.removed_containers or report.released_owners:
                    self.log.warning("Reconciled docker hosts: %s", report)
            except Exception:
                self.log.exception("Reconciliation of docker hosts failed")

    # --- capacity ---------------------------------------------------------------------------

    @classmethod
    async def free_now(cls, offering, config: Config) -> int | None:
        """Free GPUs of ``offering``'s model over all hosts of its class (from the database)."""
        return (await cls.free_now_many([offering], config))[0]

    @classmethod
    async def free_now_many(cls, offerings, config: Config) -> list[int | None]:
        """Free GPUs of each offering, in one database read."""
        inventory = GpuInventory(config=config)
        return await free_counts(db_url_from_config(config), [candidates_for(inventory, o) for o in offerings])

    async def _allocate(self) -> Placement:
        offering, request = self.offering, self.request
        count = request.count if request is not None else 1
        cands = candidates_for(self.inventory, offering)
        what = f"{offering.model} ({offering.resource_class})"
        try:
            return await self._allocator_call(
                "allocate",
                cands,
                count,
                owner=self.owner,
                what=what,
                model=offering.model,
                username=self.user.name,
                server_name=self.name,
                offering=offering.key,
                reservation_id=getattr(self.context, "reservation_id", None),
            )
        except NoCapacity as e:
            self.log.info("No capacity for %s: %s", self._log_name, e.free_by_host)
            raise no_capacity_error(str(e)) from None

    async def _release(self, reason: str) -> int:
        n = await super()._release(reason)
        if n:
            self.log.info("Released %d GPU(s) of %s (%s)", n, self._log_name, reason)
        return n

    # --- the container --------------------------------------------------------------------

    def labels(self) -> dict[str, str]:
        """The labels identifying this container as this hub's."""
        return {
            LABEL_HUB: self.hub_label,
            LABEL_OWNER: self.owner,
            LABEL_USER: self.user.name,
            LABEL_HOST: self.host_name,
            LABEL_GPUS: ",".join(self._gpus),
            LABEL_OFFERING: self.offering.key if self.offering is not None else "",
        }

    def get_env(self):
        """Hub environment, the hardware description and the GPU UUIDs."""
        env = super().get_env()
        env.update(self.accelerator_env())
        env["HYBRIDHUB_HOST"] = self.host_name
        env["HYBRIDHUB_GPUS"] = ",".join(self._gpus)
        return env

    async def container_spec(self) -> ContainerSpec:
        """Gather this launch's :class:`ContainerSpec`."""
        return ContainerSpec(
            name=self.object_name,
            image=self.image,
            command=await self.get_command(),
            env=self.get_env(),
            labels=self.labels(),
            home=self.home_mount(),
            user=self.run_as,
            gpu_uuids=self._gpus,
            device_requests=self.device_requests,
            cpu_limit=self.cpu_limit,
            mem_limit=self.mem_limit,
            network_mode=self.network_name,
            pids_limit=self.pids_limit or None,
            read_only_binds=dict(self.read_only_binds),
            extra_host_config=dict(self.extra_host_config or {}),
        )

    async def get_command(self):
        """``cmd`` + args; the image's own command when ``cmd`` is unset."""
        if self.cmd:
            return list(self.cmd) + self.get_args()
        info = await self.docker("inspect_image", self.image)
        return list(info["Config"]["Cmd"] or []) + self.get_args()

    async def create_object(self):
        """Create the container from :func:`container_config`."""
        kwargs = container_config(await self.container_spec())
        host_config = kwargs.pop("host_config")

        def create():
            hc = self.client.create_host_config(**host_config)
            return self.client.create_container(host_config=hc, **kwargs)

        return await self._in_thread(create)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self):
        """Allocate GPUs on a host, run the container there, return once it answers."""
        self._ensure_reconciler()
        self._apply_offering()
        placement = await self._allocate()
        self.host_name, self._gpus = placement.host, tuple(placement.gpus)
        host = self.host
        self.ip = host.ip if self.network_name == "host" else self.ip
        if self.network_name == "host":
            self.port = random_port()
        self.log.info(
            "Placing %s on %s with GPUs %s", self._log_name, self.host_name, ",".join(self._gpus)
        )
        try:
            ip, port = await super().start()
            if self.ready_poll_interval:
                await self.wait_until_answering(ip, port)
        except BaseException as e:
            self.log.warning("Start of %s on %s failed: %s", self._log_name, self.host_name, e)
            await self._remove_quietly()
            await self._release("failed to start")
            raise
        return ip, port

    async def get_ip_and_port(self):
        """Host networking: the host's address and the port we chose."""
        if self.network_name == "host":
            return self.host.ip, self.port
        return await super().get_ip_and_port()

    async def poll(self):
        """None while running; a status once it exited or its host stopped answering.

        A server found gone has its GPUs released.
        """
        if not self.host_name:
            return 0
        self._ensure_reconciler()
        return await super().poll()

    def _unreachable(self, exc: BaseException) -> str:
        self.log.warning("Host %s of %s is unreachable: %s", self.host_name, self._log_name, exc)
        return f"host {self.host_name} unreachable"

    async def _remove_quietly(self) -> None:
        if not self.host_name or not self.object_name:
            return
        try:
            await self.docker("remove_container", self.object_name, force=True, v=False)
        except NotFound:
            pass
        except Exception as e:
            self.log.warning("Could not remove %s on %s: %s", self.object_name, self.host_name, e)

    async def stop(self, now=False):
        """Stop and remove the container (if its host answers), then release its GPUs."""
        if self.host_name and self.object_name:
            try:
                await self.docker("stop", self.object_name, timeout=0 if now else 5)
            except NotFound:
                pass
            except Exception as e:
                if not engine_down(e):
                    raise
                self.log.warning(
                    "Host %s unreachable while stopping %s", self.host_name, self._log_name
                )
            if self.remove:
                await self._remove_quietly()
            await self._release("stopped")
        self.object_id = ""
        self.clear_state()



# --- reconciliation ---------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    """What one reconciliation pass did."""

    removed_containers: list[str] = field(default_factory=list)
    released_owners: list[str] = field(default_factory=list)
    unreachable_hosts: list[str] = field(default_factory=list)


class Reconciler:
    """Make the engines and the allocation table agree (after a crash or a hub restart).

    - a container labelled with this hub whose owner holds no active allocation, or is not
      among ``known_owners`` (the servers the hub's database knows), is removed;
    - an active allocation whose owner the hub does not know is released;
    - an active allocation whose container vanished from its (reachable) host is released.

    Allocations younger than ``grace`` are left alone: their container may still be coming up.
    Unreachable hosts are skipped (``poll`` reports their servers stopped).
    """

    def __init__(
        self,
        inventory: GpuInventory,
        allocator: Allocator,
        *,
        hub_label: str = "hybridhub",
        grace: timedelta = timedelta(seconds=120),
        api_timeout: float = 10,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.inventory = inventory
        self.allocator = allocator
        self.hub_label = hub_label
        self.grace = grace
        self.api_timeout = api_timeout
        self.clock = clock

    def _containers(self, host: Host) -> list[dict]:
        client = engine_client(host.url, self.api_timeout)
        return client.containers(all=True, filters={"label": f"{LABEL_HUB}={self.hub_label}"})

    def run(self, known_owners: Iterable[str] | None = None) -> ReconcileReport:
        """One pass (blocking: run it in a thread)."""
        known = set(known_owners) if known_owners is not None else None
        report = ReconcileReport()
        prefix = f"{self.hub_label}/"
        cutoff = self.clock() - self.grace
        for host in self.inventory.all_hosts():
            try:
                containers = self._containers(host)
            except Exception as e:
                if not engine_down(e):
                    raise
                report.unreachable_hosts.append(host.name)
                continue
            active = [
                a for a in self.allocator.active(host=host.name) if a.owner.startswith(prefix)
            ]
            holders = {a.owner for a in active}
            young = {a.owner for a in active if a.allocated_at > cutoff}
            present = set()
            for c in containers:
                owner = c["Labels"].get(LABEL_OWNER, "")
                name = c["Names"][0].lstrip("/") if c.get("Names") else c["Id"]
                unknown = known is not None and owner not in known and owner not in young
                orphan = owner not in holders or unknown
                if orphan:
                    log.warning(
                        "Reconcile: removing %s on %s (unknown to the database)", name, host.name
                    )
                    try:
                        engine_client(host.url, self.api_timeout).remove_container(
                            c["Id"], force=True
                        )
                    except NotFound:
                        pass
                    report.removed_containers.append(name)
                    if owner in holders:
                        self.allocator.release(owner=owner, reason="reconcile: server unknown")
                        report.released_owners.append(owner)
                else:
                    present.add(owner)
            for owner in sorted(holders - present - set(report.released_owners)):
                newest = max(a.allocated_at for a in active if a.owner == owner)
                if newest > cutoff:
                    continue
                unknown = known is not None and owner not in known
                reason = "reconcile: server unknown" if unknown else "reconcile: container vanished"
                log.warning("Reconcile: releasing GPUs of %s on %s (%s)", owner, host.name, reason)
                self.allocator.release(owner=owner, reason=reason)
                report.released_owners.append(owner)
        return report


def known_owners_from_hub_db(db, hub_label: str = "hybridhub") -> set[str]:
    """Allocation owners of the servers the hub's database has (running or pending).

    Reads each ``orm.Spawner.state`` (HybridSpawner keeps the backend's state under
    ``backend_state``; a bare DockerBackend keeps it at the top level).
    """
    from jupyterhub import orm

    owners = set()
    for sp in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)):
        state = sp.state or {}
        if isinstance(state, str):
            state = json.loads(state)
        inner = state.get("backend_state") or state
        name = inner.get("object_name")
        if name:
            owners.add(f"{hub_label}/{name}")
    return owners
