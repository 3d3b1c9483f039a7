"""A tick over a large ledger: no per-group, per-user, per-budget or per-reservation index
on the ledger; the budgets' charged hours for forecasts instead.

See :class:`hybridhub.accounting.models.UsageEntry` and ``ChargedHour``.

Revision ID: 0009_ledger_by_id
Revises: 0008_meter_at_scale
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_ledger_by_id"
down_revision = "0008_meter_at_scale"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_usage_entries_group_ts", ["group_id", "ts_from"]),
    ("ix_usage_entries_budget", ["budget_id"]),
    ("ix_usage_entries_user", ["username", "ts_from"]),
    ("ix_usage_entries_reservation", ["reservation_id"]),
)
#: The hour (since the epoch) a line's span starts in, as each dialect computes it.
_HOUR = {
    "postgresql": "CAST(floor(EXTRACT(EPOCH FROM ts_from) / 3600) AS BIGINT)",
    "sqlite": "CAST(strftime('%s', substr(ts_from, 1, 19)) AS INTEGER) / 3600",
}


def upgrade() -> None:
    op.create_table(
        "charged_hours",
        sa.Column("budget_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )
    hour = _HOUR[op.get_bind().dialect.name]
    op.execute(f"INSERT INTO charged_hours (budget_id, hour, amount) SELECT budget_id, {hour},"
               f" SUM(amount) FROM usage_entries GROUP BY budget_id, {hour}")
    for name, _columns in _INDEXES:
        op.drop_index(name, table_name="usage_entries")


def downgrade() -> None:
    for name, columns in _INDEXES:
        op.create_index(name, "usage_entries", columns)
    op.drop_table("charged_hours")
