"""Session provenance records and verification reports (hybridhub.accounting.sessions).

Revision ID: 0004_session_provenance
Revises: 0003_audit_entries
Create Date: 2026-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_session_provenance"
down_revision = "0003_audit_entries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("offering", sa.String(128), nullable=False),
        sa.Column("accelerator", sa.String(128), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("trust", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("instance_type", sa.String(64), nullable=True),
        sa.Column("gpu_uuids", sa.JSON, nullable=False),
        sa.Column("image", sa.String(512), nullable=True),
        sa.Column("image_id", sa.String(512), nullable=True),
        sa.Column("hidden_dirs", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("reservation_id", sa.Integer, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("stopped_at", sa.DateTime, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("end_detail", sa.String(255), nullable=True),
        sa.Column("pending_end_reason", sa.String(64), nullable=True),
        sa.Column("pending_end_detail", sa.String(255), nullable=True),
        sa.UniqueConstraint("reservation_id", name="uq_session_records_reservation"),
    )
    op.create_index("ix_session_records_user", "session_records", ["username", "started_at"])
    op.create_index(
        "ix_session_records_open", "session_records", ["username", "server_name", "stopped_at"]
    )
    op.create_table(
        "verifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "session_id",
            sa.Integer,
            sa.ForeignKey("session_records.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "run_session_id",
            sa.Integer,
            sa.ForeignKey("session_records.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("notebook", sa.String(1024), nullable=False),
        sa.Column("offering", sa.String(128), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.String(2000), nullable=True),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_verifications_session", "verifications", ["session_id"])
    op.create_index("ix_verifications_user", "verifications", ["username", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_verifications_user", table_name="verifications")
    op.drop_index("ix_verifications_session", table_name="verifications")
    op.drop_table("verifications")
    op.drop_index("ix_session_records_open", table_name="session_records")
    op.drop_index("ix_session_records_user", table_name="session_records")
    op.drop_table("session_records")
