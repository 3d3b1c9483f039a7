"""Make the Theta project agree with the hub: what :meth:`ThetaBackend.reconcile
<hybridhub.backends.theta.ThetaBackend.reconcile>` does with the servers the hub knows.

A pass lists the project's deployments and looks only at those whose name starts with this hub's
marker (:func:`~hybridhub.backends.theta.offering.marker`): anything else in the project is never
touched.  It deletes this hub's deployments that no known server holds, sparing those of a start still
in flight (a server whose ``pending`` is ``"spawn"``, matched by the deployment's display name), and
reports known servers whose deployment is gone, which the runner stops through the hub.  A refused key
is logged for the administrators (this is the first call a hub makes to Theta when it starts).
"""

from __future__ import annotations

from hybridhub.backends.base import KnownServer, Reconciled
from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.client import ThetaError
from hybridhub.backends.theta.offering import display_name, marker


def orphan_deployments(found: list[tb.Deployment], known: list[KnownServer], hub_id: str
                       ) -> tuple[list[str], list[str]]:
    """Ids of this hub's deployments no known server holds (to delete), and of those spared in flight."""
    prefix = marker(hub_id)
    held = {s.state.get("deployment_id") for s in known} | {s.state.get("deployment_name") for s in known}
    in_flight = {display_name(s.user, s.server) for s in known if s.pending == "spawn"}
    orphans, kept = [], []
    for dep in found:
        if not dep.name.startswith(prefix) or dep.id in held or dep.name in held:
            continue
        (kept if dep.display_name in in_flight else orphans).append(dep.id)
    return orphans, kept


def gone_servers(found: list[tb.Deployment], known: list[KnownServer]) -> list[tuple[str, str]]:
    """``(user, server)`` of settled known servers whose deployment is not in the project (or has ended)."""
    live = {d.id for d in found if d.running or d.pending}
    return [(s.user, s.server) for s in known
            if s.state.get("deployment_id") and s.pending is None and s.state["deployment_id"] not in live]


async def reconcile_deployments(backend, known: list[KnownServer]) -> Reconciled:
    """One pass for ``backend`` (a ``ThetaBackend`` built from the hub's config)."""
    try:
        client = backend.client()
        found = tb.deployments(await client.list_gpu_deployments())
    except ValueError as e:
        backend.log.error("Theta backend misconfigured: %s", e)
        return Reconciled()
    except ThetaError as e:
        if e.auth:
            backend.log.error("Theta refused this hub's API key (HTTP %s) for project %r: launches on Theta will "
                              "fail until c.ThetaBackend.api_key is valid", e.status, backend.project_id)
            return Reconciled()
        raise
    orphans, kept = orphan_deployments(found, known, backend.hub_id)
    removed = []
    for dep_id in orphans:
        backend.log.warning("Deleting Theta deployment %s of hub %s: no server of the hub holds it",
                            dep_id, backend.hub_id)
        try:
            await client.delete_gpu_deployment(dep_id)
        except ThetaError as e:
            if e.status != 404:
                backend.log.error("Cannot delete Theta deployment %s: %s", dep_id, e)
                continue
        removed.append(dep_id)
    gone = gone_servers(found, known)
    for user, server in gone:
        backend.log.warning("Server %s/%s: its Theta deployment is gone; stopping the server", user, server)
    return Reconciled(removed=removed, kept=kept, gone=gone)
