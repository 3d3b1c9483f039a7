"""The reconciliation runner: each backend's hook once per pass with the hub's servers on that backend;
gone servers stopped through the hub; orphaned reservations closed for backends that ask; a failing or
hanging hook does not stop the others.  (Through a real hub: tests/backends/test_ec2_hub.py,
test_slurm_hub.py.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

from jupyterhub.spawner import Spawner
from traitlets.config import Config

from hybridhub.backends.base import BackendMixin, KnownServer, Reconciled
from hybridhub.spawner.reconcile import ReconcileRunner, backend_of


class RecordingBackend(BackendMixin, Spawner):
    """Records each call of its hook; reports what ``answer`` says."""

    calls: list = []
    answer = Reconciled()

    async def start(self): ...

    async def poll(self): ...

    async def stop(self, now=False): ...

    @classmethod
    async def reconcile(cls, known, config):
        cls.calls.append((list(known), config))
        return cls.answer


class CloudBackend(RecordingBackend):
    calls: list = []
    orphan_reservations = True


class BrokenBackend(RecordingBackend):
    calls: list = []

    @classmethod
    async def reconcile(cls, known, config):
        raise RuntimeError("engine on fire")


class HangingBackend(RecordingBackend):
    calls: list = []

    @classmethod
    async def reconcile(cls, known, config):
        await asyncio.sleep(3600)


@dataclass
class FakeHub:
    servers: list = field(default_factory=list)
    stopped: list = field(default_factory=list)

    def known(self):
        return list(self.servers)

    async def stop(self, user, server):
        self.stopped.append((user, server))


@dataclass
class FakeReservation:
    id: int
    username: str
    server_name: str
    resource_class: str


class FakeAccounting:
    def __init__(self, open_=()):
        self.open = list(open_)
        self.released = []

    def open_reservations(self):
        return list(self.open)

    def release(self, rid, reason):
        self.released.append((rid, reason))


def runner(hub, offerings: dict[str, type], accounting=None, **traits) -> ReconcileRunner:
    """A runner over a catalog of ``offering key -> backend class`` (class = the key's first part)."""
    catalog = [SimpleNamespace(key=k, resource_class=k.split("/")[0], backend=cls) for k, cls in offerings.items()]
    spawner = SimpleNamespace(
        resource_catalog=SimpleNamespace(all_offerings=lambda: catalog),
        backend_class=lambda o: o.backend,
        accounting=accounting or FakeAccounting(),
    )
    config = Config()
    for name, value in traits.items():
        setattr(config.ReconcileRunner, name, value)
    return ReconcileRunner(hub, spawner, config=config)


async def test_each_backend_hook_gets_the_hubs_servers_on_it_once_per_pass():
    alice = KnownServer("alice", "", {"object_name": "jupyter-alice"})
    bob = KnownServer("bob", "big", {"job_id": 7})
    carol = KnownServer("carol", "", {}, pending="spawn")  # no offering chosen yet: no backend's
    hub = FakeHub([(RecordingBackend, alice), (CloudBackend, bob), (None, carol)])
    RecordingBackend.calls.clear()
    CloudBackend.calls.clear()
    r = runner(hub, {"community/a": RecordingBackend, "community/b": RecordingBackend, "aws/c": CloudBackend})
    assert r.backends() == [RecordingBackend, CloudBackend]
    await r.reconcile_once()
    assert [known for known, _config in RecordingBackend.calls] == [[alice]]
    assert [known for known, _config in CloudBackend.calls] == [[bob]]
    assert RecordingBackend.calls[0][1] is r.config  # the hub's config: the backend reads its own settings
    assert hub.stopped == []


async def test_gone_servers_are_stopped_through_the_hub():
    hub = FakeHub([(CloudBackend, KnownServer("alice", "", {"instance_id": "i-1"}))])
    CloudBackend.answer = Reconciled(gone=[("alice", "")])
    try:
        report = await runner(hub, {"aws/c": CloudBackend}).reconcile_once()
    finally:
        CloudBackend.answer = Reconciled()
    assert hub.stopped == [("alice", "")]
    assert report.backends == {"CloudBackend": Reconciled(gone=[("alice", "")])}


async def test_a_failing_or_hanging_hook_is_logged_and_the_others_run(caplog):
    RecordingBackend.calls.clear()
    r = runner(FakeHub(), {"x/1": BrokenBackend, "x/2": HangingBackend, "x/3": RecordingBackend}, timeout=0.2)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(r.reconcile_once(), 5)
    assert len(RecordingBackend.calls) == 1
    failed = [rec.getMessage() for rec in caplog.records if "failed" in rec.getMessage()]
    assert failed == ["Reconciliation of BrokenBackend failed", "Reconciliation of HangingBackend failed"]


async def test_orphaned_reservations_closed_for_backends_that_ask():
    acct = FakeAccounting([
        FakeReservation(1, "alice", "", "aws"),
        FakeReservation(2, "bob", "", "aws"),
        FakeReservation(3, "carol", "", "community"),  # its backend does not ask
    ])
    hub = FakeHub([(CloudBackend, KnownServer("alice", "", {}, pending="spawn"))])
    report = await runner(hub, {"aws/c": CloudBackend, "community/a": RecordingBackend}, acct).reconcile_once()
    assert report.released == [2]
    assert acct.released == [(2, "reconciled: no server")]


async def test_interval_zero_turns_the_runner_off():
    await asyncio.wait_for(runner(FakeHub(), {"x/1": RecordingBackend}, interval=0).run(), 1)


def test_backend_of_a_bare_backend_and_of_an_unstarted_server():
    backend = RecordingBackend()
    assert backend_of(backend) == (RecordingBackend, backend.get_state())
    assert backend_of(object()) == (None, {})


def test_the_runner_reads_the_hubs_catalog_and_metering_settings(tmp_path):
    """Without a spawner given, the runner sees what the hub's HybridSpawner sees: its catalog's backends
    (each once) and its accounting, with the hub's MeterSettings (closing a reservation charges by them)."""
    config = Config()
    config.HybridSpawner.db_url = f"sqlite:///{tmp_path / 'acct.sqlite'}"
    config.HybridSpawner.meter_interval = 17.0
    config.HybridSpawner.grace_seconds = 42.0
    config.HybridSpawner.backend_override = "local"
    r = ReconcileRunner(FakeHub(), config=config)
    assert [cls.__name__ for cls in r.backends()] == ["LocalBackend"]
    acct = r.spawner.accounting
    assert (acct.meter_interval, acct.grace_seconds) == (17.0, 42.0)
