"""Initial accounting schema: groups, members, budgets, per-user usage, reservations,
the usage ledger and notices.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("frozen", sa.Boolean, nullable=False),
        sa.Column("barred_untrusted", sa.Boolean, nullable=False),
        sa.Column("confidential_dirs", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "group_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("username", sa.String(255), nullable=False),
        sa.UniqueConstraint("group_id", "username", name="uq_group_members"),
    )
    op.create_index("ix_group_members_username", "group_members", ["username"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("starts_at", sa.DateTime, nullable=True),
        sa.Column("ends_at", sa.DateTime, nullable=True),
        sa.Column("period_start", sa.DateTime, nullable=False),
        sa.Column("used", sa.Float, nullable=False),
        sa.Column("reserved", sa.Float, nullable=False),
        sa.Column("per_user_cap", sa.Float, nullable=True),
        sa.Column("frozen", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_budgets_scope", "budgets", ["group_id", "resource_class", "model"])
    op.create_table(
        "user_usage",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "budget_id",
            sa.Integer,
            sa.ForeignKey("budgets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("period_start", sa.DateTime, nullable=False),
        sa.Column("used", sa.Float, nullable=False),
        sa.Column("reserved", sa.Float, nullable=False),
        sa.UniqueConstraint("budget_id", "username", "period_start", name="uq_user_usage"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("budget_id", sa.Integer, sa.ForeignKey("budgets.id"), nullable=False),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("hours", sa.Float, nullable=False),
        sa.Column("billing_weight", sa.Float, nullable=False),
        sa.Column("price_per_hour", sa.Float, nullable=False),
        sa.Column("amount_reserved", sa.Float, nullable=False),
        sa.Column("amount_charged", sa.Float, nullable=False),
        sa.Column("user_period_start", sa.DateTime, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("charged_until", sa.DateTime, nullable=True),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.Column("close_reason", sa.String(255), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_reservations_idempotency_key"),
    )
    op.create_index("ix_reservations_state", "reservations", ["state"])
    op.create_index("ix_reservations_user", "reservations", ["username", "state"])
    op.create_table(
        "usage_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "reservation_id", sa.Integer, sa.ForeignKey("reservations.id"), nullable=False
        ),
        sa.Column("budget_id", sa.Integer, sa.ForeignKey("budgets.id"), nullable=False),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id"), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("accelerator_hours", sa.Float, nullable=False),
        sa.Column("ts_from", sa.DateTime, nullable=False),
        sa.Column("ts_to", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_usage_entries_idempotency_key"),
    )
    op.create_index("ix_usage_entries_group_ts", "usage_entries", ["group_id", "ts_from"])
    op.create_index("ix_usage_entries_budget", "usage_entries", ["budget_id"])
    op.create_index("ix_usage_entries_user", "usage_entries", ["username", "ts_from"])
    op.create_index("ix_usage_entries_reservation", "usage_entries", ["reservation_id"])
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "budget_id",
            sa.Integer,
            sa.ForeignKey("budgets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "reservation_id",
            sa.Integer,
            sa.ForeignKey("reservations.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("period_start", sa.DateTime, nullable=False),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.Column("stop_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.UniqueConstraint("dedup_key", name="uq_notices_dedup_key"),
    )
    op.create_index("ix_notices_group", "notices", ["group_id", "created_at"])


def downgrade() -> None:
    op.drop_table("notices")
    op.drop_table("usage_entries")
    op.drop_table("reservations")
    op.drop_table("user_usage")
    op.drop_table("budgets")
    op.drop_table("group_members")
    op.drop_table("groups")
