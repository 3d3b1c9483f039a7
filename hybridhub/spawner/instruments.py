"""HybridSpawner's own Prometheus metrics (:mod:`hybridhub.metrics`): spawn duration, running servers
and accelerators, picker render time.  Each update is in-memory only, so the hub's loop never waits."""

from __future__ import annotations

import time

from hybridhub import metrics
from hybridhub.spawner.refusals import offering_labels


class InstrumentsMixin:
    """Counts this spawner's server in the running gauges at most once, and times starts and pickers."""

    _running_counted: tuple[str, str, int] | None = None

    def observe_start(self, since: float, outcome: str) -> None:
        """Record a start on the backend that began at ``since`` (``perf_counter``) and ended in ``outcome``."""
        backend = self.offering.backend if self.offering is not None else ""
        metrics.SPAWN_DURATION.labels(backend, outcome).observe(time.perf_counter() - since)

    def count_running(self, delta: int) -> None:
        """+1 when this server runs (started or re-adopted), -1 when it stopped; idempotent either way."""
        if delta > 0 and self._running_counted is None and self.offering is not None:
            count = self.launch.count if self.launch is not None else 1
            self._running_counted = (*offering_labels(self.offering), count)
            metrics.RUNNING_SERVERS.labels(*self._running_counted[:2]).inc()
            metrics.RUNNING_ACCELERATORS.labels(*self._running_counted[:2]).inc(count)
        elif delta < 0 and self._running_counted is not None:
            cls, key, count = self._running_counted
            self._running_counted = None
            metrics.RUNNING_SERVERS.labels(cls, key).dec()
            metrics.RUNNING_ACCELERATORS.labels(cls, key).dec(count)

    async def timed_picker(self, spawner=None) -> str:
        """The picker (:meth:`render_picker`), its render time observed."""
        with metrics.PICKER_RENDER.time():
            return await self.render_picker(spawner)
