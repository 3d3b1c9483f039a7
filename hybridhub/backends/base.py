"""The backend contract, and what every backend shares.

A backend is a JupyterHub ``Spawner`` subclass that also carries :class:`BackendMixin`,
registered in the ``hybridhub.backends`` entry-point group (:mod:`hybridhub.backends`).
:class:`hybridhub.spawner.HybridSpawner` builds one as a child for the offering the user
picked (the ProfilesSpawner/wrapspawner pattern), sets :attr:`BackendMixin.offering`,
:attr:`BackendMixin.request` and :attr:`BackendMixin.context`, and delegates
``start``/``poll``/``stop``/``progress``/state to it.

What a backend must implement (checked when the hub starts, :func:`hybridhub.backends.check_contract`):

- ``start()``, ``poll()``, ``stop()`` -- JupyterHub's own Spawner contract (:data:`REQUIRED_HOOKS`).

What it may override, each with a documented default in :class:`BackendMixin`:

- ``get_state()`` / ``load_state()`` / ``clear_state()`` -- what finds the server again after a hub
  restart (JupyterHub's; default: nothing kept);
- :attr:`BackendMixin.offering_fields` -- the schema of its own offering fields, a frozen dataclass
  (:mod:`hybridhub.backends.fields`; default: none, an offering naming any key the catalog does not
  know is refused), read back parsed as :attr:`BackendMixin.fields`;
- :meth:`BackendMixin.check_offering` -- checks beyond that schema (default: none);
- :meth:`BackendMixin.offering_detail` -- a line the picker shows under an offering (default: none);
- :meth:`BackendMixin.free_now` / :meth:`BackendMixin.free_now_many` -- capacity (default: not tracked);
- :meth:`BackendMixin.host_labels` -- the inventory labels of hosts an offering may land on, whose
  ``trust`` lowers the offering's (default: none);
- :meth:`BackendMixin.provenance` / :meth:`BackendMixin.image_identity` -- where a server runs;
- :meth:`BackendMixin.hide_paths` -- confinement on untrusted hardware (default: refuse);
- :meth:`BackendMixin.end_reason` and :attr:`BackendMixin.watches_machine` -- how a gone server ended;
- :meth:`BackendMixin.reconcile` and :attr:`BackendMixin.orphan_reservations` -- orphan clean-up, called by
  :mod:`hybridhub.spawner.reconcile` with the servers the hub knows (default: nothing to clean up);
- :meth:`BackendMixin.provider_bill` -- a provider's own bill and balance, recorded for reconciliation
  (default: none);
- :meth:`BackendMixin.admission_price` -- the price a launch is admitted at (default: the catalog's);
- :meth:`BackendMixin.live_prices_many` -- the provider's live price of each offering, which the picker
  shows (default: none, the catalog's price).

A backend never reads the hub's database: what it needs of the hub's records reaches it as
:class:`KnownServer` (``tests/backends/test_no_hub_db.py`` checks it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, ClassVar, TypeVar

from traitlets import Any, Float, HasTraits
from traitlets.config import Config

from hybridhub.accounting.allocations import DEFAULT_URL as DEFAULT_DB_URL
from hybridhub.accounting.allocations import Candidate, allocator_for
from hybridhub.backends.fields import parse_fields
from hybridhub.errors import ConfinementError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hybridhub.catalog import Offering

T = TypeVar("T")

#: Spawner methods every backend must implement itself (JupyterHub's base raises NotImplementedError).
REQUIRED_HOOKS = ("start", "poll", "stop")


def db_url_from_config(config: Config, section: str = "DockerBackend") -> str:
    """The allocation database: ``<section>.allocation_db_url``, else the hub's ``HybridSpawner.db_url``."""
    for name, key in ((section, "allocation_db_url"), ("HybridSpawner", "db_url")):
        if name in config and config[name].get(key):
            return str(config[name][key])
    return DEFAULT_DB_URL


async def free_counts(db_url: str, lists: list[list[Candidate] | None]) -> list[int | None]:
    """Free GPUs over each list of candidate hosts (None: capacity not tracked), from the
    allocation database in ONE worker-thread read, however many offerings ask."""
    tracked = [cands for cands in lists if cands is not None]
    if not tracked:
        return [None] * len(lists)
    # the first allocator_for per process also checks the schema: inside the thread too
    free = iter(await asyncio.to_thread(lambda: allocator_for(db_url).free_by_host_many(tracked)))
    return [None if cands is None else sum(next(free).values()) for cands in lists]


