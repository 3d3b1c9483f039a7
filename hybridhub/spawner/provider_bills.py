"""The providers' bills, read in the hub and recorded for the portal's reconciliation page and dashboard.

Every ``ProviderBillsRunner.interval`` seconds, for each backend class the catalog uses, the runner awaits
its :meth:`~hybridhub.backends.base.BackendMixin.provider_bill` hook for the last ``days`` days and records
the answer (:mod:`hybridhub.accounting.provider_bills`): Theta's ``billing/usage`` per day and its balance
against the running deployments.  The portal never calls a provider: it reads what is recorded here.
A hook that fails or overruns ``timeout`` is logged and the next backend goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from hybridhub.accounting.provider_bills import last_days, record
from hybridhub.spawner.hub_start import after_hub_starts
from hybridhub.spawner.hybrid import HybridSpawner


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ProviderBillsRunner(LoggingConfigurable):
    """Record each provider's bill and balance, every ``interval`` seconds."""

    interval = Float(
        3600.0, help="Seconds between reads of the providers' bills and balances (Theta's billing/usage and "
        "billing/balance) in the hub, for the portal's reconciliation page and dashboard. 0 turns them off.",
    ).tag(config=True)
    days = Int(35, help="Days of a provider's bill read in each pass: today and the days before.").tag(config=True)
    timeout = Float(120.0, help="Seconds one backend's provider_bill may take; a longer one is abandoned.").tag(
        config=True)

    def __init__(self, spawner: HybridSpawner | None = None, clock: Callable[[], datetime] = utcnow, **kwargs):
        super().__init__(**kwargs)
        self.spawner = spawner or HybridSpawner(config=self.config)
        self.clock = clock

    def backends(self) -> list[type]:
        """Each backend class the catalog uses, once."""
        return list(dict.fromkeys(self.spawner.backend_class(o) for o in self.spawner.resource_catalog.all_offerings()))

    async def record_once(self) -> list[str]:
        """One pass; the providers recorded."""
        now = self.clock()
        since, until = last_days(now.date(), self.days)
        until -= timedelta(days=1)  # provider_bill's until is inclusive: today
        recorded = []
        for cls in self.backends():
            try:
                bill = await asyncio.wait_for(cls.provider_bill(self.config, since, until), self.timeout)
            except Exception:  # a timeout included: the next backend goes on
                self.log.exception("Reading the provider bill of %s failed", cls.__name__)
                continue
            if bill is None:
                continue
            classes = {o.resource_class for o in self.spawner.resource_catalog.all_offerings()
                       if self.spawner.backend_class(o) is cls}
            await asyncio.to_thread(record, self.spawner.accounting.db, bill.provider, bill.days, bill.balance_usd,
                                    bill.running_usd_per_hour, now, classes)
            recorded.append(bill.provider)
        return recorded

    async def run(self) -> None:
        """Record now and every ``interval`` seconds, until cancelled (the hub shuts down)."""
        while self.interval > 0:
            try:
                await self.record_once()
            except Exception:
                self.log.exception("Recording the providers' bills failed")
            await asyncio.sleep(self.interval)


def start_in_hub() -> asyncio.Task | None:
    """Run a :class:`ProviderBillsRunner` in the JupyterHub app this process is starting, once the hub runs
    (``add_hybridhub`` calls it while the hub loads its config; elsewhere it does nothing)."""
    global _task
    if _task is not None:
        return None

    async def run(app) -> None:
        if issubclass(app.spawner_class, HybridSpawner):
            await ProviderBillsRunner(app.spawner_class(config=app.config), parent=app).run()

    _task = after_hub_starts(run)
    return _task


#: The runner's task in this process (one per hub).
_task: asyncio.Task | None = None
