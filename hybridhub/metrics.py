"""hybridhub's Prometheus metrics, all named ``hybridhub_*``, and the services' ``/metrics`` endpoint.

Labels are bounded: ``class``, ``offering``, ``backend``, ``reason``, ``outcome``, ``group`` (never a
user or server name).  The hub's metrics live in ``prometheus_client``'s default registry, which
JupyterHub serves on ``/hub/metrics``; the services' metrics live in :data:`SERVICE_REGISTRY`, served
by :class:`MetricsHandler` to a hub token with the ``read:metrics`` scope (as ``/hub/metrics`` asks).
Updating a metric is a few dict operations: nothing here does I/O on the hub's loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from jupyterhub.services.auth import HubAuth
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tornado import web

#: The hub token scope a scraper needs (JupyterHub's own, the one ``/hub/metrics`` checks).
METRICS_SCOPE = "read:metrics"

# --- the hub process (JupyterHub's registry) -------------------------------------------------

ADMISSIONS = Counter(
    "hybridhub_admissions", "Launches checked against a budget, by outcome (admitted, refused).",
    ["outcome", "class", "offering"])
REFUSALS = Counter(
    "hybridhub_refusals", "Launches refused by policy, by stable reason.", ["reason", "class", "offering", "backend"])
SPAWN_DURATION = Histogram(
    "hybridhub_spawn_duration_seconds", "Seconds from admission to a served server (or a failure), by backend.",
    ["backend", "outcome"], buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")))
RUNNING_SERVERS = Gauge(
    "hybridhub_running_servers", "Servers running now, by class and offering.", ["class", "offering"])
RUNNING_ACCELERATORS = Gauge(
    "hybridhub_running_accelerators", "Accelerators held by running servers, by class and offering.",
    ["class", "offering"])
PICKER_RENDER = Histogram(
    "hybridhub_picker_render_seconds", "Seconds to render the resource picker.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf")))

# --- the meter and portal services ----------------------------------------------------------

SERVICE_REGISTRY = CollectorRegistry()
METER_TICK = Histogram(
    "hybridhub_meter_tick_seconds", "Seconds one metering tick took.", registry=SERVICE_REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")))
METER_LAST_TICK = Gauge(
    "hybridhub_meter_last_tick_timestamp_seconds", "Unix time of the last metering tick that finished.",
    registry=SERVICE_REGISTRY)
ACCELERATOR_HOURS = Counter(
    "hybridhub_accelerator_hours", "Accelerator-hours charged, by class and group.", ["class", "group"],
    registry=SERVICE_REGISTRY)
MONEY_CHARGED = Counter(
    "hybridhub_money_charged", "Money charged at the offerings' list prices, by class and group.",
    ["class", "group"], registry=SERVICE_REGISTRY)
STOPS_AT_ZERO = Counter(
    "hybridhub_stops_at_zero", "Servers stopped because their budget or reservation ran out, by class and group.",
    ["class", "group"], registry=SERVICE_REGISTRY)
IDLE_CULLS = Counter(
    "hybridhub_idle_culls", "Servers the idle culler was told to stop because their accelerators stayed idle "
    "(its 'cull' verdicts), by class and group.", ["class", "group"], registry=SERVICE_REGISTRY)
MAILS_SENT = Counter(
    "hybridhub_mails_sent", "Threshold mails sent to group leaders.", registry=SERVICE_REGISTRY)


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: token …`` or ``Bearer …`` header ('' if none)."""
    kind, _, token = header.strip().partition(" ")
    return token.strip() if kind.lower() in ("token", "bearer") else ""


class ScopeCheck:
    """Whether a hub token holds :data:`METRICS_SCOPE`; answers are kept ``ttl`` seconds (by hash)."""

    def __init__(self, auth: HubAuth | None = None, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.auth = auth or HubAuth()
        self.ttl, self.clock = ttl, clock
        self._seen: dict[str, tuple[float, bool]] = {}

    async def allows(self, token: str) -> bool:
        """True if the hub says this token has the metrics scope."""
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._seen.get(key)
        if hit and self.clock() - hit[0] < self.ttl:
            return hit[1]
        model = await self.auth.user_for_token(token, use_cache=False, sync=False)
        ok = bool(model) and METRICS_SCOPE in (model.get("scopes") or [])
        self._seen = {k: v for k, v in self._seen.items() if self.clock() - v[0] < self.ttl}
        self._seen[key] = (self.clock(), ok)
        return ok


class MetricsHandler(web.RequestHandler):
    """``GET /metrics``: the registry in Prometheus' text format, for a token with ``read:metrics``."""

    def initialize(self, registry: CollectorRegistry, check: ScopeCheck) -> None:
        self.registry, self.check = registry, check

    async def get(self) -> None:
        token = bearer_token(self.request.headers.get("Authorization", ""))
        if not token or not await self.check.allows(token):
            raise web.HTTPError(403, "a hub token with the %s scope is required", METRICS_SCOPE)
        body = await asyncio.to_thread(generate_latest, self.registry)  # collectors may read the database
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)
