"""Audit log of budget changes (portal.audit.AuditEntry).

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


def downgrade() -> None:
    op.drop_index("ix_audit_entries_group_ts", table_name="audit_entries")
    op.drop_table("audit_entries")
