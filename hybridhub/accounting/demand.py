"""Unmet demand: every launch the hub refused, and why ("demand we could not serve").

The spawner records a :class:`RefusedLaunch` at each refusal point (no budget or not
enough left, no capacity (429), a group barred from untrusted hardware, a server locked
to a course session).  :func:`demand_report` totals them per day and offering, in
accelerator-hours asked for, which is the figure that justifies buying hardware.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Collection
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Float, Index, Integer, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Base, utcnow

#: Why a launch was refused.
REASONS = ("budget", "no_budget", "capacity", "barred", "course_lock", "other")
#: Upper bounds on what a refusal may record (the asking is untrusted input).
MAX_COUNT, MAX_HOURS = 1024, 24 * 366


class RefusedLaunch(Base):
    """One refused launch: who asked for what, charged to which group, and why not."""

    __tablename__ = "refused_launches"
    __table_args__ = (Index("ix_refused_launches_at", "at"),
                      Index("ix_refused_launches_group", "group_name", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    username: Mapped[str] = mapped_column(String(255))
    group_name: Mapped[str] = mapped_column(String(255))  # "" when none was chosen
    resource_class: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))  # "" for no model
    count: Mapped[int] = mapped_column(Integer)
    hours: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(1000))


def _bounded(value: object, limit: float, default: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    if not math.isfinite(number) or number < 0:
        return default
    return min(number, limit)


def record_refusal(
    db: Database, *, username: str, group: str | None, resource_class: object,
    model: object, count: object, hours: object, reason: str, message: str,
    now: datetime | None = None,
) -> int:
    """Write one refusal; fields that arrived as untrusted input are cut to size."""
    if reason not in REASONS:
        reason = "other"
    row = RefusedLaunch(
        at=now or utcnow(), username=username[:255], group_name=(group or "")[:255],
        resource_class=str(resource_class or "")[:64], model=str(model or "")[:64],
        count=int(_bounded(count, MAX_COUNT, 1)), hours=_bounded(hours, MAX_HOURS, 0.0),
        reason=reason, message=message[:1000],
    )
    with db.session() as s:
        s.add(row)
        s.flush()
        return row.id


@dataclass(frozen=True)
class DemandRow:
    """Refused launches of one day, offering (class and model) and reason."""

    day: str
    resource_class: str
    model: str
    reason: str
    refusals: int
    accelerators: int
    accelerator_hours: float


CSV_COLUMNS = tuple(f.name for f in fields(DemandRow))


def _visible(query, groups: Collection[str] | None, username: str | None):
    if groups is not None and username is not None:
        return query.where((RefusedLaunch.group_name.in_(sorted(groups)))
                           | (RefusedLaunch.username == username))
    if groups is not None:
        return query.where(RefusedLaunch.group_name.in_(sorted(groups)))
    if username is not None:
        return query.where(RefusedLaunch.username == username)
    return query


def demand_report(
    db: Database, *, since: datetime | None = None, until: datetime | None = None,
    groups: Collection[str] | None = None, username: str | None = None,
) -> list[DemandRow]:
    """Refusals per day, class, model and reason, oldest day first.

    ``groups`` and ``username`` narrow it to what a caller may see (both: either).
    """
    rl = RefusedLaunch
    day = func.date(rl.at) if db.dialect == "sqlite" else func.to_char(rl.at, "YYYY-MM-DD")
    query = select(
        day.label("day"), rl.resource_class, rl.model, rl.reason, func.count(),
        func.sum(rl.count), func.sum(rl.count * rl.hours),
    ).group_by(day, rl.resource_class, rl.model, rl.reason).order_by(
        day, rl.resource_class, rl.model, rl.reason)
    if since is not None:
        query = query.where(rl.at >= since)
    if until is not None:
        query = query.where(rl.at < until)
    query = _visible(query, groups, username)
    with db.engine.connect() as conn:
        return [DemandRow(str(d), c, m, r, int(n), int(k or 0), float(h or 0.0))
                for d, c, m, r, n, k, h in conn.execute(query).all()]


def refusals_by_reason(
    db: Database, now: datetime, *, hours: float = 24, groups: Collection[str] | None = None,
    username: str | None = None,
) -> dict[str, int]:
    """How many launches were refused in the last ``hours``, per reason."""
    query = select(RefusedLaunch.reason, func.count()).where(
        RefusedLaunch.at >= now - timedelta(hours=hours), RefusedLaunch.at <= now,
    ).group_by(RefusedLaunch.reason)
    query = _visible(query, groups, username)
    with db.engine.connect() as conn:
        return {r: int(n) for r, n in conn.execute(query).all()}


def demand_csv(rows: list[DemandRow]) -> str:
    """The report as CSV with a header line (``CSV_COLUMNS``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in astuple(row)])
    return out.getvalue()
