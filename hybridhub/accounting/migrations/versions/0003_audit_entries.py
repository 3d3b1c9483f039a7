"""Audit log of budget changes (hybridhub.accounting.audit.AuditEntry) and the daily usage rollup the
portal's reports read (hybridhub.accounting.reports.UsageRollup, UsageRollupMark).

Revision ID: 0003_audit_entries
Revises: 0002_gpu_allocations
Create Date: 2026-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_audit_entries"
down_revision = "0002_gpu_allocations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("budget_id", sa.Integer, nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=False),
        sa.Column("note", sa.String(1000), nullable=False),
    )
    op.create_index("ix_audit_entries_group_ts", "audit_entries", ["group_name", "ts"])
    op.create_table(
        "usage_rollup",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("group_id", sa.Integer, nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("accelerator_hours", sa.Float, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.UniqueConstraint("day", "group_id", "resource_class", "model", "username",
                            name="uq_usage_rollup"),
    )
    op.create_table(
        "usage_rollup_mark",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_entry_id", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_rollup_mark")
    op.drop_table("usage_rollup")
    op.drop_index("ix_audit_entries_group_ts", table_name="audit_entries")
    op.drop_table("audit_entries")
