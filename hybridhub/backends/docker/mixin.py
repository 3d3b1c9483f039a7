"""What the ``docker`` and ``swarm`` backends share: :class:`ContainerBackendMixin`."""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar

from traitlets import Dict, Float, Unicode, default
from traitlets.config import Config

from hybridhub.accounting.allocations import Allocator, allocator_for
from hybridhub.backends.base import BackendMixin, db_url_from_config
from hybridhub.backends.docker.container import HomeMount
from hybridhub.backends.docker.engines import docker_executor, engine_down
from hybridhub.backends.inventory import GpuInventory
from hybridhub.errors import ConfinementError


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

    reconcile_grace = Float(
        120.0,
        help="Seconds a new allocation (docker) or service (swarm) is left alone by the backend's "
        "reconciliation hook: its server may still be starting.",
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

    async def _remove_quietly(self) -> None:
        """Remove the container or service, if there is one; never raises."""
        raise NotImplementedError

    def _log_failed_start(self, exc: BaseException) -> None:
        """Say why a start failed, before its clean-up (default: nothing; the hub reports the error)."""

    async def _start_or_clean_up(self, launch: Callable[[], Awaitable[tuple[str, int]]]) -> tuple[str, int]:
        """Await ``launch()`` (create and start the container or service: its address), then wait until
        the server answers; on any failure (a cancelled start too) remove what was created and release
        the GPUs before the error goes on."""
        try:
            ip, port = await launch()
            if self.ready_poll_interval:
                await self.wait_until_answering(ip, port)
        except BaseException as e:
            self._log_failed_start(e)
            await self._remove_quietly()
            await self._release("failed to start")
            raise
        return ip, port

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
