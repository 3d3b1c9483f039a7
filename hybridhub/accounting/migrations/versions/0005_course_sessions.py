"""Course sessions (hybridhub.accounting.courses.CourseSession) and one seat per student (CourseSeat).

Revision ID: 0005_course_sessions
Revises: 0004_session_provenance
Create Date: 2026-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_course_sessions"
down_revision = "0004_session_provenance"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "course_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("offering", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        sa.Column("starts_at", sa.DateTime, nullable=False),
        sa.Column("ends_at", sa.DateTime, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("start_requested_at", sa.DateTime, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("warned_minutes", sa.Integer, nullable=True),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.Column("refusal", sa.JSON, nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_course_sessions_state", "course_sessions", ["state", "starts_at"])
    op.create_index("ix_course_sessions_group", "course_sessions", ["group_id", "starts_at"])
    op.create_table(
        "course_seats",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer,
                  sa.ForeignKey("course_sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("reservation_id", sa.Integer, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.String(1000), nullable=False),
        sa.Column("requested_at", sa.DateTime, nullable=True),
        sa.Column("ready_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("session_id", "username", name="uq_course_seats"),
    )
    op.create_index("ix_course_seats_user", "course_seats", ["username", "state"])


def downgrade() -> None:
    op.drop_index("ix_course_seats_user", table_name="course_seats")
    op.drop_table("course_seats")
    op.drop_index("ix_course_sessions_group", table_name="course_sessions")
    op.drop_index("ix_course_sessions_state", table_name="course_sessions")
    op.drop_table("course_sessions")
