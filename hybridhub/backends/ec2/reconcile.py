"""Make AWS agree with the hub: what :meth:`Ec2Backend.reconcile <hybridhub.backends.ec2.Ec2Backend.reconcile>`
does with the servers the hub knows.

A hub that dies in the middle of a launch (or loses its database) can leave an instance running that
no server points at, and a server can outlive its instance.  Comparing the instances tagged with this
hub's id with the hub's known servers, a pass

* terminates instances no known server holds; a launch still in flight (a server whose ``pending``
  is ``"spawn"``, matched by the instance's user and server tags) is spared, and with
  ``shutdown_action='stop'`` stopped instances are kept for the user's next launch;
* reports known servers whose instance is gone (in this region), which the runner stops through the
  hub, so the hub and accounting close them.

The open reservations of a launch its dead hub was admitting are closed by the runner
(:attr:`Ec2Backend.orphan_reservations <hybridhub.backends.base.BackendMixin.orphan_reservations>`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from hybridhub.backends.base import KnownServer, Reconciled
from hybridhub.tags import TAG_HUB, TAG_SERVER, TAG_USER

#: Instance states a reconciliation pass looks at (terminated ones are gone already).
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def orphan_instances(instances: Iterable[dict], known: Iterable[KnownServer],
                     shutdown_action: str = "terminate") -> tuple[list[str], list[str]]:
    """The ids of ``instances`` to terminate (no known server holds them), and of those spared because
    their server is still starting."""
    known = list(known)
    held = {s.state.get("instance_id") for s in known if s.state.get("instance_id")}
    in_flight = {(s.user, s.server) for s in known if s.pending == "spawn"}
    orphans, kept = [], []
    for inst in instances:
        iid = inst["InstanceId"]
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        if iid in held:
            continue
        if (tags.get(TAG_USER, ""), tags.get(TAG_SERVER, "")) in in_flight:
            kept.append(iid)
        elif not (inst["State"]["Name"] == "stopped" and shutdown_action == "stop"):
            orphans.append(iid)
    return orphans, kept


def gone_servers(instances: Iterable[dict], known: Iterable[KnownServer], region: str) -> list[tuple[str, str]]:
    """``(user, server)`` of the settled known servers in ``region`` whose instance is not among ``instances``."""
    existing = {i["InstanceId"] for i in instances}
    return [
        (s.user, s.server) for s in known
        if s.state.get("instance_id") and s.pending is None and s.state["instance_id"] not in existing
        and (s.state.get("region") or region) == region
    ]


async def reconcile_instances(backend, known: list[KnownServer]) -> Reconciled:
    """One pass for ``backend`` (an ``Ec2Backend`` built from the hub's config: its region, endpoint,
    ``hub_id`` and ``shutdown_action``); boto3 runs in a worker thread."""
    ec2 = backend.client("ec2", backend.region)
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{TAG_HUB}", "Values": [backend.hub_id]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ])
    instances = await asyncio.to_thread(lambda: [i for p in pages for r in p["Reservations"] for i in r["Instances"]])
    orphans, kept = orphan_instances(instances, known, backend.shutdown_action)
    if orphans:
        backend.log.warning("Terminating %d instance(s) of hub %s unknown to the hub: %s",
                            len(orphans), backend.hub_id, ", ".join(orphans))
        await asyncio.to_thread(ec2.terminate_instances, InstanceIds=orphans)
    gone = gone_servers(instances, known, backend.region)
    for user, server in gone:
        backend.log.warning("Server %s/%s: its instance is gone; stopping the server", user, server)
    return Reconciled(removed=orphans, kept=kept, gone=gone)
