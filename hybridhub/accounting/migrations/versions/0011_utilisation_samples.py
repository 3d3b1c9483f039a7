"""Accelerator utilisation reported by single-user servers (hybridhub.accounting.utilisation).

One row per report: the peak utilisation over the server's devices (what the idle rule
reads), the offering's idle minutes when it came (from the catalog) and the devices
themselves; old rows are pruned by the portal.

Revision ID: 0011_utilisation_samples
Revises: 0010_provider_bills
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_utilisation_samples"
down_revision = "0010_provider_bills"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "utilisation_samples",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, nullable=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("peak", sa.Float, nullable=False),
        sa.Column("limit_minutes", sa.Float, nullable=True),
        sa.Column("devices", sa.JSON, nullable=False),
    )
    op.create_index("ix_utilisation_samples_server", "utilisation_samples",
                    ["username", "server_name", "at"])
    op.create_index("ix_utilisation_samples_at", "utilisation_samples", ["at"])


def downgrade() -> None:
    op.drop_index("ix_utilisation_samples_at", table_name="utilisation_samples")
    op.drop_index("ix_utilisation_samples_server", table_name="utilisation_samples")
    op.drop_table("utilisation_samples")
