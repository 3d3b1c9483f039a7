"""The audit log of budget changes: who changed what, when, and the values before and after.

:class:`AuditEntry` is written by :func:`record` from inside the transaction of the change
itself (it is the :data:`hybridhub.accounting.ledger.AuditHook` the portal passes to accounting),
so a change and its audit line commit or roll back together.  The table is created by
the alembic revision ``0003_audit_entries``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hybridhub.accounting.budgets import BudgetChange
from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Base, iso_utc, utcnow


class AuditEntry(Base):
    """One budget or group change, never updated or deleted."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_group_ts", "group_name", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    group_name: Mapped[str] = mapped_column(String(255))
    budget_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(String(1000), default="")


def record(session: Session, change: BudgetChange, note: str = "") -> None:
    """Append ``change`` to the audit log in ``session`` (the change's own transaction)."""
    session.add(
        AuditEntry(
            ts=utcnow(),
            actor=change.actor or "?",
            action=change.action,
            group_name=change.group,
            budget_id=change.budget_id,
            before=change.before,
            after=change.after,
            note=note[:1000],
        )
    )


def entries(
    db: Database, *, groups: set[str] | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest audit lines first, optionally only for ``groups``, as JSON-ready dicts."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if groups is not None:
        query = query.where(AuditEntry.group_name.in_(sorted(groups)))
    with db.session() as s:
        return [
            {
                "id": e.id,
                "ts": iso_utc(e.ts),
                "actor": e.actor,
                "action": e.action,
                "group": e.group_name,
                "budget_id": e.budget_id,
                "before": e.before,
                "after": e.after,
                "note": e.note,
            }
            for e in s.scalars(query)
        ]
