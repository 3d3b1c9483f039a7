"""Reconciliation: make the engines and the allocation table agree after a crash or a hub restart."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from docker.errors import NotFound

from hybridhub.accounting.allocations import Allocator, utcnow
from hybridhub.backends.base import KnownServer
from hybridhub.backends.docker.container import LABEL_HUB, LABEL_OWNER
from hybridhub.backends.docker.engines import engine_client, engine_down
from hybridhub.backends.inventory import GpuInventory, Host

log = logging.getLogger("hybridhub.docker")

#: Docker's label on the containers of a swarm service's tasks.
SWARM_TASK_LABEL = "com.docker.swarm.service.id"


@dataclass
class ReconcileReport:
    """What one reconciliation pass did."""

    removed_containers: list[str] = field(default_factory=list)
    released_owners: list[str] = field(default_factory=list)
    unreachable_hosts: list[str] = field(default_factory=list)


class Reconciler:
    """Make the engines and the allocation table agree (after a crash or a hub restart).

    - a container labelled with this hub whose owner holds no active allocation, or is not
      among ``known_owners`` (the servers the hub knows, :func:`known_owners`), is removed;
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
                if SWARM_TASK_LABEL in c["Labels"]:
                    continue  # a swarm service's task: the swarm backend's hook judges its service
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


def known_owners(known: Iterable[KnownServer], hub_label: str = "hybridhub") -> set[str]:
    """Allocation owners (``<hub_label>/<container name>``) of the hub's known docker servers."""
    return {f"{hub_label}/{s.state['object_name']}" for s in known if s.state.get("object_name")}