@dataclass(frozen=True)
class KnownServer:
    """A server the hub has (running, starting or stopping), as the reconciliation runner hands it to the
    backend it runs on (:meth:`BackendMixin.reconcile`)."""

    user: str
    server: str  #: the server's name ("" for the default server)
    state: Mapping[str, object]  #: the backend's ``get_state()`` now (empty early in a start)
    pending: str | None = None  #: JupyterHub's pending action (``"spawn"``, ``"stop"``), None once settled


@dataclass
class Reconciled:
    """What one :meth:`BackendMixin.reconcile` pass did; the runner logs it and stops the ``gone`` servers."""

    removed: list[str] = field(default_factory=list)  #: orphans cleaned up (containers, jobs, instances)
    released: list[str] = field(default_factory=list)  #: device allocations released
    kept: list[str] = field(default_factory=list)  #: unknown to the hub but spared: their launch is in flight
    gone: list[tuple[str, str]] = field(default_factory=list)  #: known (user, server) whose machine is gone

    def __bool__(self) -> bool:
        return bool(self.removed or self.released or self.gone)


@dataclass(frozen=True)
class ProviderBill:
    """What a provider billed and holds, as :meth:`BackendMixin.provider_bill` reports it (USD)."""

    provider: str  #: the provider's name in the accounting records (``"theta"``)
    days: Mapping[date, float]  #: the amount billed per day
    balance_usd: float | None  #: the account's balance (None: not known)
    running_usd_per_hour: float  #: the hourly price of what runs there now


@dataclass(frozen=True)
class LivePrice:
    """A provider's price for launching an offering now (:meth:`BackendMixin.live_prices_many`)."""

    per_hour: float
    #: Why a launch at this price would be refused (e.g. above the offering's ceiling), or None.
    refused: str | None = None


@dataclass(frozen=True)
class LaunchContext:
    """What a backend may know of its launch besides the offering and the request."""

    reservation_id: int | None = None
    db_url: str = ""  #: the portal database (GPU allocations)


class ProgressFeed:
    """The progress events of one ``start()``, followed live by the hub's spawn page."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.done = False
        self._changed = asyncio.Event()

    def emit(self, progress: int, message: str) -> None:
        """Add an event (``progress`` 0-100)."""
        self.events.append({"progress": progress, "message": message})
        self._changed.set()

    def finish(self) -> None:
        """The start is over: followers return once they have every event."""
        self.done = True
        self._changed.set()

    async def follow(self):
        """Every event, as it is emitted, until :meth:`finish`."""
        sent = 0
        while True:
            while sent < len(self.events):
                yield self.events[sent]
                sent += 1
            if self.done:
                return
            self._changed.clear()
            if sent < len(self.events):
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=1)
            except TimeoutError:
                pass


async def answers_http(ip: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """Whether a server at ``ip:port`` answers ``GET path`` with an HTTP status line (any status).

    A refused connect costs a syscall, not an HTTP client request (for an IP, no resolver thread either);
    a server that accepts but says nothing within ``timeout`` has not answered yet.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = (await asyncio.wait_for(reader.readline(), timeout)).split()
        return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1].isdigit()
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def poll_until(check: Callable[[], Awaitable[T | None]], *, interval: float, timeout: float,
                     clock: Callable[[], float] = time.monotonic) -> T | None:
    """Await ``check()`` every ``interval`` seconds until it returns something other than None, and return
    that; None once ``timeout`` seconds have passed (``check`` raises to give up at once).

    The backends' one waiting loop: a new job or instance until it runs, a new server until it answers.
    """
    deadline = clock() + timeout
    while True:
        result = await check()
        if result is not None or clock() >= deadline:
            return result
        await asyncio.sleep(interval)


