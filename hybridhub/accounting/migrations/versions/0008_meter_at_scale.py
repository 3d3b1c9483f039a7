"""A metering tick over 10,000 servers: ledger lines without foreign keys, room on the
pages of the rows every tick rewrites (PostgreSQL fillfactor).

See :class:`hybridhub.accounting.models.UsageEntry` and ``TICKED``.

Revision ID: 0008_meter_at_scale
Revises: 0007_prices_demand
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_meter_at_scale"
down_revision = "0007_prices_demand"
branch_labels = None
depends_on = None

_REFS = (("reservation_id", "reservations"), ("budget_id", "budgets"), ("group_id", "groups"))
_TICKED = ("budgets", "user_usage", "reservations")


def _ledger(metadata: sa.MetaData, with_keys: bool) -> sa.Table:
    """``usage_entries`` as revision 0007 left it, with or without its foreign keys."""
    def ref(column: str, table: str) -> sa.Column:
        keys = [sa.ForeignKey(f"{table}.id")] if with_keys else []
        return sa.Column(column, sa.Integer, *keys, nullable=False)

    return sa.Table(
        "usage_entries", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        *(ref(column, table) for column, table in _REFS),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("resource_class", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("accelerator_hours", sa.BigInteger, nullable=False),
        sa.Column("ts_from", sa.DateTime, nullable=False),
        sa.Column("ts_to", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_usage_entries_idempotency_key"),
        sa.Index("ix_usage_entries_group_ts", "group_id", "ts_from"),
        sa.Index("ix_usage_entries_budget", "budget_id"),
        sa.Index("ix_usage_entries_user", "username", "ts_from"),
        sa.Index("ix_usage_entries_reservation", "reservation_id"),
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # unnamed keys: rebuild the table without them
        with op.batch_alter_table("usage_entries", recreate="always",
                                  copy_from=_ledger(sa.MetaData(), with_keys=False)):
            pass
        return
    for fk in sa.inspect(bind).get_foreign_keys("usage_entries"):
        op.drop_constraint(fk["name"], "usage_entries", type_="foreignkey")
    for table in _TICKED:  # new and rewritten rows get the room; old pages as they turn over
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("usage_entries", recreate="always",
                                  copy_from=_ledger(sa.MetaData(), with_keys=True)):
            pass
        return
    for table in _TICKED:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    for column, table in _REFS:
        op.create_foreign_key(f"usage_entries_{column}_fkey", "usage_entries", table,
                              [column], ["id"])
