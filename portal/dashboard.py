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

from sqlalchemy import func, select

from portal.accounting import month_start
from portal.allocations import GpuAllocation
from portal.db import Database
from portal.demand import refusals_by_reason
from portal.reports import UsageFilter, UsageRow, running_servers, usage_report

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

    def as_dict(self) -> dict[str, Any]:
        """The dashboard as the JSON API shows it."""
        return {
            "period_start": self.period_start, "spend": self.spend,
            "near_limit": self.near_limit, "running": self.running,
            "capacity": self.capacity, "refusals_24h": self.refusals,
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


def budgets_near_limit(groups: list[dict[str, Any]],
                       share: float = NEAR_LIMIT) -> list[dict[str, Any]]:
    """Budgets with at least ``share`` of their amount used or reserved, fullest first
    (budget views with their ``forecast``, as :func:`portal.web.budgets.groups_view` lists)."""
    out = []
    for g in groups:
        for b in g["budgets"]:
            if b["amount"] <= 0:
                continue
            used = (b["used"] + b["reserved"]) / b["amount"]
            if used >= share:
                out.append({**b, "share": used})
    return sorted(out, key=lambda b: (-b["share"], b["group"], b["resource_class"]))


def running_by_class(db: Database, scope: Scope, now: datetime) -> list[dict[str, Any]]:
    """Open reservations per class: servers, accelerators, cost so far, cost per hour now."""
    servers = running_servers(db, groups=scope.groups, username=scope.username)
    out: dict[str, dict[str, Any]] = {}
    for s in servers:
        t = out.setdefault(s.resource_class, {"resource_class": s.resource_class, "servers": 0,
                                              "accelerators": 0, "cost_so_far": 0.0,
                                              "cost_per_hour": 0.0})
        t["servers"] += 1
        t["accelerators"] += s.count
        t["cost_so_far"] += s.cost_so_far
        if s.state == "running":
            t["cost_per_hour"] += s.price_per_hour * s.count
    return sorted(out.values(), key=lambda t: t["resource_class"])


def capacity_in_use(db: Database, scope: Scope) -> list[dict[str, Any]]:
    """Accelerators held now per class and model (open reservations), with the GPUs the
    allocation table shows held on tracked hosts (``allocated``) and seen there (``known``)."""
    by_model: dict[str, list[int]] = {}
    with db.engine.connect() as conn:
        ga = GpuAllocation.__table__
        held = conn.execute(
            select(ga.c.model, func.count()).where(ga.c.released_at.is_(None))
            .group_by(ga.c.model)
        ).all()
        seen = conn.execute(
            select(ga.c.model, func.count(func.distinct(ga.c.gpu_uuid))).group_by(ga.c.model)
        ).all()
    for model, n in seen:
        by_model[model] = [0, int(n)]
    for model, n in held:
        by_model.setdefault(model, [0, 0])[0] = int(n)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for s in running_servers(db):  # hardware in use is not private: every open reservation
        key = (s.resource_class, s.model)
        t = rows.setdefault(key, {"resource_class": s.resource_class, "model": s.model,
                                  "in_use": 0, "allocated": None, "known": None})
        t["in_use"] += s.count
    for t in rows.values():
        if t["model"] in by_model:
            t["allocated"], t["known"] = by_model[t["model"]]
    return [rows[k] for k in sorted(rows)]


def dashboard(db: Database, scope: Scope, now: datetime,
              groups_view: list[dict[str, Any]]) -> Dashboard:
    """All tiles for ``scope`` at ``now``; ``groups_view`` lists the budgets it may see."""
    start = month_start(now)
    rows = usage_report(db, UsageFilter(since=start, groups=scope.groups,
                                        username=scope.username, bucket="day"))
    return Dashboard(
        period_start=start,
        spend=spend_by_class(rows),
        daily=rows,
        near_limit=budgets_near_limit(groups_view),
        running=running_by_class(db, scope, now),
        capacity=capacity_in_use(db, scope),
        refusals=refusals_by_reason(db, now, groups=scope.groups, username=scope.username),
    )
