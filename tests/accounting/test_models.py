"""Schema tests: alembic builds the schema from empty, matches the models, refuses newer."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from portal.accounting.db import Database, SchemaTooNew, head_revision
from portal.accounting.schema import metadata

TABLES = {
    "groups", "group_members", "budgets", "user_usage", "reservations", "usage_entries",
    "notices",
}


def test_upgrade_from_empty_creates_every_table(db_factory):
    database = db_factory()
    assert database.current_revision() is None
    database.upgrade()
    assert database.current_revision() == head_revision()
    assert TABLES <= set(inspect(database.engine).get_table_names())


def test_upgrade_twice_is_a_no_op(db):
    db.upgrade()
    assert db.current_revision() == head_revision()


def test_migrations_match_the_models(db):
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_newer_schema_is_refused_with_a_clear_message(db):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaTooNew) as info:
        db.upgrade()
    message = str(info.value)
    assert "9999_from_the_future" in message and head_revision() in message
    assert "newer hybridhub" in message


def test_password_is_not_shown_in_messages():
    database = Database("postgresql+psycopg://hub:s3cret@db.example/hub")
    assert "s3cret" not in repr(database) and "s3cret" not in database.safe_url
    database.dispose()
