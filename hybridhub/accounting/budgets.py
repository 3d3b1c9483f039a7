"""Budget administration: groups and their members, budgets created, set, topped up, frozen.

:class:`BudgetAdmin` is the part of :class:`~hybridhub.accounting.ledger.Accounting` that changes
what a group may spend; every change is one transaction that also calls the audit hook, so
an audit record commits or rolls back with the change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from hybridhub.accounting.models import GROUP_KINDS, PERIODS, UNITS, Budget, Group, GroupMember, from_units, to_units
from hybridhub.accounting.periods import month_start, to_datetime

log = logging.getLogger("hybridhub.accounting")


class _Unset:
    """Marker: a keyword argument that was not given (``None`` is a real value)."""


class BudgetError(ValueError):
    """A budget change was refused because of ``field`` (crossing ``limit``, if any).

    ``index`` is the position of the offending spec in :meth:`Accounting.upsert_budgets`.
    """

    def __init__(self, field: str, message: str, limit: float | None = None,
                 index: int | None = None):
        self.field = field
        self.limit = limit
        self.index = index
        super().__init__(message)


@dataclass(frozen=True)
class BudgetSpec:
    """One budget as configured: what :meth:`Accounting.upsert_budgets` creates or updates."""

    group: str
    resource_class: str
    amount: float
    unit: str = "hours"
    period: str = "monthly"
    model: str | None = None
    per_user_cap: float | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    kind: str | None = None
    frozen: bool = False

    def check(self) -> None:
        """Raise :class:`BudgetError` (a ``ValueError``) naming the bad field."""
        if self.unit not in UNITS:
            raise BudgetError("unit", f"unit {self.unit!r} is not one of {UNITS}")
        if self.period not in PERIODS:
            raise BudgetError("period", f"period {self.period!r} is not one of {PERIODS}")
        if self.kind is not None and self.kind not in GROUP_KINDS:
            raise BudgetError("kind", f"kind {self.kind!r} is not one of {GROUP_KINDS}")
        if self.period != "monthly" and (self.starts_at is None or self.ends_at is None):
            field = "starts_at" if self.starts_at is None else "ends_at"
            raise BudgetError(field, f"a {self.period} budget needs starts_at and ends_at")
        if self.amount < 0 or (self.per_user_cap is not None and self.per_user_cap < 0):
            field = "amount" if self.amount < 0 else "per_user_cap"
            raise BudgetError(field, "amount and per_user_cap must not be negative", 0.0)


def budget_snapshot(budget: Budget) -> dict[str, Any]:
    """The audited fields of a budget, as JSON-ready values."""
    return {
        "resource_class": budget.resource_class,
        "model": budget.model,
        "unit": budget.unit,
        "period": budget.period,
        "amount": budget.amount,
        "per_user_cap": budget.per_user_cap,
        "frozen": budget.frozen,
    }


@dataclass(frozen=True)
class BudgetChange:
    """One audited change: which budget (None for a group-wide change), by whom, before/after."""

    budget_id: int | None
    group: str
    action: str
    actor: str
    before: dict[str, Any] | None
    after: dict[str, Any]


#: Called inside the transaction of a budget change (the session, the change), so an
#: audit record commits or rolls back with the change itself.
AuditHook = Callable[[Session, "BudgetChange"], None]


class BudgetAdmin:
    """Groups and budgets (mixed into :class:`~hybridhub.accounting.ledger.Accounting`, which
    provides ``db``, ``_now``, ``_group``, ``_insert_ignore`` and ``_roll_period``)."""


    def sync_groups(
        self,
        groups: Mapping[str, Iterable[str]],
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        """Create or refresh groups and their members from the hub's groups.

        Groups absent from ``groups`` are left alone (their ledger history stays).
        """
        kinds = dict(kinds or {})
        for name, kind in kinds.items():
            if kind not in GROUP_KINDS:
                raise ValueError(f"group {name!r}: kind {kind!r} is not one of {GROUP_KINDS}")
        with self.db.session() as s:
            for name, members in groups.items():
                self._insert_ignore(
                    s,
                    Group,
                    {
                        "name": name,
                        "kind": kinds.get(name, "project"),
                        "frozen": False,
                        "barred_untrusted": False,
                        "confidential_dirs": [],
                        "created_at": self._now(),
                    },
                )
                group = self._group(s, name)
                assert group is not None
                if name in kinds and group.kind != kinds[name]:
                    group.kind = kinds[name]
                wanted = set(members)
                have = set(
                    s.scalars(
                        select(GroupMember.username).where(GroupMember.group_id == group.id)
                    )
                )
                if have - wanted:
                    s.execute(
                        delete(GroupMember).where(
                            GroupMember.group_id == group.id,
                            GroupMember.username.in_(sorted(have - wanted)),
                        )
                    )
                if wanted - have:
                    self._insert_ignore(
                        s,
                        GroupMember,
                        [{"group_id": group.id, "username": u} for u in sorted(wanted - have)],
                    )

    def set_frozen(self, group: str, frozen: bool = True) -> None:
        """Freeze (or thaw) a group: a frozen group admits nothing and its servers stop."""
        with self.db.session() as s:
            s.execute(update(Group).where(Group.name == group).values(frozen=frozen))

    def ensure_budget(
        self,
        group: str,
        resource_class: str,
        amount: float,
        unit: str = "hours",
        period: str = "monthly",
        model: str | None = None,
        per_user_cap: float | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
        kind: str | None = None,
        frozen: bool = False,
    ) -> int:
        """Create the budget, or update its amount and cap if it exists; return its id.

        A budget is identified by group, class, model, period and start date.  The group
        is created (as ``kind``, default ``project``) if the hub has not synced it yet.
        """
        spec = BudgetSpec(
            group=group, resource_class=resource_class, amount=amount, unit=unit,
            period=period, model=model, per_user_cap=per_user_cap, starts_at=starts_at,
            ends_at=ends_at, kind=kind, frozen=frozen,
        )
        spec.check()
        with self.db.session() as s:
            return self._upsert_budget(s, spec)[0].id

    def upsert_budgets(
        self, specs: Iterable[BudgetSpec], actor: str = "", audit: AuditHook | None = None
    ) -> list[BudgetChange]:
        """Create or update many budgets in ONE transaction: all of them, or none.

        Each spec is checked first (``ValueError`` naming the bad field); ``audit`` is
        called inside the transaction for every change, so the audit log and the
        budgets commit or roll back together.
        """
        specs = list(specs)
        for i, spec in enumerate(specs):
            try:
                spec.check()
            except BudgetError as e:
                e.index = i
                raise
        changes: list[BudgetChange] = []
        with self.db.session() as s:
            for i, spec in enumerate(specs):
                budget, before = self._upsert_budget(s, spec)
                floor = from_units(to_units(budget.used) + to_units(budget.reserved))
                if before is not None and to_units(budget.amount) < to_units(floor):
                    raise BudgetError(
                        "amount", f"amount must be at least {floor:g} (already used and "
                        f"reserved this period), got {budget.amount:g}", floor, index=i,
                    )
                change = BudgetChange(
                    budget.id, spec.group, "create" if before is None else "set", actor,
                    before, budget_snapshot(budget),
                )
                changes.append(change)
                if audit is not None:
                    audit(s, change)
        return changes

    def _upsert_budget(self, s: Session, spec: BudgetSpec) -> tuple[Budget, dict | None]:
        """Create or update one budget (and its group) in ``s``; return it and its old state."""
        starts_at = to_datetime(spec.starts_at) if spec.starts_at is not None else None
        ends_at = to_datetime(spec.ends_at) if spec.ends_at is not None else None
        now = self._now()
        g = self._group(s, spec.group)
        if g is None:
            self._insert_ignore(s, Group, {
                "name": spec.group, "kind": spec.kind or "project", "frozen": False,
                "barred_untrusted": False, "confidential_dirs": [], "created_at": now,
            })
            g = self._group(s, spec.group)
            assert g is not None
        if spec.kind and g.kind != spec.kind:
            g.kind = spec.kind
        model = spec.model
        query = select(Budget).where(
            Budget.group_id == g.id,
            Budget.resource_class == spec.resource_class,
            Budget.period == spec.period,
            Budget.model.is_(None) if model is None else Budget.model == model,
            Budget.starts_at.is_(None) if starts_at is None else Budget.starts_at == starts_at,
        )
        budget = s.scalars(query.order_by(Budget.id).with_for_update()).first()
        before = None
        if budget is None:
            budget = Budget(
                group_id=g.id,
                resource_class=spec.resource_class,
                model=model,
                unit=spec.unit,
                amount=spec.amount,
                period=spec.period,
                starts_at=starts_at,
                ends_at=ends_at,
                period_start=month_start(now) if spec.period == "monthly" else starts_at,
                used=0.0,
                reserved=0.0,
                per_user_cap=spec.per_user_cap,
                frozen=spec.frozen,
                created_at=now,
            )
            s.add(budget)
        else:
            before = budget_snapshot(budget)
            budget.amount = spec.amount
            budget.unit = spec.unit
            budget.ends_at = ends_at
            budget.per_user_cap = spec.per_user_cap
            budget.frozen = spec.frozen
        s.flush()
        return budget, before

    def set_budget(
        self,
        budget_id: int,
        *,
        amount: float | None = None,
        per_user_cap: float | None | type[_Unset] = _Unset,
        frozen: bool | None = None,
        actor: str = "",
        audit: AuditHook | None = None,
    ) -> BudgetChange:
        """Change a budget's amount, per-user cap or frozen flag, under a row lock.

        The amount may not drop below what is already used and reserved this period
        (:class:`BudgetError` naming ``amount`` and that limit), so a budget never
        goes negative by accident.
        """
        if amount is not None and amount < 0:
            raise BudgetError("amount", f"amount must be at least 0, got {amount:g}", 0.0)
        if per_user_cap not in (None, _Unset) and per_user_cap < 0:  # type: ignore[operator]
            raise BudgetError(
                "per_user_cap", f"per_user_cap must be at least 0, got {per_user_cap:g}", 0.0
            )
        with self.db.session() as s:
            budget, gname = self._locked_budget(s, budget_id)
            before = budget_snapshot(budget)
            if amount is not None:
                floor = from_units(to_units(budget.used) + to_units(budget.reserved))
                if to_units(amount) < to_units(floor):
                    raise BudgetError(
                        "amount",
                        f"amount must be at least {floor:g} (already used and reserved this "
                        f"period), got {amount:g}",
                        floor,
                    )
                budget.amount = amount
            if per_user_cap is not _Unset:
                budget.per_user_cap = per_user_cap  # type: ignore[assignment]
            if frozen is not None:
                budget.frozen = frozen
            s.flush()
            change = BudgetChange(budget.id, gname, "set", actor, before, budget_snapshot(budget))
            if audit is not None:
                audit(s, change)
            return change

    def top_up(
        self, budget_id: int, delta: float, *, actor: str = "", audit: AuditHook | None = None,
        max_delta: float = 1e6,
    ) -> BudgetChange:
        """Add ``delta`` (> 0, at most ``max_delta``) to a budget's amount, atomically."""
        if not (0 < delta <= max_delta) or math.isnan(delta):
            limit = 0.0 if not delta > 0 else max_delta
            raise BudgetError(
                "amount",
                f"amount must be more than 0 and at most {max_delta:g}, got {delta:g}",
                limit,
            )
        with self.db.session() as s:
            budget, gname = self._locked_budget(s, budget_id)
            before = budget_snapshot(budget)
            s.execute(
                update(Budget)
                .where(Budget.id == budget_id)
                .values(amount=Budget.amount + delta)
                .execution_options(synchronize_session=False)
            )
            s.refresh(budget)
            change = BudgetChange(
                budget.id, gname, "top_up", actor, before, budget_snapshot(budget)
            )
            if audit is not None:
                audit(s, change)
            return change

    def freeze_group(
        self, group: str, frozen: bool = True, *, actor: str = "",
        audit: AuditHook | None = None,
    ) -> BudgetChange:
        """Freeze (or thaw) a group, audited; ``KeyError`` if there is no such group."""
        with self.db.session() as s:
            g = s.scalar(select(Group).where(Group.name == group).with_for_update())
            if g is None:
                raise KeyError(f"no group {group!r}")
            before = {"frozen": g.frozen}
            g.frozen = frozen
            s.flush()
            change = BudgetChange(
                None, group, "freeze" if frozen else "thaw", actor, before, {"frozen": frozen}
            )
            if audit is not None:
                audit(s, change)
            return change

    def _locked_budget(self, s: Session, budget_id: int) -> tuple[Budget, str]:
        """The budget (row-locked, current period rolled) and its group's name."""
        row = s.execute(
            select(Budget, Group.name)
            .join(Group, Group.id == Budget.group_id)
            .where(Budget.id == budget_id)
            .with_for_update(of=Budget)
        ).first()
        if row is None:
            raise KeyError(f"no budget {budget_id}")
        budget, gname = row
        if self._roll_period(s, budget, self._now()) != budget.period_start:
            s.refresh(budget)
        return budget, gname

    def _group_id(self, name: str) -> int | None:
        with self.db.session() as s:
            return s.scalar(select(Group.id).where(Group.name == name))
