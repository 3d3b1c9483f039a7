"""HybridSpawner: one picker over community GPUs, enterprise GPUs and AWS Neuron.

It renders the resource picker, re-validates ``user_options`` (form or REST)
against the catalog and the user's groups, asks accounting to admit the
launch, then delegates start/poll/stop to the backend of the chosen class,
built as a child spawner.  ``get_state``/``load_state`` keep the offering, the
request, the reservation and the backend's own state, so a restarted hub
re-adopts running servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import urlsplit

from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Dict, Float, Integer, Unicode, default, observe

from hybridhub import backends, metrics
from hybridhub.accounting import courses
from hybridhub.accounting.db import DEFAULT_URL, Database
from hybridhub.accounting.forecast import remaining_forecasts
from hybridhub.accounting.ledger import Accounting, AdmissionError
from hybridhub.accounting.models import GROUP_KINDS
from hybridhub.accounting.settings import MeterSettings
from hybridhub.backends.base import LaunchContext
from hybridhub.catalog import Catalog, Offering, load_catalog
from hybridhub.errors import as_refusal, start_failed
from hybridhub.spawner.display import name_after_hardware
from hybridhub.spawner.instruments import InstrumentsMixin
from hybridhub.spawner.move import CarriedAdmissionMixin
from hybridhub.spawner.options import (
    DEFAULT_HOURS_STEP,
    DEFAULT_MIN_HOURS,
    LaunchRequest,
    OptionError,
    allowed_offerings,
    form_to_options,
    reservation_summary,
    validate_options,
)
from hybridhub.spawner.pagevars import SPAWN_PAGE_VARS, PageVar
from hybridhub.spawner.picker import offering_facts, picker_html, preselect
from hybridhub.spawner.refusals import RefusalLogMixin, admission_reason, error_text, offering_labels
from hybridhub.spawner.trust_provenance import TrustAndProvenanceMixin

#: The ``user_options`` key JupyterHub's admin page shows as a server's profile: the offering.
PROFILE = "profile"
_databases: dict[str, Database] = {}
_accountings: dict[tuple[str, MeterSettings], Accounting] = {}


def accounting_for(db_url: str, settings: MeterSettings | None = None) -> Accounting:
    """The Accounting for ``db_url`` with ``settings`` (default: this process's environment, else the
    defaults); one migrated Database per URL in this process, shared by every settings."""
    settings = settings or MeterSettings.from_env(os.environ)
    key = (db_url, settings)
    if key not in _accountings:
        if db_url not in _databases:
            db = Database(db_url)
            db.upgrade()
            _databases[db_url] = db
        _accountings[key] = settings.accounting(_databases[db_url])
    return _accountings[key]


class NotServed(RuntimeError):
    """The backend started a server that never answered (it died, or the wait timed out)."""


#: How long the picker trusts its own last mirror of a user's groups (admission always mirrors).
PICKER_SYNC_SECONDS = 60.0


class HybridSpawner(CarriedAdmissionMixin, TrustAndProvenanceMixin, RefusalLogMixin, InstrumentsMixin, Spawner):
    """Launch notebook servers on the hardware the user picks, within their group's quota."""

    catalog = Dict(
        help="Resource catalog: class name -> class settings with 'offerings' "
        "(see hybridhub.catalog.DEFAULT_CATALOG). Empty means the shipped default catalog.",
    ).tag(config=True)

    catalog_file = Unicode(
        "",
        help="Path to a YAML file holding the catalog; wins over `catalog` when set.",
    ).tag(config=True)

    backend_override = Unicode(
        "",
        help="Map every offering to this backend (the embedded demo uses 'local', so every "
        "class runs as a simulated local process). Empty keeps each offering's backend.",
    ).tag(config=True)

    backend_classes = Dict(
        help="Backend name -> spawner class (or import string) implementing it, added to (and "
        "overriding) the backends installed in the `hybridhub.backends` entry-point group, which "
        "include the shipped ones: local, docker, swarm, slurm, ec2.",
    ).tag(config=True)

    db_url = Unicode(
        DEFAULT_URL,
        help="SQLAlchemy URL of the accounting database (SQLite or postgresql+psycopg://).",
    ).tag(config=True)

    default_hours = Float(
        2.0, help="Hours pre-filled in the picker's 'requested hours' field."
    ).tag(config=True)

    min_launch_hours = Float(
        DEFAULT_MIN_HOURS,
        help="Shortest launch a user may ask for, in hours, for offerings without their own "
        "'min_hours' (no launch is too short to pay for).",
    ).tag(config=True)

    hours_resolution = Float(
        DEFAULT_HOURS_STEP,
        help="Requested hours must be a whole multiple of this, for offerings without their "
        "own 'hours_step' (0: any number).",
    ).tag(config=True)

    meter_interval = Float(
        60.0,
        help="Seconds between metering ticks, and the least a launch whose server answered pays for "
        "(set by add_hybridhub, which hands the same value to the meter, portal and course scheduler).",
    ).tag(config=True)

    grace_seconds = Float(
        300.0,
        help="Seconds between the stop warning and the stop of a server whose budget or reservation ran "
        "out (set by add_hybridhub, which hands the same value to every service).",
    ).tag(config=True)

    max_options_bytes = Integer(
        16 * 1024,
        help="Largest spawn options accepted, in bytes of JSON; bigger ones are refused with "
        "413 before they are validated.",
    ).tag(config=True)

    # --- catalog -----------------------------------------------------------------

    @property
    def resource_catalog(self) -> Catalog:
        """The validated catalog (cached per configuration)."""
        return _catalog_for(self.catalog_file, json.dumps(self.catalog, sort_keys=True), self.backend_override,
                            tuple(sorted(self.backend_classes.items())))

    def backend_class(self, offering: Offering) -> type:
        """The spawner class implementing ``offering.backend`` (:mod:`hybridhub.backends`' registry)."""
        return backends.backend_class(offering.backend, self.backend_classes, key=offering.config_key("backend"))

    @property
    def accounting(self) -> Accounting:
        """The accounting service for :attr:`db_url`, with this hub's metering settings."""
        return accounting_for(self.db_url, MeterSettings(self.meter_interval, self.grace_seconds))

    # --- the user's groups --------------------------------------------------------

    def user_groups(self) -> set[str]:
        """Names of the JupyterHub groups the user belongs to."""
        return {g.name for g in self.user.groups}

    def hub_groups(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The user's hub groups: name -> member names, and name -> kind (for those with one)."""
        groups = self.user.groups
        return (
            {g.name: [u.name for u in g.users] for g in groups},
            {g.name: g.properties["kind"] for g in groups if (g.properties or {}).get("kind") in GROUP_KINDS},
        )

    #: (database, groups as mirrored) -> when this process last wrote them (see sync_user_groups).
    _synced: ClassVar[dict[tuple[str, str], float]] = {}

    def sync_user_groups(self, hub_groups: tuple[dict, dict] | None = None, *, fresh_for: float = 0) -> None:
        """Mirror the user's hub groups (and their members) into the accounting database.

        With ``fresh_for`` (a page view), skip the write when this process mirrored exactly
        these groups less than that many seconds ago; admission always writes.
        """
        members, kinds = hub_groups or self.hub_groups()
        key = (self.db_url, json.dumps([members, kinds], sort_keys=True))
        now = time.monotonic()
        if fresh_for and now - self._synced.get(key, -fresh_for) < fresh_for:
            return
        self.accounting.sync_groups(members, kinds=kinds)
        if len(self._synced) > 10_000:
            self._synced.clear()
        self._synced[key] = now

    # --- picker --------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return self.timed_picker

    async def render_picker(self, spawner: Spawner | None = None) -> str:
        """The picker: classes, offerings, counts, prices, free now, remaining quota."""
        catalog = self.resource_catalog
        groups = sorted(self.user_groups())
        offerings = allowed_offerings(catalog, set(groups))
        live = asyncio.ensure_future(self.picker_live(offerings))
        reads = await asyncio.to_thread(self._picker_reads, offerings, groups, self.hub_groups())
        free, prices = await live
        if reads is None:
            return ""  # a running course session fixes the hardware: straight to the server
        trust, remaining_by_key, outlook = reads
        facts = offering_facts(catalog, self.config, self.offering_facts)
        rows = [
            {
                "offering": off,
                "free_now": free_now,
                "price": price.per_hour if price else off.price_per_hour,
                "price_refused": price.refused if price else None,
                **facts[off.key],
                "remaining": remaining_by_key[off.key],
                "trust": trust[off.key],
            }
            for off, free_now, price in zip(offerings, free, prices, strict=True)
        ]
        previous = self.user_options or (self.orm_spawner.user_options if self.orm_spawner else None) or {}
        choice = preselect(rows, previous, groups, self.default_hours)
        return picker_html(catalog, rows, groups, choice, {bid: f.label for bid, f in outlook.items()})

    def offering_facts(self, off: Offering) -> dict[str, Any]:
        """What the picker shows of ``off`` that is fixed while the hub runs (:func:`offering_facts`)."""
        backend = self.backend_class(off)
        return {"simulated": backend.simulated, "detail": backend.offering_detail(off),
                "shared": backend.shares_machine(self.config)}

    async def picker_live(self, offerings: list[Offering]) -> tuple[list, list]:
        """The "free now" and live price of each offering: one :meth:`free_now_many` and one
        :meth:`live_prices_many` per backend class, all concurrently."""
        by_class: dict[type, list[int]] = {}
        for i, off in enumerate(offerings):
            by_class.setdefault(self.backend_class(off), []).append(i)

        async def ask(cls: type, idx: list[int]) -> tuple[list, list]:
            chosen = [offerings[i] for i in idx]
            return await asyncio.gather(cls.free_now_many(chosen, self.config),
                                        cls.live_prices_many(chosen, self.config))

        answers = await asyncio.gather(*(ask(cls, idx) for cls, idx in by_class.items()))
        free: list = [None] * len(offerings)
        prices: list = [None] * len(offerings)
        for idx, (got_free, got_prices) in zip(by_class.values(), answers, strict=True):
            for i, f, p in zip(idx, got_free, got_prices, strict=True):
                free[i], prices[i] = f, p
        return free, prices

    def _picker_reads(self, offerings: list[Offering], groups: list[str], hub_groups: tuple[dict, dict]):
        """Every database read of the picker and its page in one worker-thread call and one
        read transaction (:meth:`Database.reading`): one hop and one BEGIN, not six.

        ``(trust, remaining per offering and group, forecasts)``; None while a course session
        holds the user's server.
        """
        self.sync_user_groups(hub_groups, fresh_for=PICKER_SYNC_SECONDS)  # a write: before the reads
        template_vars = self.config.JupyterHub.get("template_vars", {}) if "JupyterHub" in self.config else {}
        with self.accounting.db.reading():
            if courses.in_session(self.accounting.db, self.user.name, self.name):
                return None
            trust = self.picker_trust(offerings, set(groups))
            remaining = self.picker_remaining(offerings, groups)
            for name in SPAWN_PAGE_VARS:  # the page around the picker: its banners, in this same call
                if isinstance(template_vars.get(name), PageVar):
                    template_vars[name].prime(self.user.name, groups)
            outlook = remaining_forecasts(
                self.accounting.db, [rem for per_group in remaining.values() for rem in per_group.values()],
                self.accounting._now(),
            )
        return trust, remaining, outlook

    def picker_remaining(self, offerings: list[Offering], groups: list[str]) -> dict[str, dict]:
        """Per offering key, each group's remaining quota (runs in a worker thread)."""
        left = self.accounting.remaining_many(
            [(g, off.resource_class, off.name) for off in offerings for g in groups], username=self.user.name
        )
        return {off.key: {g: left[(g, off.resource_class, off.name)] for g in groups} for off in offerings}

    def options_from_form(self, formdata):
        """Map form fields to the canonical ``user_options`` (validated in apply_user_options)."""
        return form_to_options(formdata)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return HybridSpawner._apply_options

    async def _apply_options(self, user_options: dict[str, Any]) -> None:
        """Validate options from the form or REST; a bad field is a 400 naming it.

        Async (JupyterHub awaits ``apply_user_options``): the course-schedule lookup and a
        refusal's record run in worker threads, off the hub's loop.  ``profile`` is display only:
        set to the offering (JupyterHub's admin page shows it), ignored when it comes back.
        """
        if isinstance(user_options, dict):
            user_options = {k: v for k, v in user_options.items() if k != PROFILE}
        size = len(json.dumps(user_options, default=str))
        if size > self.max_options_bytes:
            self.log.warning("refused options of %s for %s: %d bytes, limit %d",
                             self.user.name, self._log_name, size, self.max_options_bytes)
            raise self.refused(413, f"Invalid option user_options: {size} bytes is over the "
                                    f"limit of {self.max_options_bytes} bytes", "options")
        try:  # a running course session fixes this server's hardware (403 naming it)
            user_options, self.course = await asyncio.to_thread(
                courses.session_launch, self.accounting.db, self.user.name, self.name, user_options
            )
        except courses.SessionLocked as e:
            await asyncio.to_thread(self.note_refusal, "course_lock", str(e), user_options)
            if self.orm_spawner is not None:  # a later start without options gets the session's
                self.orm_spawner.user_options = e.session_options
            raise self.refused(e.status, str(e), "course") from None
        groups = self.user_groups()
        default_group = next(iter(groups)) if len(groups) == 1 else None
        try:
            request, offering = validate_options(
                user_options, self.resource_catalog, groups, default_group=default_group,
                min_hours=self.min_launch_hours, hours_step=self.hours_resolution,
                scheduled=self.course is not None,  # the session's own length, to its end
            )
        except OptionError as e:
            self.log.warning("refused options of %s for %s: %s", self.user.name,
                             self._log_name, e)
            raise self.refused(400, f"Invalid option {e}", "options") from None
        self.launch = request
        self.offering = offering
        if self.course is not None:
            self.offering = self.course.apply(offering)
        self.user_options = {**user_options, PROFILE: self.offering.key}  # what the hub shows is what runs
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = self.user_options
        name_after_hardware(self.orm_spawner, self.name, self.offering, request.count)

    # --- state -----------------------------------------------------------------------

    launch: LaunchRequest | None = None
    offering: Offering | None = None
    reservation_id: int | None = None
    course: courses.SessionLaunch | None = None
    backend = None
    _backend_state: dict | None = None
    _price: float | None = None  #: the backend's admission price for this launch (None: the catalog's)

    def get_state(self):
        """Persist what a restarted hub needs to find the server and its reservation."""
        state = super().get_state()
        if self.launch is not None:
            state["request"] = self.launch.as_user_options()
            state["reservation_id"] = self.reservation_id
            state["session_id"] = self.session_id
        if self.backend is not None:
            state["backend_state"] = self.backend.get_state()
        elif self._backend_state:
            state["backend_state"] = self._backend_state
        return state

    def load_state(self, state):
        """Restore the request, reservation and backend state saved by :meth:`get_state`."""
        super().load_state(state)
        request = state.get("request")
        if not request:
            return
        offering = self.resource_catalog.offering(request["class"], request["model"])
        if offering is None:
            self.log.warning("Saved offering %s/%s no longer in catalog", request["class"], request["model"])
            return
        self.launch = LaunchRequest(
            request["class"], request["model"], int(request["count"]), float(request["hours"]), request["group"]
        )
        self.offering = offering
        self.reservation_id = state.get("reservation_id")
        self.session_id = state.get("session_id")
        self._backend_state = state.get("backend_state") or {}

    def clear_state(self):
        """Forget the launch once the server is gone."""
        super().clear_state()
        if self.backend is not None:
            self.backend.clear_state()
        self.launch = self.offering = self.reservation_id = self.backend = None
        self.session_id = self.confinement = None
        self._backend_state = None

    # --- backend child ---------------------------------------------------------------

    _SHARED_TRAITS = (
        "api_token", "oauth_client_id", "oauth_access_scopes", "cert_paths", "admin_access",
        "user_options", "server_token_scopes", "oauth_roles",
    )

    def _build_backend(self):
        cls = self.backend_class(self.offering)
        child = cls(
            user=self.user,
            orm_spawner=self.orm_spawner,
            hub=self.hub,
            authenticator=self.authenticator,
            config=self.config,
            proxy_spec=self.proxy_spec,
            cookie_options=self.cookie_options,
            cookie_host_prefix_enabled=self.cookie_host_prefix_enabled,
            public_url=self.public_url,
            public_hub_url=self.public_hub_url,
            internal_ssl=self.internal_ssl,
            internal_trust_bundles=self.internal_trust_bundles,
            internal_certs_location=self.internal_certs_location,
            offering=self.offering,
            request=self.launch,
            context=LaunchContext(self.reservation_id, self.db_url),
            log=self.log,
        )
        for name in self._SHARED_TRAITS:
            if self.has_trait(name) and child.has_trait(name):
                setattr(child, name, getattr(self, name))
        if self._backend_state:
            child.load_state(self._backend_state)
        return child

    def _ensure_backend(self):
        if self.backend is None and self.offering is not None:
            self.backend = self._build_backend()
        return self.backend

    @observe("api_token")
    def _forward_token(self, change):
        if self.backend is not None:
            self.backend.api_token = change["new"]

    # --- lifecycle ----------------------------------------------------------------------

    def _admit(self) -> int:
        req, off = self.launch, self.offering
        try:
            return self.accounting.admit(
                username=self.user.name,
                group=req.group,
                resource_class=req.resource_class,
                model=req.model,
                count=req.count,
                hours=req.hours,
                billing_weight=off.billing_weight,
                price_per_hour=off.price_per_hour if self._price is None else self._price,
                server_name=self.name,
                idempotency_key=(self.course and self.course.reservation_key)
                or f"launch:{self.user.name}:{self.name}:{uuid.uuid4()}",
            )
        except AdmissionError as e:
            self.log.info("refused launch of %s for %s: %s", self.user.name, self._log_name, e)
            self.note_refusal(admission_reason(e), str(e))
            unit = getattr(e, "unit", "hours")
            summary = reservation_summary(off, req.count, req.hours, req.group, unit, self._price)
            raise self.refused(403, f"This launch reserves {summary}: {e}", admission_reason(e)) from None

    def _prepare_launch(self, hub_groups: tuple[dict, dict]) -> None:
        """Mirror the user's groups, plan the confinement (403 if barred) and admit (runs in a thread)."""
        self.sync_user_groups(hub_groups)
        group = self.launch.group
        if group not in hub_groups[1]:  # README: a group needs a kind before its members can launch
            message = (f"Group {group!r} has no kind yet, so nothing can be charged to it: an administrator "
                       f"must set its 'kind' property to one of {', '.join(GROUP_KINDS)}.")
            self.note_refusal("no_budget", message)
            raise self.refused(403, message, "group")
        try:
            self.confinement = self.plan_confinement(set(hub_groups[0]))
        except web.HTTPError as e:
            self.note_refusal("barred", error_text(e))
            raise
        carried = self.take_carried()  # a move's admission, held for this launch (counted when the move admitted it)
        self.reservation_id = carried or self._admit()
        if carried is None:
            metrics.ADMISSIONS.labels("admitted", *offering_labels(self.offering)).inc()

    async def start(self):
        """Admit the launch against the group's budget, then start it on the backend."""
        if self.launch is None:
            await self._apply_options(self.user_options)
        self._price = await self.backend_class(self.offering).admission_price(self.offering, self.config)
        # the hub's ORM objects are read on the hub's thread; the accounting steps take one worker-thread hop
        await asyncio.to_thread(self._prepare_launch, self.hub_groups())
        self.backend = None
        self._backend_state = None
        backend = self._ensure_backend()
        started = time.perf_counter()
        try:
            self.confine(backend)
            result = await backend.start()
            await self._until_served(backend, result)
        except BaseException as e:
            self.count_running(-1)  # in case a poll during the start counted it
            await asyncio.to_thread(self.accounting.release, self.reservation_id, "failed to start")
            if isinstance(e, asyncio.CancelledError | TimeoutError):
                raise  # the hub reports a start timeout itself
            if isinstance(e, web.HTTPError) and e.status_code == 429:
                await asyncio.to_thread(self.note_refusal, "capacity", error_text(e))
            if isinstance(e, web.HTTPError) and e.status_code < 500 and getattr(e, "jupyterhub_message", None):
                self.observe_start(started, "refused")
                raise self.counted(as_refusal(e)) from None  # no capacity now, a price: nothing started
            plain = isinstance(e, NotServed)  # not a bug of ours: one line, no traceback
            self.log.error("Backend %s could not start %s%s", self.offering.backend, self._log_name,
                           f": {e}" if plain else "", exc_info=None if plain else e)
            self.observe_start(started, "failed")
            await self.record_failed_start(backend, e)
            if isinstance(e, web.HTTPError) and getattr(e, "jupyterhub_message", None):
                raise  # already says what happened
            raise start_failed(f"{self.offering.model} × {self.launch.count}", self.offering.backend, e) from e
        await asyncio.to_thread(self.accounting.mark_running, self.reservation_id)  # metering starts now
        self.observe_start(started, "served")
        self.count_running(+1)
        await self.record_start(backend)
        return result

    async def _until_served(self, backend, started) -> None:
        """Return once the new server answers; raise :class:`NotServed` if it died or never answered.

        Only a server that answered is metered (and pays the minimum charge), so a launch that never
        served costs nothing; a process that dies while starting is reported at once, not after the
        hub's ``http_timeout``.
        """
        if isinstance(started, str):
            url = urlsplit(started)
            ip, port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
        else:
            ip, port = started
        if await backend.wait_until_answering(ip or "127.0.0.1", int(port)):
            return
        status = await backend.poll()
        if status is not None:
            raise NotServed(f"the server exited while starting (status {status}); nothing answered")
        raise NotServed(f"the server did not answer within {self.http_timeout:g} s")

    async def poll(self):
        """Ask the backend; a server found dead has its reservation closed."""
        backend = self._ensure_backend()
        if backend is None:
            return 0
        status = await backend.poll()
        self.count_running(+1 if status is None else -1)  # a server re-adopted after a restart counts
        if status is not None and self.reservation_id is not None:
            await asyncio.to_thread(self.accounting.release, self.reservation_id, "exited")
            await self.record_end(backend, status)
        return status

    async def stop(self, now=False):
        """Stop on the backend and release the unused rest of the reservation."""
        backend = self._ensure_backend()
        if backend is not None:
            await backend.stop(now=now)
        self.count_running(-1)
        if self.reservation_id is not None:
            await asyncio.to_thread(self.accounting.release, self.reservation_id, "stopped")
            await self.record_end()

    async def progress(self):
        """Forward the backend's progress events to the hub's spawn page."""
        if self.backend is None:
            yield {"progress": 10, "message": "Checking quota and capacity"}
        while self.backend is None and self._spawn_pending:
            await asyncio.sleep(0.1)  # progress() is called before start() admits and builds the backend
        if self.backend is None:
            return
        notice = self.confinement_notice()
        if notice:
            yield {"progress": 15, "message": notice}
        async for event in self.backend.progress():
            yield event


@lru_cache(maxsize=8)
def _catalog_for(path: str, config_json: str, backend_override: str, classes: tuple) -> Catalog:
    catalog = load_catalog(
        json.loads(config_json) or None, path=path or None, backend_override=backend_override or None
    )
    return backends.check_catalog(catalog, dict(classes))