async def until_answering(ip: str, port: int, path: str, *, interval: float, timeout: float,
                          died: Callable[[], Awaitable[bool]], clock: Callable[[], float] = time.monotonic,
                          probe_timeout: float = 2.0) -> bool:
    """True once a server at ``ip:port`` answers ``GET path`` (:func:`answers_http`, any status); False once
    ``died()`` (asked after each unanswered probe) says it is gone, or after ``timeout`` seconds."""

    async def answered_or_died() -> bool | None:
        if await answers_http(ip, port, path, probe_timeout):
            return True
        return False if await died() else None

    return bool(await poll_until(answered_or_died, interval=interval, timeout=timeout, clock=clock))


class BackendMixin(HasTraits):
    """The hooks HybridSpawner calls on a backend, with their defaults (see the module's docstring)."""

    #: True when the backend only simulates the hardware (the picker says so).
    simulated: ClassVar[bool] = False
    #: True when ``poll()`` watches a whole machine (an instance): any status then means the machine is gone.
    watches_machine: ClassVar[bool] = False
    #: While waiting for a new server, ask ``poll()`` whether it died every this many failed probes (0: never).
    died_check_every: ClassVar[int] = 1
    #: True: the reconciliation runner also closes open reservations of this backend's classes that belong
    #: to no server of the hub (a launch its hub was admitting when it died: slow launches, like EC2's).
    orphan_reservations: ClassVar[bool] = False
    #: The schema of this backend's own offering fields: a frozen dataclass whose fields are catalog keys
    #: (:mod:`hybridhub.backends.fields`).  None: the backend has none.
    offering_fields: ClassVar[type | None] = None

    offering = Any(help="The catalog Offering being launched (set by HybridSpawner).")
    request = Any(help="The validated LaunchRequest (set by HybridSpawner).")
    context = Any(help="The LaunchContext: reservation id and databases (set by HybridSpawner).")

    ready_poll_interval = Float(
        0.05,
        help="Seconds between readiness probes of a new server (wait_until_answering); backends override it.",
    ).tag(config=True)

    #: The current start's progress events (backends that report stages open one in ``start()``).
    _feed: ProgressFeed | None = None

    def _open_feed(self) -> ProgressFeed:
        """A fresh feed for this start (call first thing in ``start()``; ``finish()`` it at the end)."""
        self._feed = ProgressFeed()
        return self._feed

    def _emit(self, progress: int, message: str) -> None:
        """Tell the spawn page (and the log) how the start is going."""
        if self._feed is None:
            self._open_feed()
        self._feed.emit(progress, message)
        self.log.info("%s: %s", getattr(self, "_label", type(self).__name__), message)

    async def progress(self):
        """The current start's events as they come; the spawner's own when the backend keeps none."""
        if self._feed is None:
            async for event in super().progress():
                yield event
            return
        async for event in self._feed.follow():
            yield event

    @classmethod
    def fields_of(cls, offering: Offering) -> object:
        """``offering``'s fields of this backend, parsed into :attr:`offering_fields` (None: no schema).
        Raises :class:`~hybridhub.catalog.CatalogError` naming the key at fault."""
        return parse_fields(cls.offering_fields, offering)

    @property
    def fields(self) -> object:
        """The launched offering's fields of this backend, parsed (:meth:`fields_of`)."""
        return None if self.offering is None else self.fields_of(self.offering)

    @classmethod
    def check_offering(cls, offering: Offering) -> None:
        """Refuse an offering this backend cannot launch, raising :class:`~hybridhub.catalog.CatalogError`
        with the key at fault (``offering.config_key("gres")``).  Called for every offering when the
        hub starts, after its fields parsed with :attr:`offering_fields`.  Default: accepted."""

    @classmethod
    def offering_detail(cls, offering: Offering) -> str:
        """A short line the picker shows under the offering's model, from the backend's own fields
        (EC2: ``trn1.2xlarge, spot``).  Default: empty (nothing shown)."""
        return ""

    @classmethod
    def shares_machine(cls, config: Config) -> bool:
        """True when, with ``config``, every user's server runs as one Unix account on one machine: users
        can read each other's files there (the picker says so, and the hub logs it at start-up).
        Default: False."""
        return False

    @classmethod
    def host_labels(cls, offering: Offering, config: Config) -> list[Mapping[str, str]]:
        """The inventory labels of each host ``offering`` may land on (their ``trust`` lowers the
        offering's).  Default: none (the catalog's trust level stands)."""
        return []

    def end_reason(self, status: object) -> str | None:
        """How a server that ``poll()`` found gone with ``status`` ended, or None to let the spawner
        judge (:func:`hybridhub.spawner.provenance.end_reason`).  Default: None."""
        return None

    @classmethod
    async def free_now(cls, offering: Offering, config: Config) -> int | None:
        """How many accelerators of ``offering`` could be launched right now.

        ``None`` means the backend does not track capacity (the picker shows
        "not tracked" rather than an invented number).
        """
        return None

    @classmethod
    async def free_now_many(cls, offerings: list[Offering], config: Config) -> list[int | None]:
        """:meth:`free_now` of each offering; a backend that can read them at once overrides it."""
        return list(await asyncio.gather(*(cls.free_now(o, config) for o in offerings)))

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config: Config) -> Reconciled:
        """Clean up what this backend runs for this hub that is none of ``known`` (the hub's servers on
        this backend), releasing its allocations; report known servers whose machine is gone.

        Called by the runner (:mod:`hybridhub.spawner.reconcile`) every ``ReconcileRunner.interval``
        seconds, with ``config`` the hub's.  Spare what a start still in flight may own (a young
        allocation or job, a server whose ``pending`` is ``"spawn"``).  Default: nothing to clean up.
        """
        return Reconciled()

    @classmethod
    async def admission_price(cls, offering: Offering, config: Config) -> float | None:
        """The hourly price a launch of ``offering`` is admitted (and charged) at, asked right before
        admission (a provider's live quote); None: the catalog's ``price_per_hour``.  Default: None."""
        return None

    @classmethod
    async def live_prices_many(cls, offerings: list[Offering], config: Config) -> list[LivePrice | None]:
        """The provider's live hourly price of each offering, which the picker shows instead of the catalog's,
        with why a launch now would be refused at it; None: the catalog's price.  Called on every picker
        render: answer from a short cache, never one request per render.  Default: all None."""
        return [None] * len(offerings)

    @classmethod
    async def provider_bill(cls, config: Config, since: date, until: date) -> ProviderBill | None:
        """What the provider behind this backend billed from ``since`` to ``until`` (inclusive) and its
        balance, which the hub records for the portal's reconciliation (:mod:`hybridhub.spawner.provider_bills`).
        Default: None (hybridhub is the only bill)."""
        return None

    async def wait_until_answering(self, ip: str, port: int) -> bool:
        """True once the new server answers HTTP (any status); False once it has died, or after ``http_timeout``.

        Probing every ``ready_poll_interval`` seconds here spares the hub's slower back-off poll: JupyterHub's
        own check (``wait_for_http_server``) then passes on its first try (a 5xx is left to that check).  A probe
        is a bare TCP connect and, once that is accepted, one ``GET`` whose status line is read.
        """
        checks = 0

        async def died() -> bool:
            nonlocal checks
            checks += 1
            every = self.died_check_every
            return bool(every and checks % every == 0 and await self.poll() is not None)

        return await until_answering(ip, port, self._api_path, interval=self.ready_poll_interval,
                                     timeout=self.http_timeout, died=died)

    @property
    def _api_path(self) -> str:
        """The new server's API path, which readiness probes ``GET``."""
        return f"{self.server.base_url if self.server else '/'}api"

    def accelerator_env(self) -> dict[str, str]:
        """Environment describing the assigned hardware, visible inside the server."""
        if self.offering is None or self.request is None:
            return {}
        return {
            "HYBRIDHUB_CLASS": self.offering.resource_class,
            "HYBRIDHUB_MODEL": self.offering.model,
            "HYBRIDHUB_COUNT": str(self.request.count),
            "HYBRIDHUB_GROUP": self.request.group,
        }

    def provenance(self) -> dict[str, object]:
        """Where this server runs (host, device ids, image), for provenance records."""
        return {}

    async def image_identity(self) -> dict[str, str]:
        """``image_id`` / ``image_digest`` of the running server's image, where known."""
        return {}

    def hide_paths(self, paths: list[str]) -> None:
        """Start the server without these folders of the home (untrusted hardware).

        Backends that can (local: a private mount namespace; containers: tmpfs mounts)
        override this; the rest refuse, and the launch with them.
        """
        raise ConfinementError(f"the {type(self).__name__} backend cannot leave confidential folders out")
