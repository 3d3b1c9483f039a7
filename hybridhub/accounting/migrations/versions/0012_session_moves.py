"""A session record names the record it replaced when its user moved the server to other hardware.

See :mod:`hybridhub.spawner.move`: the old record ends ``moved to other hardware``, the new
one's ``moved_from_id`` is the old record's id.

Revision ID: 0012_session_moves
Revises: 0011_utilisation_samples
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_session_moves"
down_revision = "0011_utilisation_samples"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_records") as batch:
        batch.add_column(sa.Column("moved_from_id", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_records") as batch:
        batch.drop_column("moved_from_id")
