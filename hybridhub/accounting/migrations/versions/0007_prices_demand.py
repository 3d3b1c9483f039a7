"""Money in the usage rollup, refused launches (hybridhub.accounting.demand), threshold mail
(hybridhub.accounting.mail).

The rollup is a cache of the ledger: it is emptied here and refilled with the new ``cost``
column on the portal's next refresh (``hybridhub.accounting.reports.refresh_rollup``).

Revision ID: 0007_prices_demand
Revises: 0005_course_sessions
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_prices_demand"
down_revision = "0006_exact_units"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM usage_rollup")
    op.execute("DELETE FROM usage_rollup_mark")
    # cost: money in integer millionths, like every amount (hybridhub.accounting.models.Amount)
    with op.batch_alter_table("usage_rollup") as batch:
        batch.add_column(sa.Column("cost", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "refused_launches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("hours", sa.Float, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("message", sa.String(1000), nullable=False),
    )
    op.create_index("ix_refused_launches_at", "refused_launches", ["at"])
    op.create_index("ix_refused_launches_group", "refused_launches", ["group_name", "at"])
    op.create_table(
        "notice_mails",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("notice_id", sa.Integer, sa.ForeignKey("notices.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("sent_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("notice_id", "address", name="uq_notice_mails"),
    )


def downgrade() -> None:
    op.drop_table("notice_mails")
    op.drop_index("ix_refused_launches_group", table_name="refused_launches")
    op.drop_index("ix_refused_launches_at", table_name="refused_launches")
    op.drop_table("refused_launches")
    op.execute("DELETE FROM usage_rollup")
    op.execute("DELETE FROM usage_rollup_mark")
    # cost: money in integer millionths, like every amount (hybridhub.accounting.models.Amount)
    with op.batch_alter_table("usage_rollup") as batch:
        batch.drop_column("cost")
