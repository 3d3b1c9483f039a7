"""The figures of the portal's overview, for one viewer's scope.

Each figure is read from the accounting tables (usage reports with their rollup, budgets,
open reservations, GPU allocations, refused launches) narrowed to what the viewer may see:
admins everything, leaders their groups, students their own use and their groups' budgets.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, select

from hybridhub.accounting.allocations import GpuAllocation
from hybridhub.accounting.db import Database
from hybridhub.accounting.demand import refusals_by_reason
from hybridhub.accounting.forecast import forecasts
from hybridhub.accounting.models import Budget, Group, Reservation
from hybridhub.accounting.periods import month_start, next_month
from hybridhub.accounting.reports import UsageFilter, UsageRow, usage_report
from hybridhub.accounting.sessions import END_IDLE, SessionRecord

#: Budgets at or above this share used are listed as "near their limit".
NEAR_LIMIT = 0.8


@dataclass(frozen=True)
class Scope:
    """What a viewer may see: ``groups`` (None: all) and whose use (None: everyone's there)."""

    groups: frozenset[str] | None
    username: str | None


@dataclass
class Dashboard:
    """The overview's tiles (see the module docstring)."""

    period_start: datetime
    spend: list[dict[str, Any]] = field(default_factory=list)
    daily: list[UsageRow] = field(default_factory=list)
    near_limit: list[dict[str, Any]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    capacity: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    idle_culled: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The dashboard as the JSON API shows it."""
        return {
            "period_start": self.period_start, "spend": self.spend,
            "near_limit": self.near_limit, "running": self.running,
            "capacity": self.capacity, "refusals_24h": self.refusals,
            "idle_culled": self.idle_culled,
        }


def spend_by_class(rows: Collection[UsageRow]) -> list[dict[str, Any]]:
    """Money, accelerator-hours and budget units per class, largest spend first."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = out.setdefault(r.resource_class, {"resource_class": r.resource_class, "cost": 0.0,
                                               "accelerator_hours": 0.0, "amount": 0.0})
        t["cost"] += r.cost
        t["accelerator_hours"] += r.accelerator_hours
        t["amount"] += r.amount
    return sorted(out.values(), key=lambda t: (-t["cost"], t["resource_class"]))


def budgets_near_limit(db: Database, groups: Collection[str] | None, now: datetime,
                       share: float = NEAR_LIMIT) -> list[dict[str, Any]]:
    """Budgets (of ``groups``; None: all) with at least ``share`` of their amount used or
    reserved, fullest first, each with its forecast.  The filter runs in SQL, so only the
    few budgets near their limit are read and forecast."""
    bt = Budget.__table__
    current = month_start(now)
    used = case((and_(bt.c.period == "monthly", bt.c.period_start < current), 0.0),
                else_=bt.c.used)
    query = (
        select(bt.c.id, Group.name, bt.c.resource_class, bt.c.model, bt.c.unit, bt.c.period,
               bt.c.amount, used.label("used"), bt.c.reserved, bt.c.frozen, bt.c.ends_at)
        .join(Group, Group.id == bt.c.group_id)
        .where(bt.c.amount > 0, used + bt.c.reserved >= share * bt.c.amount)
    )
    if groups is not None:
        query = query.where(Group.name.in_(sorted(groups)))
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        view = {"id": r.id, "group": r.name, "resource_class": r.resource_class,
                "model": r.model, "unit": r.unit, "period": r.period, "amount": r.amount,
                "used": r.used, "reserved": r.reserved, "frozen": r.frozen,
                "remaining": max(0.0, r.amount - r.used - r.reserved),
                "share": (r.used + r.reserved) / r.amount,
                "resets_at": next_month(now) if r.period == "monthly" else r.ends_at}
        out.append(view)
    found = forecasts(db, out, now)
    for view in out:
        view["forecast"] = found[view["id"]].as_dict()
    return sorted(out, key=lambda b: (-b["share"], b["group"], b["resource_class"]))


def _hours_between(db: Database, a: Any, b: Any) -> Any:
    """SQL for the hours from ``a`` to ``b`` (timestamps) on SQLite or PostgreSQL."""
    if db.dialect == "postgresql":
        return func.extract("epoch", b - a) / 3600.0
    return (func.julianday(b) - func.julianday(a)) * 24.0


