"""Providers' bills per day and balances (Theta EdgeCloud), beside hybridhub's own charges.

See :mod:`hybridhub.accounting.provider_bills`.

Revision ID: 0010_provider_bills
Revises: 0009_ledger_by_id
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_provider_bills"
down_revision = "0009_ledger_by_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_days",
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("amount_usd", sa.BigInteger, nullable=False),
        sa.Column("fetched_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "provider_balances",
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("balance_usd", sa.BigInteger, nullable=True),
        sa.Column("running_usd_per_hour", sa.BigInteger, nullable=False),
        sa.Column("resource_classes", sa.JSON, nullable=False),
        sa.Column("fetched_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_balances")
    op.drop_table("provider_days")
