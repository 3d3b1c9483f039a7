"""The Theta spawner: one GPU Node deployment per server, JupyterLab started on it over SSH (see the package)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import date
from pathlib import Path

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from traitlets import Any, Bool, Float, Int, List, Unicode, default

from hybridhub.backends.base import BackendMixin, KnownServer, LivePrice, ProviderBill, Reconciled, poll_until
from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.billing import balance, theta_usage
from hybridhub.backends.theta.client import ThetaClient, ThetaError, ThetaTimeout
from hybridhub.backends.theta.home import relative
from hybridhub.backends.theta.keys import KeyStore
from hybridhub.backends.theta.launch import ThetaLaunch
from hybridhub.backends.theta.offering import ThetaFields, check_fields
from hybridhub.backends.theta.reconcile import reconcile_deployments
from hybridhub.backends.theta.ssh import LaunchKey
from hybridhub.errors import no_capacity_error, user_error

#: What a user sees when Theta cannot be used at all (a refused key, no answer): never a 500.
UNAVAILABLE = "This hardware is unavailable right now: the hub cannot use its Theta EdgeCloud project"


def above_ceiling(model: str, quote: float | None, cap: float | None) -> str | None:
    """Why a launch at ``quote`` is refused, naming both prices (the picker, admission and ``start()`` ask
    this one check); None when there is no quote, no ceiling, or the quote is within it."""
    if quote is None or cap is None or quote <= cap:
        return None
    return f"Theta quotes ${quote:.2f}/h for {model}, above this offering's ceiling of ${cap:.2f}/h"


class ThetaBackend(ThetaLaunch, BackendMixin, Spawner):
    """Run each server on a Theta EdgeCloud GPU Node (community or hosted), reached over SSH and HTTP."""

    watches_machine = True  # poll() reports the deployment: any status means the node is gone
    offering_fields = ThetaFields

    base_url = Unicode(
        os.environ.get("THETA_CONTROLLER_BASE_URL", ""),
        help="Base URL of Theta EdgeCloud's project API (default: $THETA_CONTROLLER_BASE_URL).",
    ).tag(config=True)
    project_id = Unicode(
        os.environ.get("THETA_PROJECT_ID", ""), help="The Theta project id (default: $THETA_PROJECT_ID)."
    ).tag(config=True)
    api_key = Unicode(
        os.environ.get("THETA_API_KEY", ""),
        help="The project's API key, sent as x-api-key (default: $THETA_API_KEY). A secret: never logged.",
    ).tag(config=True)
    request_timeout = Float(30.0, help="Seconds one request to Theta may take.").tag(config=True)
    hub_id = Unicode(
        "hybridhub",
        help="Marks this hub's deployments (a hash of it starts their names). Give each hub sharing a Theta "
        "project its own id: the reconciler deletes this hub's deployments that the hub does not know.",
    ).tag(config=True)
    ssh_user = Unicode("root", help="Account on the GPU Node that the hub logs in as.").tag(config=True)
    node_cmd = List(
        Unicode(), ["jupyterhub-singleuser"], help="Command starting the single-user server on the node."
    ).tag(config=True)
    node_http_port = Int(
        8888, help="Port the server listens on inside the node (sent as http_port); 0: a free port of the "
        "hub's machine (for a test controller running nodes on it)."
    ).tag(config=True)
    node_ssh_port = Int(22, help="Port of sshd inside the node (sent as ssh_port).").tag(config=True)
    node_bind_ip = Unicode("0.0.0.0", help="Address the server binds on the node.").tag(config=True)
    accept_unknown_host_key = Bool(
        False, help="Connect even when Theta gives no host key for the node (no host-key check). Leave off."
    ).tag(config=True)
    boot_timeout = Float(600, help="Seconds to wait for a deployment to run and accept SSH.").tag(config=True)
    server_ready_timeout = Float(300, help="Seconds to wait for the started server to answer.").tag(config=True)
    poll_interval = Float(2.0, help="Seconds between deployment reads while waiting.").tag(config=True)
    ready_poll_interval = Float(0.5, help="Seconds between HTTP probes of the new server.").tag(config=True)
    warmup_statuses = List(
        Int(), [401, 404, 503], help="HTTP statuses Theta answers while a new deployment warms up (retried)."
    ).tag(config=True)
    resources_cache_seconds = Float(10.0, help="Seconds a gpu-resources listing is reused.").tag(config=True)
    home_dir = Unicode(
        "", help="The user's home on the hub's machine ({username}), copied to the node over SSH at start and back "
        "at stop, confidential folders left out. Empty: the node starts with an empty home."
    ).tag(config=True)
    node_home = Unicode(
        "", help="The server's home on the node (HOME); empty: the SSH login's home."
    ).tag(config=True)
    key_dir = Unicode(
        help="Folder on the hub's machine (the hub account's alone, 0700; each key 0600) keeping each running "
        "server's SSH private key until its deployment is deleted, so the home is still copied back from the node "
        "after a hub restart. Empty: keys only in the hub's memory (a restart loses the node's changes to the home). "
        "Default: hybridhub-theta-keys in the hub's working folder (beside its cookie secret) when home_dir is set."
    ).tag(config=True)
    home_sync_timeout = Float(300, help="Seconds the copy of the home back from the node may take at stop.").tag(
        config=True)
    clock = Any(time.monotonic, help="Monotonic clock (tests inject one).")

    @default("key_dir")
    def _default_key_dir(self) -> str:
        return os.path.abspath("hybridhub-theta-keys") if self.home_dir else ""

    def key_store(self) -> KeyStore | None:
        """Where running launches' keys are kept for their stop (None: in memory only)."""
        return KeyStore(self.key_dir) if self.key_dir and self.home() is not None else None

    deployment_id: str | None = None
    deployment_name: str | None = None
    http_url: str | None = None
    hidden_paths: tuple[str, ...] = ()
    _key: LaunchKey | None = None  # this server's SSH key, in memory only (never in the state)
    _node: tb.Deployment | None = None

    def client(self) -> ThetaClient:
        """A client of the configured project (ValueError when base URL, project or key is missing)."""
        return ThetaClient(self.base_url, self.project_id, self.api_key, timeout=self.request_timeout)

    # --- catalog hooks ----------------------------------------------------------------------------

    @classmethod
    def check_offering(cls, offering) -> None:
        """A community offering needs a price ceiling; every offering an image."""
        check_fields(cls.fields_of(offering), offering.image, offering.config_key)

    @classmethod
    def offering_detail(cls, offering) -> str:
        fields = cls.fields_of(offering)
        kind = f"hosted{', ' + fields.region if fields.region else ''}" if fields.hosted else "community node"
        cap = fields.max_price_per_hour_usd
        return f"Theta {kind}" + (f", at most ${cap:.2f}/h" if cap else "")

    @classmethod
    def host_labels(cls, offering, config) -> list[dict[str, str]]:
        """Community nodes are other people's machines: untrusted."""
        return [] if cls.fields_of(offering).hosted else [{"trust": "untrusted", "provider": "theta-community"}]

    #: gpu-resources listings by (base URL, project, loop): when read, and the read (shared while in flight).
    _resource_cache: dict[tuple, tuple[float, asyncio.Future]] = {}

    @classmethod
    async def _resources(cls, backend: ThetaBackend) -> list[tb.Resource]:
        """The project's GPU resources, read at most once per ``resources_cache_seconds``: the picker's free
        counts and live prices of every offering, and concurrent renders, share one request."""
        key = (backend.base_url, backend.project_id, asyncio.get_running_loop())
        cached = cls._resource_cache.get(key)
        if cached is None and len(cls._resource_cache) > 64:
            cls._resource_cache.clear()
        fresh = cached and time.monotonic() - cached[0] < backend.resources_cache_seconds
        if not fresh or (cached[1].done() and cached[1].exception() is not None):
            async def read() -> list[tb.Resource]:
                return tb.resources(await backend.client().list_gpu_resources())
            cached = cls._resource_cache[key] = (time.monotonic(), asyncio.ensure_future(read()))
        return await asyncio.shield(cached[1])

    @classmethod
    async def free_now_many(cls, offerings, config) -> list[int | None]:
        """Free nodes of each offering's resource, from one gpu-resources listing (None if Theta fails)."""
        backend = cls(config=config)
        try:
            found = await cls._resources(backend)
        except (ThetaError, ValueError) as e:
            backend.log.warning("Theta: cannot list GPU resources: %s", e)
            return [None] * len(offerings)
        free = []
        for offering in offerings:
            fields = cls.fields_of(offering)
            res = tb.find_resource(found, fields.resource_id, fields.region)
            free.append(None if res is None else res.available)
        return free

    @classmethod
    async def free_now(cls, offering, config) -> int | None:
        return (await cls.free_now_many([offering], config))[0]

    @classmethod
    async def live_prices_many(cls, offerings, config) -> list[LivePrice | None]:
        """Theta's price of each offering's resource now, from the listing :meth:`free_now_many` reads; a price
        above the offering's ceiling carries why a launch would be refused (None where Theta gives none)."""
        try:
            found = await cls._resources(cls(config=config))
        except (ThetaError, ValueError):
            return [None] * len(offerings)  # free_now_many logged it
        prices: list[LivePrice | None] = []
        for offering in offerings:
            fields = cls.fields_of(offering)
            res = tb.find_resource(found, fields.resource_id, fields.region)
            quote, cap = (res.price_per_hour_usd if res else None), fields.max_price_per_hour_usd
            prices.append(None if quote is None else LivePrice(quote, above_ceiling(offering.model, quote, cap)))
        return prices

    @classmethod
    async def admission_price(cls, offering, config) -> float | None:
        """Theta's quote for the offering's resource, when within its ceiling (else None: the catalog's price;
        ``start()`` refuses a quote above the ceiling, and reports Theta's errors)."""
        backend, fields = cls(config=config), cls.fields_of(offering)
        try:
            quote = tb.resource(await backend.client().get_gpu_resource(fields.resource_id, fields.region))
        except (ThetaError, ValueError):
            return None
        cap, price = fields.max_price_per_hour_usd, quote.price_per_hour_usd
        return None if price is None or above_ceiling(offering.model, price, cap) else price

    @classmethod
    async def provider_bill(cls, config, since: date, until: date) -> ProviderBill | None:
        """Theta's billing/usage per day and the project's balance against its running deployments."""
        backend = cls(config=config)
        try:
            client = backend.client()
            days = await theta_usage(client, since.isoformat(), until.isoformat())
            bal = await balance(client)
        except (ThetaError, ValueError) as e:
            backend.log.warning("Theta: cannot read the project's billing: %s", e)
            return None
        return ProviderBill("theta", {date.fromisoformat(d): usd for d, usd in days.items()}, bal.balance_usd,
                            bal.running_usd_per_hour)

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config) -> Reconciled:
        """Delete this hub's deployments that no known server holds; report known servers whose deployment
        is gone (:mod:`hybridhub.backends.theta.reconcile`)."""
        return await reconcile_deployments(cls(config=config), known)

    # --- state ------------------------------------------------------------------------------------

    def get_state(self):
        """The deployment's id, name and HTTP endpoint, and the folders left out of the home (never the SSH key)."""
        state = super().get_state()
        for key in ("deployment_id", "deployment_name", "http_url"):
            if getattr(self, key):
                state[key] = getattr(self, key)
        if self.hidden_paths:  # a stop after a hub restart must still keep them out of what comes back
            state["hidden_paths"] = list(self.hidden_paths)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.deployment_id = state.get("deployment_id")
        self.deployment_name = state.get("deployment_name")
        self.http_url = state.get("http_url")
        if state.get("hidden_paths"):
            self.hidden_paths = tuple(relative(p) for p in state["hidden_paths"])

    def clear_state(self):
        super().clear_state()
        self.deployment_id = self.deployment_name = self.http_url = None
        self._key = self._node = None

    @property
    def _label(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    def home(self) -> Path | None:
        """The user's home on the hub's machine, or None when homes do not follow users to Theta."""
        return Path(self.home_dir.format(username=self.user.name)) if self.home_dir else None

    def hide_paths(self, paths: list[str]) -> None:
        """Leave these folders of the home out of what is copied to the node and back."""
        self.hidden_paths = tuple(relative(p) for p in paths)

    def provenance(self) -> dict[str, object]:
        fields = self.fields if self.offering else None
        return {
            "host": self.http_url, "deployment_id": self.deployment_id,
            "resource_id": fields.resource_id if fields else None, "region": fields.region if fields else None,
            "provider": "theta",
        }

    # --- lifecycle --------------------------------------------------------------------------------

    def _unavailable(self, error: ThetaError | ValueError) -> Exception:
        """The user-facing error for a Theta failure; the admin-facing cause goes to the log."""
        if isinstance(error, ThetaError) and error.auth:
            self.log.error("Theta refused this hub's API key (HTTP %s) for project %r: set a valid "
                           "c.ThetaBackend.api_key", error.status, self.project_id)
            return user_error(503, UNAVAILABLE + ". The administrators have been told.")
        if isinstance(error, ThetaTimeout):
            self.log.error("%s: Theta did not answer: %s", self._label, error)
            return user_error(503, UNAVAILABLE + " (Theta did not answer in time). Try again in a minute.")
        if isinstance(error, ValueError):
            self.log.error("%s: Theta backend misconfigured: %s", self._label, error)
            return user_error(503, UNAVAILABLE + ". The administrators have been told.")
        self.log.error("%s: Theta error: %s", self._label, error)
        return user_error(503, f"{UNAVAILABLE}: {str(error)[:300]}")

    async def start(self):
        """Check the quote, create the deployment, start the server over SSH; its URL."""
        feed = self._open_feed()
        if self.node_http_port == 0:
            self.node_http_port = random_port()
        try:
            return await self._launch()
        except BaseException as e:
            await self._cleanup_failed_launch(e)
            if isinstance(e, ThetaError | ValueError):
                raise self._unavailable(e) from None
            raise
        finally:
            feed.finish()

    async def _quote(self, client: ThetaClient, fields: ThetaFields) -> tb.Resource:
        """Theta's quote for the offering's resource; refused (nothing created) above the ceiling."""
        try:
            res = tb.resource(await client.get_gpu_resource(fields.resource_id, fields.region))
        except ThetaError as e:
            if e.status == 404:
                raise no_capacity_error(f"No {self.offering.model} node is free on Theta right now.") from None
            raise
        cap, quote = fields.max_price_per_hour_usd, res.price_per_hour_usd
        if refused := above_ceiling(self.offering.model, quote, cap):
            raise user_error(409, f"{refused}; nothing was created.")
        if res.available == 0:
            raise no_capacity_error(f"No {self.offering.model} node is free on Theta right now.")
        return res

    async def poll(self):
        """None while the deployment runs (or Theta cannot say); a text status once it is gone."""
        if not self.deployment_id:
            return 0
        client = self.client()
        try:
            dep = tb.deployment(await client.get_gpu_deployment(self.deployment_id))
        except ThetaError as e:
            if e.status != 404:
                self.log.warning("%s: cannot read deployment %s (%s); assuming it runs",
                                 self._label, self.deployment_id, e)
                return None
            dep = None
        if dep is not None and (dep.running or dep.pending):
            return None
        reason = await self._events_reason(client)
        what = "deleted" if dep is None else dep.status or "ended"
        return f"the Theta deployment {self.deployment_id} is {what}" + (f": {reason}" if reason else "")

    async def _events_reason(self, client: ThetaClient) -> str:
        try:
            return tb.last_event_reason(await client.get_gpu_deployment_events(self.deployment_id))[:300]
        except ThetaError:
            return ""

    def end_reason(self, status) -> str | None:
        return "host lost" if isinstance(status, str) else None

    async def stop(self, now=False):
        """Delete the deployment (already gone: nothing to do)."""
        if not self.deployment_id:
            return
        if self.home() is not None and not now:
            await self._fetch_home()
        self.log.info("%s: deleting Theta deployment %s", self._label, self.deployment_id)
        await self._delete(self.client(), self.deployment_id)
        self._forget_key()
        self.deployment_id = None
        self._key = self._node = None

    def _forget_key(self) -> None:
        """Delete the kept key of this deployment (its node is gone: the key opens nothing any more)."""
        store = self.key_store()
        if store is not None and self.deployment_name:
            store.drop(self.deployment_name)

    async def _delete(self, client: ThetaClient, deployment_id: str) -> None:
        try:
            await client.delete_gpu_deployment(deployment_id)
        except ThetaError as e:
            if e.status != 404:
                raise

    async def _cleanup_failed_launch(self, error: BaseException) -> None:
        """Delete what this launch created; shielded so a cancelled start still cleans up."""
        if not self.deployment_id:
            return

        async def cleanup():
            self.log.warning("%s: launch failed (%s); deleting deployment %s",
                             self._label, type(error).__name__, self.deployment_id)
            try:
                await self._delete(self.client(), self.deployment_id)
                self._forget_key()
            except ThetaError as e:
                self.log.error("%s: could not delete deployment %s: %s", self._label, self.deployment_id, e)
            self.deployment_id = None

        task = asyncio.ensure_future(cleanup())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _wait_deployment(self, client: ThetaClient) -> tb.Deployment:
        """The deployment once it runs with an SSH endpoint (warm-up answers retried); 503/504 otherwise."""
        model = self.offering.model

        async def ready() -> tb.Deployment | None:
            try:
                dep = tb.deployment(await client.get_gpu_deployment(self.deployment_id))
            except ThetaError as e:
                if e.status in self.warmup_statuses:
                    return None
                raise
            if dep.running and dep.ssh_host and dep.ssh_port:
                return dep
            if not (dep.pending or dep.running):
                reason = await self._events_reason(client)
                raise user_error(503, f"The Theta {model} node ended while starting ({dep.status or 'gone'}"
                                      f"{': ' + reason if reason else ''}); nothing is left running.")
            return None

        dep = await poll_until(ready, interval=self.poll_interval, timeout=self.boot_timeout, clock=self.clock)
        if dep is None:
            raise user_error(504, f"The Theta {model} node did not start within {int(self.boot_timeout)} s; "
                                  "it has been deleted.")
        return dep