def running_by_class(db: Database, scope: Scope) -> list[dict[str, Any]]:
    """Open reservations per class: servers, accelerators, cost so far, cost per hour now
    (one aggregate in SQL, however many servers run)."""
    rt = Reservation.__table__
    charged = func.coalesce(_hours_between(db, rt.c.started_at, rt.c.charged_until), 0.0)
    query = (
        select(rt.c.resource_class, func.count(), func.sum(rt.c.count),
               func.sum(rt.c.price_per_hour * rt.c.count * charged),
               func.sum(case((rt.c.state == "running", rt.c.price_per_hour * rt.c.count),
                             else_=0.0)))
        .where(rt.c.state != "closed")
        .group_by(rt.c.resource_class).order_by(rt.c.resource_class)
    )
    if scope.groups is not None:
        ids = select(Group.id).where(Group.name.in_(sorted(scope.groups)))
        query = query.where(rt.c.group_id.in_(ids.scalar_subquery()))
    if scope.username is not None:
        query = query.where(rt.c.username == scope.username)
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"resource_class": rc, "servers": int(n), "accelerators": int(k),
             "cost_so_far": float(cost or 0.0), "cost_per_hour": float(rate or 0.0)}
            for rc, n, k, cost, rate in rows]


def capacity_in_use(db: Database) -> list[dict[str, Any]]:
    """Accelerators held now per class and model (every open reservation: hardware in use
    is not private), with the GPUs the allocation table shows held on tracked hosts
    (``allocated``) and seen there (``known``)."""
    by_model: dict[str, list[int]] = {}
    rt, ga = Reservation.__table__, GpuAllocation.__table__
    with db.engine.connect() as conn:
        held = conn.execute(
            select(ga.c.model, func.count()).where(ga.c.released_at.is_(None))
            .group_by(ga.c.model)
        ).all()
        seen = conn.execute(
            select(ga.c.model, func.count(func.distinct(ga.c.gpu_uuid))).group_by(ga.c.model)
        ).all()
        model = func.coalesce(rt.c.model, literal(""))
        in_use = conn.execute(
            select(rt.c.resource_class, model, func.sum(rt.c.count))
            .where(rt.c.state != "closed").group_by(rt.c.resource_class, model)
            .order_by(rt.c.resource_class, model)
        ).all()
    for name, n in seen:
        by_model[name] = [0, int(n)]
    for name, n in held:
        by_model.setdefault(name, [0, 0])[0] = int(n)
    out = []
    for rc, name, n in in_use:
        allocated, known = by_model.get(name, (None, None))
        out.append({"resource_class": rc, "model": name, "in_use": int(n),
                    "allocated": allocated, "known": known})
    return out


def idle_culled_by_class(db: Database, scope: Scope, since: datetime) -> list[dict[str, Any]]:
    """Servers stopped for idle accelerators since ``since``, per class: the accelerator-hours
    their reservations still held when they were stopped (given back to the group) and those
    hours' money value at the price each launch was admitted at."""
    st, rt = SessionRecord.__table__, Reservation.__table__
    query = (
        select(st.c.resource_class, st.c.started_at, st.c.stopped_at, rt.c.count, rt.c.hours,
               rt.c.price_per_hour)
        .join(rt, rt.c.id == st.c.reservation_id)
        .where(st.c.end_reason == END_IDLE, st.c.stopped_at >= since)
    )
    if scope.groups is not None:
        query = query.where(st.c.group_name.in_(sorted(scope.groups)))
    if scope.username is not None:
        query = query.where(st.c.username == scope.username)
    out: dict[str, dict[str, Any]] = {}
    with db.engine.connect() as conn:
        for r in conn.execute(query):
            ran = (r.stopped_at - r.started_at).total_seconds() / 3600
            hours = max(0.0, float(r.hours) - ran) * r.count
            t = out.setdefault(r.resource_class, {"resource_class": r.resource_class, "servers": 0,
                                                  "accelerator_hours": 0.0, "value": 0.0})
            t["servers"] += 1
            t["accelerator_hours"] += hours
            t["value"] += hours * float(r.price_per_hour or 0.0)
    return sorted(out.values(), key=lambda t: (-t["value"], t["resource_class"]))


def dashboard(db: Database, scope: Scope, now: datetime,
              budget_groups: Collection[str] | None) -> Dashboard:
    """All tiles for ``scope`` at ``now``; ``budget_groups`` are the groups whose budgets
    the viewer may see (None: all)."""
    start = month_start(now)
    rows = usage_report(db, UsageFilter(since=start, groups=scope.groups,
                                        username=scope.username, bucket="day"))
    return Dashboard(
        period_start=start,
        spend=spend_by_class(rows),
        daily=rows,
        near_limit=budgets_near_limit(db, budget_groups, now),
        running=running_by_class(db, scope),
        capacity=capacity_in_use(db),
        refusals=refusals_by_reason(db, now, groups=scope.groups, username=scope.username),
        idle_culled=idle_culled_by_class(db, scope, start),
    )
