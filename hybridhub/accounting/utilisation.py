"""Accelerator utilisation reported by single-user servers, and the idle rule read from it.

A server's extension (``hybridhub_lab.sampler``) posts its devices' utilisation and memory to
the portal with the server's own token; :func:`record_report` checks the report, refuses one
that comes sooner than ``min_report_seconds`` after the last (:class:`TooSoon`), stores it
(one row per report: the peak over the devices, which the idle rule reads, and the devices)
and prunes every row older than ``keep_hours`` (one range delete on an index).

:func:`utilisation_of` turns the open session's recent rows into its state:

- ``unknown``: no report in the last ``stale_seconds`` (no source, or the extension is not
  running): nothing is decided for it, the culler's ordinary rule applies;
- ``busy``: the latest report's peak is at or above ``threshold_pct``;
- ``idle``: below it since the first report after the last busy one (or the first report).

:func:`idle_verdict` is the culler's question: ``cull`` once the accelerators were idle for
the offering's ``idle_minutes`` (the catalog's, stored with each report by the portal; the
open record then says why before the stop: :data:`~hybridhub.accounting.sessions.END_IDLE`),
``keep`` while they are busy or idle for less, ``ordinary`` for a server without
accelerators, without ``idle_minutes`` or unknown.
Times are naive UTC; ``now`` is always passed in, so tests never sleep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, delete, func, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Base, iso_utc
from hybridhub.accounting.sessions import END_IDLE, SessionLog, SessionRecord

SOURCES = ("nvml", "neuron", "simulated")
#: Largest memory figure a device may report (MiB): 16 TiB.
MAX_MEMORY_MB = 16 * 1024 * 1024
#: The environment variables that hand :class:`IdleSettings` to every process.
ENV = {
    "threshold_pct": "HYBRIDHUB_IDLE_THRESHOLD",
    "warn_minutes": "HYBRIDHUB_IDLE_WARN_MINUTES",
    "stale_seconds": "HYBRIDHUB_UTILISATION_STALE_SECONDS",
    "min_report_seconds": "HYBRIDHUB_UTILISATION_MIN_INTERVAL",
    "keep_hours": "HYBRIDHUB_UTILISATION_KEEP_HOURS",
}


class UtilisationTable(Base):
    """One utilisation report of one server (see the module docstring)."""

    __tablename__ = "utilisation_samples"
    __table_args__ = (
        Index("ix_utilisation_samples_server", "username", "server_name", "at"),
        Index("ix_utilisation_samples_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    username: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime)
    source: Mapped[str] = mapped_column(String(16))
    peak: Mapped[float] = mapped_column(Float)
    limit_minutes: Mapped[float | None] = mapped_column(Float, nullable=True)
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


_UT = UtilisationTable.__table__
_ST = SessionRecord.__table__


class BadReport(ValueError):
    """A report outside its limits; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class TooSoon(Exception):
    """A report sooner than ``min_report_seconds`` after the last; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float):
        super().__init__(f"one report per server every so often; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class IdleSettings:
    """The idle rule's settings, the same in the portal and the culler (``add_hybridhub``)."""

    threshold_pct: float = 5.0
    warn_minutes: float = 5.0
    stale_seconds: float = 300.0
    min_report_seconds: float = 10.0
    keep_hours: float = 24.0

    def __post_init__(self) -> None:
        for name in ENV:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.threshold_pct > 100:
            raise ValueError(f"threshold_pct must be at most 100, got {self.threshold_pct!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IdleSettings:
        """The settings a process was given (missing variables: the defaults)."""
        values = {}
        for name, var in ENV.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ValueError(f"{var} must be a number, got {raw[:40]!r}") from None
        return cls(**values)

    def env(self) -> dict[str, str]:
        """The environment that hands these settings to another process."""
        return {var: repr(getattr(self, name)) for name, var in ENV.items()}


@lru_cache(maxsize=4)
def _settings(values: tuple[tuple[str, str], ...]) -> IdleSettings:
    return IdleSettings.from_env(dict(values))


def settings_from_env(env: Mapping[str, str] | None = None) -> IdleSettings:
    """The settings this process was given (:data:`ENV`; read once per distinct environment)."""
    env = os.environ if env is None else env
    return _settings(tuple((v, env.get(v, "")) for v in ENV.values()))


def check_devices(devices: Any, count: int) -> list[dict[str, Any]]:
    """The report's devices, checked (at most ``count``, 0-100 %, memory used within the total)."""
    if not isinstance(devices, list):
        raise BadReport("devices", "devices must be a list")
    if len(devices) > count:
        raise BadReport("devices", f"devices lists {len(devices)} devices; this server holds {count}")
    out, seen = [], set()
    for i, d in enumerate(devices):
        where = f"devices[{i}]"
        if not isinstance(d, dict):
            raise BadReport(where, f"{where} must be an object")
        index = _number(d, "index", where, 0, max(count - 1, 0), integer=True)
        if index in seen:
            raise BadReport(f"{where}.index", f"{where}.index {index} is listed twice")
        seen.add(index)
        total = _number(d, "memory_total_mb", where, 0, MAX_MEMORY_MB)  # 0: not known (neuron-monitor)
        out.append({"index": index, "utilisation": _number(d, "utilisation", where, 0, 100),
                    "memory_used_mb": _number(d, "memory_used_mb", where, 0, total or MAX_MEMORY_MB),
                    "memory_total_mb": total})
    return out


def _number(d: dict, key: str, where: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = d.get(key)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise BadReport(f"{where}.{key}", f"{where}.{key} must be {kind} from {low:g} to {high:g}, "
                        f"got {str(value)[:40]!r}")
    return value


def record_report(db: Database, *, username: str, server_name: str, source: str, devices: Any,
                  now: datetime, settings: IdleSettings,
                  limit_of: Callable[[str], float | None] = lambda offering: None) -> dict[str, Any]:
    """Check and store one report of ``username``'s server ``server_name`` (see the module doc);
    ``limit_of(offering)`` is the offering's idle minutes (the catalog's; None: never).

    Raises :class:`BadReport` (no open session, bad source or devices) or :class:`TooSoon`.
    """
    if source not in SOURCES:
        raise BadReport("source", f"source must be one of {list(SOURCES)}, got {str(source)[:40]!r}")
    log = SessionLog(db)
    session_id = log.open_session_id(username, server_name)
    record = log.get(session_id) if session_id is not None else None
    if record is None:
        raise BadReport("server", f"{username}'s server {server_name!r} has no running session")
    checked = check_devices(devices, record.count)
    peak = max((d["utilisation"] for d in checked), default=0.0)
    where = (_UT.c.username == username, _UT.c.server_name == server_name)
    with db.session() as s:
        last = s.scalar(select(func.max(_UT.c.at)).where(*where))
        if last is not None and (now - last).total_seconds() < settings.min_report_seconds:
            raise TooSoon(settings.min_report_seconds - (now - last).total_seconds())
        s.execute(insert(_UT).values(session_id=session_id, username=username, server_name=server_name,
                                     at=now, source=source, peak=float(peak), devices=checked,
                                     limit_minutes=limit_of(record.offering)))
    prune(db, now, settings)
    return {"accepted": len(checked), "next_after": settings.min_report_seconds}


def prune(db: Database, now: datetime, settings: IdleSettings) -> int:
    """Delete every report older than ``keep_hours`` (stopped servers' too); returns how many."""
    with db.session() as s:
        return s.execute(delete(_UT).where(_UT.c.at < now - timedelta(hours=settings.keep_hours))).rowcount


@dataclass(frozen=True)
class Utilisation:
    """A server's accelerators now (see :func:`utilisation_of`)."""

    state: str  # busy | idle | unknown
    idle_since: datetime | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    sampled_at: datetime | None = None
    limit_minutes: float | None = None  # the offering's idle minutes (None: never stopped for idling)

    def idle_seconds(self, now: datetime) -> float | None:
        """How long the accelerators have been idle (None unless idle)."""
        return None if self.idle_since is None else max(0.0, (now - self.idle_since).total_seconds())

    def stop_at(self) -> datetime | None:
        """When the idle rule stops the server if nothing runs on its accelerators (None: never)."""
        if self.idle_since is None or self.limit_minutes is None:
            return None
        return self.idle_since + timedelta(minutes=self.limit_minutes)

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """The ``utilisation`` of the Lab's session (state, idle_minutes, devices, sampled_at)."""
        idle = self.idle_seconds(now)
        return {"state": self.state, "idle_minutes": None if idle is None else int(idle // 60),
                "devices": self.devices, "sampled_at": iso_utc(self.sampled_at)}


def utilisation_of(db: Database, session_id: int | None, now: datetime,
                   settings: IdleSettings) -> Utilisation:
    """The state of the accelerators of the open session ``session_id`` at ``now``."""
    if session_id is None:
        return Utilisation("unknown")
    mine = _UT.c.session_id == session_id
    with db.session() as s:
        latest = s.execute(select(_UT.c.at, _UT.c.peak, _UT.c.devices, _UT.c.limit_minutes).where(mine)
                           .order_by(_UT.c.at.desc()).limit(1)).first()
        if latest is None or (now - latest.at).total_seconds() > settings.stale_seconds:
            return Utilisation("unknown", sampled_at=None if latest is None else latest.at)
        if latest.peak >= settings.threshold_pct:
            return Utilisation("busy", devices=list(latest.devices), sampled_at=latest.at,
                               limit_minutes=latest.limit_minutes)
        busy_at = s.scalar(select(func.max(_UT.c.at)).where(mine, _UT.c.peak >= settings.threshold_pct))
        since = s.scalar(select(func.min(_UT.c.at)).where(mine, *([_UT.c.at > busy_at] if busy_at else [])))
    return Utilisation("idle", idle_since=since, devices=list(latest.devices), sampled_at=latest.at,
                       limit_minutes=latest.limit_minutes)


def idle_warning(record: Any, util: Utilisation, now: datetime, settings: IdleSettings) -> dict[str, Any] | None:
    """The Lab's and home page's warning ``warn_minutes`` before an idle stop, once due."""
    stop_at, idle = util.stop_at(), util.idle_seconds(now)
    if stop_at is None or idle is None or record.count < 1:
        return None
    if idle < (util.limit_minutes - settings.warn_minutes) * 60:
        return None
    left = max(0, math.ceil((stop_at - now).total_seconds() / 60))
    return {
        "id": f"idle:{record.id}:{iso_utc(util.idle_since)}", "kind": "idle", "level": "idle",
        "stop_at": iso_utc(stop_at),
        "message": f"Your {record.count} × {record.accelerator} have been idle {int(idle // 60)} min; "
                   f"this server stops in {left} min unless they are used.",
    }


def idle_verdict(db: Database, username: str, server_name: str, now: datetime,
                 settings: IdleSettings) -> dict[str, Any]:
    """The culler's answer for one server: ``cull``, ``keep`` or ``ordinary`` (module doc).

    A ``cull`` records :data:`END_IDLE` on the open record before the culler stops it; any
    other answer clears such a reason left by an earlier ``cull`` whose stop did not happen.
    """
    log = SessionLog(db)
    session_id = log.open_session_id(username, server_name)
    record = log.get(session_id) if session_id is not None else None
    util = utilisation_of(db, session_id, now, settings)
    idle, stop_at = util.idle_seconds(now), util.stop_at()
    if record is None or record.count < 1 or util.state == "unknown" or (util.state == "idle" and stop_at is None):
        verdict = "ordinary"
    elif stop_at is not None and now >= stop_at:
        verdict = "cull"
    else:
        verdict = "keep"
    if verdict == "cull":
        log.request_end(END_IDLE, username=username, server_name=server_name,
                        detail=f"{record.count} × {record.accelerator} idle {idle / 60:.0f} min "
                               f"(below {settings.threshold_pct:g} %)")
    elif session_id is not None:
        with db.session() as s:
            s.execute(update(_ST).where(_ST.c.id == session_id, _ST.c.pending_end_reason == END_IDLE)
                      .values(pending_end_reason=None, pending_end_detail=None))
    return {"verdict": verdict, "utilisation": util.as_dict(now), "limit_minutes": util.limit_minutes,
            "class": record.resource_class if record else None, "group": record.group if record else None}


def add_utilisation(out: dict[str, Any], db: Database, record: Any, now: datetime, stops: list,
                    settings: IdleSettings | None = None) -> None:
    """The Lab session's ``utilisation`` and, once due, its ``idle`` warning and stop time."""
    settings = settings or settings_from_env()
    util = utilisation_of(db, None if record is None else record.id, now, settings)
    out["utilisation"] = util.as_dict(now)
    warning = idle_warning(record, util, now, settings) if record is not None else None
    if warning is not None:
        out["warnings"].append(warning)
        stops.append(util.stop_at())


def idle_notice(db: Database, record: Any, now: datetime, settings: IdleSettings | None = None) -> str | None:
    """The idle warning's text for the hub's home page, once due (None otherwise)."""
    if record is None:
        return None
    settings = settings or settings_from_env()
    warning = idle_warning(record, utilisation_of(db, record.id, now, settings), now, settings)
    return None if warning is None else warning["message"]
