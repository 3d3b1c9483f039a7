"""The metering service: runs :meth:`Accounting.meter` every interval and stops servers.

Runs as a JupyterHub managed service (``python -m hybridhub.services.meter``), configured from
the environment:

- ``HYBRIDHUB_DB_URL`` (default ``sqlite:///hybridhub.sqlite``)
- ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN`` (set by the hub for its services;
  the token needs the ``delete:servers`` scope and nothing more)
- ``HYBRIDHUB_METER_INTERVAL`` (seconds, default 60) and ``HYBRIDHUB_GRACE_SECONDS``
  (default 300)
- ``HYBRIDHUB_SMTP_HOST`` and friends: threshold mail to group leaders, off when unset
  (:meth:`hybridhub.accounting.mail.ThresholdMailer.from_env`)
- ``JUPYTERHUB_SERVICE_URL``: where it serves its Prometheus ``/metrics`` (tick duration and time,
  accelerator-hours and money charged, stops at zero, mails sent; :mod:`hybridhub.metrics`)

Servers on a tick's ``to_stop`` list are stopped through the hub's REST API
(``DELETE /users/{name}/servers/{server}``, or ``DELETE /users/{name}/server`` for the
default server); the spawner's stop then releases the reservation.  One log line is
written per stop; the token is never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import smtplib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

from tornado import web

from hybridhub import loghygiene, metrics
from hybridhub.accounting.db import DEFAULT_URL, Database
from hybridhub.accounting.ledger import Accounting, MeterReport, StopOrder
from hybridhub.accounting.mail import ThresholdMailer
from hybridhub.accounting.sessions import END_QUOTA, SessionLog
from hybridhub.accounting.settings import MeterSettings
from hybridhub.hubapi import HubApi
from hybridhub.services.observability import ChargeCounter, metrics_routes

log = logging.getLogger("hybridhub.meter")


def hub_stopper(hub: HubApi) -> Callable[[StopOrder], Awaitable[bool]]:
    """Stop an order's server through the hub's REST API; True if stopping or gone."""

    async def stop(order: StopOrder) -> bool:
        return await hub.stop_server(order.reservation.username, order.reservation.server_name)

    return stop


async def tick_every(
    tick: Callable[[], Awaitable[object]], interval: float, stopping: asyncio.Event, what: str
) -> None:
    """Run ``tick`` every ``interval`` seconds until ``stopping`` is set; a failed tick is
    logged (as ``what``) and retried at the next interval."""
    while not stopping.is_set():
        try:
            await tick()
        except Exception:
            log.exception("%s tick failed; retrying in %ss", what, interval)
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass


class Meter:
    """Runs metering ticks every ``interval`` seconds and stops the servers they list."""

    def __init__(
        self,
        accounting: Accounting,
        stop: Callable[[StopOrder], Awaitable[bool]],
        interval: float | None = None,
        mailer: ThresholdMailer | None = None,
    ):
        self.accounting = accounting
        self.stop = stop
        self.mailer = mailer
        self.interval = float(interval or accounting.meter_interval)
        self._stopping = asyncio.Event()
        self.charges = ChargeCounter(accounting.db)
        self._ordered: set[int] = set()  # reservations the last tick ordered stopped (counted once)

    async def tick(self) -> MeterReport:
        """One tick: meter in a worker thread (never blocking the loop), then stop servers."""
        started = time.perf_counter()
        report = await asyncio.get_running_loop().run_in_executor(None, self.accounting.meter)
        await asyncio.to_thread(self.charges.count)
        counted, self._ordered = self._ordered, {order.reservation.id for order in report.to_stop}
        for order in report.to_stop:
            r = order.reservation
            if r.id not in counted:  # a server still stopping is ordered again, not counted again
                metrics.STOPS_AT_ZERO.labels(r.resource_class, r.group).inc()
            log.warning(
                "stopping %s's server %r (reservation %s, group %s): %s",
                r.username, r.server_name, r.id, r.group, order.reason,
            )
            # say why before the DELETE, so the session's provenance record ends in "quota"
            await asyncio.to_thread(
                SessionLog(self.accounting.db).request_end, END_QUOTA, reservation_id=r.id,
                detail=order.reason,
            )
            await self.stop(order)
        if self.mailer is not None:
            try:
                metrics.MAILS_SENT.inc(await asyncio.to_thread(self.mailer.send_pending, report.now))
            except (OSError, smtplib.SMTPException) as exc:
                log.error("threshold mail not sent (retried next tick): %s", exc)
        metrics.METER_TICK.observe(time.perf_counter() - started)
        metrics.METER_LAST_TICK.set_to_current_time()
        return report

    async def run(self) -> None:
        """Tick until :meth:`shutdown`; a failed tick is logged and retried next interval."""
        await tick_every(self.tick, self.interval, self._stopping, "metering")

    def shutdown(self) -> None:
        """Finish the current tick and stop."""
        self._stopping.set()


def from_env(env: dict[str, str] | None = None) -> Meter:
    """Build a :class:`Meter` from the environment a JupyterHub service receives."""
    env = dict(os.environ if env is None else env)
    token = env.get("JUPYTERHUB_API_TOKEN")
    api_url = env.get("JUPYTERHUB_API_URL")
    if not token or not api_url:
        raise SystemExit("JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN must be set")
    db = Database(env.get("HYBRIDHUB_DB_URL", DEFAULT_URL))
    db.upgrade()
    accounting = MeterSettings.from_env(env).accounting(db)
    return Meter(accounting, hub_stopper(HubApi(api_url, token)),
                 mailer=ThresholdMailer.from_env(db, env))


async def _main() -> None:
    loghygiene.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    meter = from_env()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, meter.shutdown)
    log.info("metering every %ss: %s", meter.interval, json.dumps(meter.accounting.db.safe_url))
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if url:  # Prometheus scrapes /metrics here (or through the hub's proxy, at the service prefix)
        parsed = urlparse(url)
        web.Application(metrics_routes(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", ""))).listen(
            parsed.port or 80, parsed.hostname or "127.0.0.1", xheaders=True)
    await meter.run()


if __name__ == "__main__":
    asyncio.run(_main())
