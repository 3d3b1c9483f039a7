"""Exact amounts: every budget, reservation, usage and ledger amount becomes an integer.

Amounts were floats in their unit; they are now integer millionths of it
(:data:`hybridhub.accounting.models.SCALE`), so sums and the admission check are exact.  Existing
values are multiplied by SCALE and rounded to the nearest unit (float noise such as
``-1.8e-15`` left by old releases becomes 0).

Revision ID: 0006_exact_units
Revises: 0005_course_sessions
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_exact_units"
down_revision = "0005_course_sessions"
branch_labels = None
depends_on = None

SCALE = 1_000_000  # hybridhub.accounting.models.SCALE at the time of this migration

#: table -> (column, nullable) of every amount.
COLUMNS = {
    "budgets": (("amount", False), ("used", False), ("reserved", False),
                ("per_user_cap", True)),
    "user_usage": (("used", False), ("reserved", False)),
    "reservations": (("amount_reserved", False), ("amount_charged", False)),
    "usage_entries": (("amount", False), ("accelerator_hours", False)),
    "usage_rollup": (("amount", False), ("accelerator_hours", False)),
}


def _convert(to_units: bool) -> None:
    dialect = op.get_bind().dialect.name
    new, old = (sa.BigInteger(), sa.Float()) if to_units else (sa.Float(), sa.BigInteger())
    for table, columns in COLUMNS.items():
        if dialect == "postgresql":
            for name, _nullable in columns:
                using = (f"round({name} * {SCALE})::bigint" if to_units
                         else f"{name}::double precision / {SCALE}")
                op.alter_column(table, name, type_=new, existing_type=old,
                                postgresql_using=using)
            continue
        # SQLite: convert the values in place, then rebuild the table with the new types
        # (Database.upgrade turns foreign keys off meanwhile, and checks them after)
        sets = ", ".join(
            f"{name} = CAST(ROUND({name} * {SCALE}) AS INTEGER)" if to_units
            else f"{name} = CAST({name} AS REAL) / {SCALE}"
            for name, _ in columns
        )
        op.execute(f"UPDATE {table} SET {sets}")
        with op.batch_alter_table(table) as batch:
            for name, nullable in columns:
                batch.alter_column(name, type_=new, existing_type=old,
                                   existing_nullable=nullable)


def upgrade() -> None:
    _convert(to_units=True)


def downgrade() -> None:
    _convert(to_units=False)
