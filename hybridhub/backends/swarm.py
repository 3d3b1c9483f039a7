"""The ``swarm`` backend: one Docker Swarm service per server, GPUs as generic resources.

Every GPU host joins one swarm and advertises its GPUs in its daemon.json as
``"node-generic-resources": ["NVIDIA-GPU=<uuid>", ...]``, and carries node
labels ``hybridhub.class`` (community / enterprise) and ``hybridhub.gpu_model``
(the normalised model, e.g. ``rtx4090``, ``h10080gb``).  A launch of N GPUs is
a service asking for ``NVIDIA-GPU=N`` with placement constraints on those
labels: Swarm picks the node and the devices, and the container sees them in
``DOCKER_RESOURCE_NVIDIA-GPU`` (and, through the NVIDIA runtime's
``NVIDIA_VISIBLE_DEVICES``, uses them).  The GPUs Swarm assigned are recorded
as allocation rows too, so usage and provenance look the same as on ``docker``.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

from docker.errors import NotFound
from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    TaskTemplate,
)
from dockerspawner import SwarmSpawner
from jupyterhub.utils import random_port
from traitlets import Float, List, Unicode, default
from traitlets.config import Config

from hybridhub.accounting.allocations import Placement as GpuPlacement
from hybridhub.backends.base import KnownServer, Reconciled
from hybridhub.backends.docker.container import (
    LABEL_HUB,
    LABEL_OFFERING,
    LABEL_OWNER,
    LABEL_USER,
    ContainerSpec,
    check_binds,
)
from hybridhub.backends.docker.engines import docker_executor, engine_client, engine_down
from hybridhub.backends.docker.mixin import ContainerBackendMixin
from hybridhub.backends.docker.reconcile import known_owners
from hybridhub.errors import no_capacity_error

DEFAULT_SWARM_URL = "unix:///var/run/docker.sock"


def assigned_resources(task: dict) -> list[dict]:
    """The generic resources Swarm assigned to a task (``GenericResources`` in the task API)."""
    return task.get("GenericResources") or task.get("AssignedGenericResources") or []


def gpu_model_label(offering) -> str:
    """The ``hybridhub.gpu_model`` node label value for an offering: its normalised model."""
    name = offering.extra.get("gpu_model") or offering.model
    if not isinstance(name, str):
        name = str(name[0])
    return (
        "".join(ch for ch in name.lower() if ch.isalnum())
        .removeprefix("nvidia")
        .removeprefix("geforce")
    )


def orphan_services(services: list[dict], owners: set[str], cutoff: float) -> list[dict]:
    """The ``services`` (this hub's) whose owner label is none of ``owners``, created before ``cutoff``
    (a Unix time: younger ones may belong to a start still in flight)."""
    def created(service: dict) -> float:
        stamp = service.get("CreatedAt", "")[:19]
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp() if stamp else 0.0

    return [s for s in services
            if (s["Spec"].get("Labels") or {}).get(LABEL_OWNER, "") not in owners and created(s) < cutoff]


def service_config(
    spec: ContainerSpec, *, gpu_kind: str, gpu_count: int, constraints: list[str]
) -> dict:
    """``create_service`` keyword arguments for ``spec`` (pure: no engine).

    Same security as :func:`hybridhub.backends.docker.container_config`: non-root
    user when given, every capability dropped, no Docker socket, CPU and memory
    limits, and no restart (a server that exits is reported stopped).
    """
    binds = {src: {"bind": dst, "mode": "ro"} for src, dst in spec.read_only_binds.items()}
    if spec.home is not None:
        binds[spec.home.source] = {"bind": spec.home.target, "mode": "rw"}
    check_binds(binds)
    mounts = [
        Mount(target=dst, source=src, type="bind", read_only=True)
        for src, dst in spec.read_only_binds.items()
    ]
    if spec.home is not None:
        mounts.append(
            Mount(
                target=spec.home.target,
                source=spec.home.source,
                type="volume" if spec.home.kind == "volume" else "bind",
            )
        )
    for target in spec.tmpfs:
        mounts.append(Mount(target=target, source=None, type="tmpfs"))
    env = dict(spec.env)
    if spec.home is not None:
        env["HOME"] = spec.home.target
    container = SwarmContainerSpec(
        image=spec.image,
        args=list(spec.command),
        env=env,
        user=spec.user or None,
        labels=dict(spec.labels),
        mounts=mounts,
        cap_drop=["ALL"],
        stop_grace_period=5_000_000_000,
    )
    resources = Resources(
        cpu_limit=int(spec.cpu_limit * 1e9) if spec.cpu_limit else None,
        mem_limit=spec.mem_limit or None,
        generic_resources={gpu_kind: gpu_count} if gpu_count else None,
    )
    task = TaskTemplate(
        container_spec=container,
        resources=resources,
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=constraints or None),
        networks=[spec.network_mode] if spec.network_mode else [],
    )
    return {
        "task_template": task,
        "name": spec.name,
        "labels": dict(spec.labels),
        "endpoint_spec": EndpointSpec(),
    }


class SwarmBackend(ContainerBackendMixin, SwarmSpawner):
    """Run the server as a Swarm service; Swarm places it on a node with free GPUs."""

    swarm_url = Unicode(
        "",
        help="Docker Engine URL of a swarm manager. Empty: $DOCKER_HOST, else the local socket.",
    ).tag(config=True)

    gpu_resource_kind = Unicode(
        "NVIDIA-GPU",
        help="Name of the node generic resource that counts GPUs (daemon.json "
        '`node-generic-resources`: "NVIDIA-GPU=<uuid>").',
    ).tag(config=True)

    node_constraints = List(
        Unicode(),
        default_value=[
            "node.labels.hybridhub.class=={resource_class}",
            "node.labels.hybridhub.gpu_model=={gpu_model}",
        ],
        help="Placement constraints for a launch; {resource_class} and {gpu_model} (normalised "
        "offering model, e.g. rtx4090) are filled in. Label nodes to match "
        "(`docker node update --label-add hybridhub.class=enterprise ...`).",
    ).tag(config=True)

    task_poll_interval = Float(
        0.2, help="Seconds between checks of the new service's task while it starts."
    ).tag(config=True)

    node_name = Unicode("", help="Hostname of the node running the task (state).")

    node_id = Unicode("", help="Swarm node id of the node running the task (state).")

    placement_key = ("node", "node_name")

    @default("ready_poll_interval")
    def _default_ready_poll_interval(self):
        return 0.05

    # --- plumbing -------------------------------------------------------------------------

    @property
    def manager_url(self) -> str:
        """The swarm manager's engine URL."""
        return self.swarm_url or os.environ.get("DOCKER_HOST") or DEFAULT_SWARM_URL

    @property
    def client(self):
        """The manager's client (blocking on first use: only call in the executor)."""
        return engine_client(self.manager_url, self.api_timeout, self.tls_config or None)

    # --- reconciliation (hybridhub.spawner.reconcile runs it) -------------------------------

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config: Config) -> Reconciled:
        """Remove this hub's services that no known server holds (:func:`orphan_services`) and release
        the GPU records of their owners, in the engines' executor."""
        backend = cls(config=config)
        owners = known_owners(known, backend.hub_label)
        cutoff = time.time() - backend.reconcile_grace

        def run() -> Reconciled:
            done = Reconciled()
            client = backend.client
            for service in orphan_services(client.services(filters={"label": f"{LABEL_HUB}={backend.hub_label}"}),
                                           owners, cutoff):
                name, owner = service["Spec"]["Name"], service["Spec"]["Labels"].get(LABEL_OWNER, "")
                backend.log.warning("Reconcile: removing service %s (no such server in the hub)", name)
                try:
                    client.remove_service(service["ID"])
                except NotFound:
                    pass
                done.removed.append(name)
                if owner and backend.allocator.release(owner=owner, reason="reconcile: server unknown"):
                    done.released.append(owner)
            return done

        return await backend._in_thread(run)

    # --- capacity ---------------------------------------------------------------------------

    @classmethod
    def _free_gpus(cls, client, kind: str, labels: dict[str, str]) -> int:
        total: dict[str, set[str]] = {}
        for node in client.nodes():
            if node.get("Status", {}).get("State") != "ready":
                continue
            if node.get("Spec", {}).get("Availability") != "active":
                continue
            node_labels = node.get("Spec", {}).get("Labels") or {}
            if any(node_labels.get(k) != v for k, v in labels.items()):
                continue
            res = node.get("Description", {}).get("Resources", {}).get("GenericResources") or []
            total[node["ID"]] = {
                r["NamedResourceSpec"]["Value"]
                for r in res
                if r.get("NamedResourceSpec", {}).get("Kind") == kind
            }
        used = 0
        for task in client.tasks(filters={"desired-state": "running"}):
            if task.get("NodeID") not in total:
                continue
            for r in assigned_resources(task):
                spec = r.get("NamedResourceSpec", {})
                if spec.get("Kind") == kind and spec.get("Value") in total[task["NodeID"]]:
                    used += 1
        return sum(len(v) for v in total.values()) - used

    @classmethod
    async def free_now(cls, offering, config: Config) -> int | None:
        """Free GPUs on ready nodes labelled for ``offering`` (asks the swarm manager)."""
        section = config.SwarmBackend if "SwarmBackend" in config else {}
        url = section.get("swarm_url") or os.environ.get("DOCKER_HOST") or DEFAULT_SWARM_URL
        kind = section.get("gpu_resource_kind") or "NVIDIA-GPU"
        timeout = section.get("api_timeout") or 10.0
        labels = {
            "hybridhub.class": offering.resource_class,
            "hybridhub.gpu_model": gpu_model_label(offering),
        }

        def count():
            return cls._free_gpus(engine_client(url, timeout), kind, labels)

        try:
            return await asyncio.wrap_future(docker_executor().submit(count))
        except Exception as e:
            if engine_down(e):
                return 0
            raise

    # --- the service ------------------------------------------------------------------------

    def get_env(self):
        """Hub environment and the hardware description."""
        env = super().get_env()
        env.update(self.accelerator_env())
        return env

    async def get_command(self):
        """``cmd`` + args (the image's command when ``cmd`` is unset)."""
        if self.cmd:
            return list(self.cmd) + self.get_args()
        return await super().get_command()

    def _constraints(self) -> list[str]:
        if self.offering is None:
            return []
        ns = {
            "resource_class": self.offering.resource_class,
            "gpu_model": gpu_model_label(self.offering),
        }
        return [c.format(**ns) for c in self.node_constraints]

    async def create_object(self):
        """Create the service from :func:`service_config`."""
        count = self.request.count if self.request is not None else 0
        spec = ContainerSpec(
            name=self.object_name,
            image=self.image,
            command=await self.get_command(),
            env=self.get_env(),
            labels={
                LABEL_HUB: self.hub_label,
                LABEL_OWNER: self.owner,
                LABEL_USER: self.user.name,
                LABEL_OFFERING: self.offering.key if self.offering is not None else "",
            },
            home=self.home_mount(),
            user=self.run_as,
            cpu_limit=self.cpu_limit,
            mem_limit=self.mem_limit,
            network_mode=self.network_name,
            read_only_binds=dict(self.read_only_binds),
        )
        kwargs = service_config(
            spec, gpu_kind=self.gpu_resource_kind, gpu_count=count, constraints=self._constraints()
        )
        return await self.docker("create_service", **kwargs)

    async def start_object(self):
        """Wait until the service's task runs; a task Swarm cannot place means no capacity."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            task = await self.get_task()
            if task is None:
                await asyncio.sleep(self.task_poll_interval)
                continue
            state = task["Status"]["State"]
            if state == "running":
                return
            if state == "pending" and "insufficient resources" in task["Status"].get("Err", ""):
                raise no_capacity_error(
                    f"No capacity for {self.request.count} x {self.offering.model} "
                    f"({self.offering.resource_class}) on the swarm right now: "
                    f"{task['Status']['Err']}. Try fewer GPUs or again later."
                )
            if state in ("failed", "rejected", "shutdown", "complete", "orphaned"):
                raise RuntimeError(f"Service {self.object_name} task {state}: {task['Status']}")
            await asyncio.sleep(self.task_poll_interval)
        raise TimeoutError(f"Service {self.object_name} did not start in {self.start_timeout}s")

    async def _record_gpus(self, task: dict) -> None:
        node = await self.docker("inspect_node", task["NodeID"])
        self.node_id = task["NodeID"]
        self.node_name = node["Description"]["Hostname"]
        addr = node.get("Status", {}).get("Addr") or "127.0.0.1"
        self.ip = "127.0.0.1" if addr in ("0.0.0.0", "") else addr
        self._gpus = tuple(
            r["NamedResourceSpec"]["Value"]
            for r in assigned_resources(task)
            if r.get("NamedResourceSpec", {}).get("Kind") == self.gpu_resource_kind
        )
        if self._gpus:
            conflicts = await self._allocator_call(
                "adopt",
                GpuPlacement(f"swarm:{self.node_name}", self._gpus),
                owner=self.owner,
                model=self.offering.model if self.offering else "",
                username=self.user.name,
                server_name=self.name,
                offering=self.offering.key if self.offering else "",
            )
            if conflicts:
                self.log.error(
                    "Swarm gave %s GPUs recorded for others: %s", self.object_name, conflicts
                )

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self):
        """Create the service, wait for its task, record its GPUs, return once it answers."""
        self._apply_offering()
        if self.network_name == "host":
            self.port = random_port()
            self.ip = "0.0.0.0"
        return await self._start_or_clean_up(self._launch_service)

    async def _launch_service(self) -> tuple[str, int]:
        """Create the service, wait for its task and record its GPUs; the server's address."""
        await super().start()
        task = await self.get_task()
        await self._record_gpus(task)
        return self.ip, self.port

    async def get_ip_and_port(self):
        """Host networking: the node's address (filled in once the task runs) and our port."""
        if self.network_name == "host":
            return self.ip, self.port
        return await super().get_ip_and_port()

    async def _remove_quietly(self) -> None:
        try:
            await self.docker("remove_service", self.object_name)
        except NotFound:
            pass
        except Exception as e:
            self.log.warning("Could not remove service %s: %s", self.object_name, e)

    def _unreachable(self, exc: BaseException) -> str:
        return "swarm manager unreachable"

    async def _node_lost(self) -> str | None:
        """Why the node running the task is gone (down, or no longer in the swarm); None if it is not."""
        if not self.node_id:
            return None
        try:
            node = await self.docker("inspect_node", self.node_id)
        except NotFound:
            return f"node {self.node_name} lost: it left the swarm"
        except Exception as e:
            if engine_down(e):
                return None  # poll() reports the manager unreachable
            raise
        status = node.get("Status") or {}
        if status.get("State") in ("down", "disconnected"):
            return f"node {self.node_name} lost: {status.get('Message') or status['State']}"
        return None

    async def poll(self):
        """None while running; a text status once the task's node is down (``host lost``) or it ended.

        Swarm marks a crashed node ``down`` after a few missed heartbeats, but never fails a
        task it can no longer see; without this check the server would look alive.
        """
        lost = await self._node_lost()
        if lost:
            self.log.warning("Server %s: %s", self._log_name, lost)
            await self._release(lost)
            return lost
        return await super().poll()

    def _placement_state(self) -> dict:
        return {**super()._placement_state(), "node_id": self.node_id}

    def load_state(self, state):
        """Restore what :meth:`get_state` saved, with the node id."""
        super().load_state(state)
        self.node_id = state.get("node_id", "") or ""

    def clear_state(self):
        """Forget the node too."""
        super().clear_state()
        self.node_id = ""

    async def stop(self, now=False):
        """Remove the service and release its GPU records."""
        try:
            await self._remove_quietly()
        finally:
            await self._release("stopped")
        self.object_id = ""
        self.clear_state()

