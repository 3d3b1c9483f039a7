"""One reconciliation runner for every backend: make the machines agree with the hub.

Every ``ReconcileRunner.interval`` seconds, for each backend class the catalog uses (once, however many
offerings name it), the runner gathers the servers the hub knows on that backend
(:class:`~hybridhub.backends.base.KnownServer`: user, server name, the backend's state now, JupyterHub's
pending action) and awaits its :meth:`~hybridhub.backends.base.BackendMixin.reconcile` hook, which
cleans up the orphans it finds (containers, jobs, instances, with their device allocations).  Then it

* stops, through the hub, the known servers a hook reports gone (their machine vanished), so the hub
  and accounting close them;
* closes the open reservations of the classes whose backend asks for it
  (:attr:`~hybridhub.backends.base.BackendMixin.orphan_reservations`) that belong to no server of the
  hub: a launch its dead hub was admitting.

Only the runner reads the hub's records (:class:`InProcessHub`: the JupyterHub app of this process);
backends see :class:`KnownServer` lists.  Reservations are read first and the hub right before each hook,
so a launch that starts during a pass is seen in flight, never as an orphan.  Each hook is bounded by
``timeout`` seconds; one that fails or overruns is logged and the next backend goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from traitlets import Float
from traitlets.config import LoggingConfigurable

from hybridhub.backends.base import BackendMixin, KnownServer, Reconciled
from hybridhub.spawner.hub_start import after_hub_starts
from hybridhub.spawner.hybrid import HybridSpawner


class HubServers(Protocol):
    """The hub's servers, each with the backend class it runs on (None: not known yet), and a way to stop one."""

    def known(self) -> list[tuple[type | None, KnownServer]]: ...

    async def stop(self, user: str, server: str) -> None: ...


def backend_of(spawner: object) -> tuple[type | None, dict]:
    """The backend class a hub spawner runs on and that backend's state now (None: no offering chosen yet)."""
    if isinstance(spawner, BackendMixin):  # a backend configured as the hub's spawner_class
        return type(spawner), spawner.get_state()
    if isinstance(spawner, HybridSpawner) and spawner.offering is not None:
        return spawner.backend_class(spawner.offering), spawner.get_state().get("backend_state") or {}
    return None, {}


class InProcessHub:
    """:class:`HubServers` of the JupyterHub app running in this process: its servers (running, starting
    or stopping) from its database, each read through its live spawner."""

    def __init__(self, app):
        self.app = app

    def known(self) -> list[tuple[type | None, KnownServer]]:
        """Every server that has a record in the hub (ready or pending)."""
        from jupyterhub import orm

        servers = []
        for row in self.app.db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)):
            spawner = self.app.users[row.user].spawners[row.name]
            cls, state = backend_of(spawner)
            servers.append((cls, KnownServer(row.user.name, row.name, state, spawner.pending)))
        return servers

    async def stop(self, user: str, server: str) -> None:
        """Stop a settled server as the hub's REST API does: off the proxy, then ``User.stop``."""
        hub_user = self.app.users[user]
        spawner = hub_user.spawners[server]
        if spawner.pending or not spawner.active:
            return
        await self.app.proxy.delete_user(hub_user, server)
        await hub_user.stop(server)


@dataclass
class RunnerReport:
    """What one pass of the runner did."""

    backends: dict[str, Reconciled] = field(default_factory=dict)  #: each hook's report that did something
    released: list[int] = field(default_factory=list)  #: reservations closed (no server)


class ReconcileRunner(LoggingConfigurable):
    """Call each backend's reconciliation hook with the hub's known servers, every ``interval`` seconds."""

    interval = Float(
        300.0,
        help="Seconds between reconciliation passes in the hub: each backend the catalog uses cleans up what "
        "it runs for this hub that the hub has no server for (BackendMixin.reconcile). 0 turns them off.",
    ).tag(config=True)

    timeout = Float(
        120.0, help="Seconds one backend's reconciliation may take; a longer one is abandoned and logged."
    ).tag(config=True)

    def __init__(self, hub: HubServers, spawner: HybridSpawner | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hub = hub
        #: the catalog, the backend registry and accounting, as the hub's HybridSpawner sees them
        self.spawner = spawner or HybridSpawner(config=self.config)

    def backends(self) -> list[type]:
        """Each backend class the catalog uses, once, in catalog order."""
        classes: list[type] = []
        for offering in self.spawner.resource_catalog.all_offerings():
            cls = self.spawner.backend_class(offering)
            if cls not in classes:
                classes.append(cls)
        return classes

    async def reconcile_once(self) -> RunnerReport:
        """One pass: open reservations, then each backend's hook, then the reservations' servers."""
        report = RunnerReport()
        reservations = await self._open_reservations()
        for cls in self.backends():
            result = await self._reconcile_backend(cls)
            if result:
                report.backends[cls.__name__] = result
        report.released = await self._release_orphaned(reservations)
        return report

    async def _reconcile_backend(self, cls: type) -> Reconciled | None:
        known = [server for backend, server in self.hub.known() if backend is cls]
        self.log.debug("Reconcile: %s with %d known server(s)", cls.__name__, len(known))
        try:
            result = await asyncio.wait_for(cls.reconcile(known, self.config), self.timeout)
        except Exception:  # a timeout included: the next backend goes on
            self.log.exception("Reconciliation of %s failed", cls.__name__)
            return None
        for user, server in result.gone:
            try:
                await self.hub.stop(user, server)
            except Exception as e:
                self.log.warning("Reconcile: could not stop %s/%s: %s", user, server, e)
        if result:
            self.log.warning("Reconciled %s: %s", cls.__name__, result)
        return result

    async def _open_reservations(self) -> list:
        offerings = self.spawner.resource_catalog.all_offerings()
        classes = {o.resource_class for o in offerings if self.spawner.backend_class(o).orphan_reservations}
        if not classes:
            return []
        every = await asyncio.to_thread(lambda: self.spawner.accounting.open_reservations())
        return [r for r in every if r.resource_class in classes]

    async def _release_orphaned(self, reservations: list) -> list[int]:
        active = {(server.user, server.server) for _backend, server in self.hub.known()}
        released = []
        for r in reservations:
            if (r.username, r.server_name) not in active:
                self.log.warning("Closing reservation %s of %s/%s: no such server on the hub",
                                 r.id, r.username, r.server_name)
                await asyncio.to_thread(self.spawner.accounting.release, r.id, "reconciled: no server")
                released.append(r.id)
        return released

    async def run(self) -> None:
        """Reconcile now and every ``interval`` seconds, until cancelled (the hub shuts down)."""
        while self.interval > 0:
            try:
                await self.reconcile_once()
            except Exception:
                self.log.exception("Reconciliation pass failed")
            await asyncio.sleep(self.interval)


def start_in_hub() -> asyncio.Task | None:
    """Run a :class:`ReconcileRunner` in the JupyterHub app this process is starting, once the hub runs.

    ``add_hybridhub`` calls it while the hub loads its config; outside a starting hub (a ``jupyterhub``
    subcommand, a script, a test building a config) it does nothing and returns None.
    """
    global _task
    if _task is not None:
        return None

    async def run(app) -> None:
        if issubclass(app.spawner_class, HybridSpawner):
            await ReconcileRunner(InProcessHub(app), app.spawner_class(config=app.config), parent=app).run()

    _task = after_hub_starts(run)
    return _task


#: The runner's task in this process (one per hub).
_task: asyncio.Task | None = None
