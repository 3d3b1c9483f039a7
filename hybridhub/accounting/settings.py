"""The metering settings every process shares: one source of truth.

The meter interval (also the least a launch whose server answered pays for) and the grace
before a stop decide what a launch costs, so the hub, the meter, the portal and the course
scheduler must use the same values.  ``add_hybridhub`` resolves them
once (its arguments, else the environment below, else the defaults), sets them on
``HybridSpawner`` and hands them to each service as the same environment variables; every
process builds its :class:`Accounting` with :meth:`MeterSettings.accounting`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting

#: The environment variables that carry the settings to every process.
ENV_INTERVAL = "HYBRIDHUB_METER_INTERVAL"
ENV_GRACE = "HYBRIDHUB_GRACE_SECONDS"


@dataclass(frozen=True)
class MeterSettings:
    """Metering granularity (the minimum charge too) and grace before a stop, in seconds."""

    interval: float = 60.0
    grace_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name, value, low in (("meter interval", self.interval, 1e-3), ("grace seconds", self.grace_seconds, 0)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MeterSettings:
        """The settings a process was given (missing variables: the defaults)."""
        values = {}
        for var, field in ((ENV_INTERVAL, "interval"), (ENV_GRACE, "grace_seconds")):
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                values[field] = float(raw)
            except ValueError:
                raise ValueError(f"{var} must be a number of seconds, got {raw[:40]!r}") from None
        return cls(**values)

    def env(self) -> dict[str, str]:
        """The environment that hands these settings to another process."""
        return {ENV_INTERVAL: repr(self.interval), ENV_GRACE: repr(self.grace_seconds)}

    def accounting(self, db: Database, **kwargs) -> Accounting:
        """An :class:`Accounting` over ``db`` with these settings."""
        return Accounting(db, meter_interval=self.interval, grace_seconds=self.grace_seconds, **kwargs)
