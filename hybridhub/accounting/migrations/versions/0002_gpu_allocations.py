"""GPU allocations: one row per GPU held by a server; a partial unique index on the
GPU UUID over active rows (released_at IS NULL) forbids double booking.

Revision ID: 0002_gpu_allocations
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_gpu_allocations"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = sa.text("released_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "gpu_allocations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("gpu_uuid", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("offering", sa.String(255), nullable=False),
        sa.Column("reservation_id", sa.Integer, nullable=True),
        sa.Column("allocated_at", sa.DateTime, nullable=False),
        sa.Column("released_at", sa.DateTime, nullable=True),
        sa.Column("release_reason", sa.String(255), nullable=True),
    )
    op.create_index(
        "uq_gpu_allocations_active_gpu",
        "gpu_allocations",
        ["gpu_uuid"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index("ix_gpu_allocations_owner", "gpu_allocations", ["owner", "released_at"])
    op.create_index("ix_gpu_allocations_host", "gpu_allocations", ["host", "released_at"])


def downgrade() -> None:
    op.drop_index("ix_gpu_allocations_host", table_name="gpu_allocations")
    op.drop_index("ix_gpu_allocations_owner", table_name="gpu_allocations")
    op.drop_index("uq_gpu_allocations_active_gpu", table_name="gpu_allocations")
    op.drop_table("gpu_allocations")
