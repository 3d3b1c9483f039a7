"""The ``docker`` spawner: :class:`DockerBackend`, a container per server on a host with free GPUs."""

from __future__ import annotations

from datetime import timedelta

from docker.errors import NotFound
from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Int, Unicode, default
from traitlets.config import Config

from hybridhub.accounting.allocations import Candidate, NoCapacity, Placement
from hybridhub.backends.base import KnownServer, Reconciled, db_url_from_config, free_counts
from hybridhub.backends.docker.container import (
    LABEL_GPUS,
    LABEL_HOST,
    LABEL_HUB,
    LABEL_OFFERING,
    LABEL_OWNER,
    LABEL_USER,
    ContainerSpec,
    container_config,
)
from hybridhub.backends.docker.engines import engine_client, engine_down
from hybridhub.backends.docker.mixin import ContainerBackendMixin
from hybridhub.backends.docker.reconcile import Reconciler, known_owners
from hybridhub.backends.inventory import GpuInventory, Host
from hybridhub.errors import no_capacity_error


def candidates_for(inventory: GpuInventory, offering) -> list[Candidate]:
    """The allocation candidates (host name and matching GPU UUIDs) for ``offering``."""
    return [
        Candidate(h.name, tuple(g.uuid for g in gpus)) for h, gpus in inventory.candidates(offering)
    ]


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

    # --- reconciliation (hybridhub.spawner.reconcile runs it) -------------------------------

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config: Config) -> Reconciled:
        """Remove this hub's containers that are none of ``known`` and release GPUs whose container
        vanished (:class:`~hybridhub.backends.docker.reconcile.Reconciler`, in the engines' executor)."""
        backend = cls(config=config)
        owners = known_owners(known, backend.hub_label)

        def run():  # the inventory file and the allocation database are read in the thread too
            return Reconciler(backend.inventory, backend.allocator, hub_label=backend.hub_label,
                              grace=timedelta(seconds=backend.reconcile_grace),
                              api_timeout=backend.api_timeout).run(owners)

        report = await backend._in_thread(run)
        return Reconciled(removed=report.removed_containers, released=report.released_owners)

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
        return await self._start_or_clean_up(super().start)

    def _log_failed_start(self, exc: BaseException) -> None:
        self.log.warning("Start of %s on %s failed: %s", self._log_name, self.host_name, exc)

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
