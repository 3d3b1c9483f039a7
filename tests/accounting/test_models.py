"""Schema tests: alembic builds the schema from empty, matches the models, refuses newer."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, inspect, select, text, update

from hybridhub.accounting.db import (
    SQLITE_AUTOCHECKPOINT_PAGES,
    Database,
    SchemaTooNew,
    alembic_config,
    head_revision,
)
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Group
from hybridhub.accounting.schema import metadata

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


def _ledger_keys(database: Database) -> list:
    return inspect(database.engine).get_foreign_keys("usage_entries")


def test_meter_migration_keeps_the_ledger_and_drops_its_per_line_key_checks(db_factory):
    """0008: the ledger loses its foreign keys (a tick's cost on PostgreSQL), keeps every
    line, and the tables a tick rewrites leave room on their pages; downgrade restores."""
    database = db_factory()
    database.upgrade("0007_prices_demand")
    now = "2026-11-10 12:00:00"
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO groups (id, name, kind, frozen, barred_untrusted,"
                          " confidential_dirs, created_at) VALUES (1, 'g', 'lab', false,"
                          f" false, '[]', '{now}')"))
        conn.execute(text("INSERT INTO budgets (id, group_id, resource_class, unit, amount,"
                          " period, period_start, used, reserved, frozen, created_at) VALUES"
                          f" (1, 1, 'aws', 'hours', 10000000, 'monthly', '{now}', 5, 0, false,"
                          f" '{now}')"))
        conn.execute(text("INSERT INTO reservations (id, budget_id, group_id, username,"
                          " server_name, resource_class, count, hours, billing_weight,"
                          " price_per_hour, amount_reserved, amount_charged, state, created_at,"
                          " idempotency_key) VALUES (1, 1, 1, 'alice', '', 'aws', 1, 1, 1, 0,"
                          f" 1000000, 5, 'running', '{now}', 'k')"))
        conn.execute(text("INSERT INTO usage_entries (reservation_id, budget_id, group_id,"
                          " username, resource_class, amount, accelerator_hours, ts_from, ts_to,"
                          f" created_at, idempotency_key) VALUES (1, 1, 1, 'alice', 'aws', 5, 1,"
                          f" '{now}', '{now}', '{now}', 'e')"))
    assert len(_ledger_keys(database)) == 3
    database.upgrade()
    assert _ledger_keys(database) == []
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT idempotency_key, amount FROM usage_entries")).all() \
            == [("e", 5)]
        if database.dialect == "postgresql":
            options = dict(conn.execute(text(
                "SELECT relname, reloptions FROM pg_class WHERE oid IN ('budgets'::regclass,"
                " 'user_usage'::regclass, 'reservations'::regclass)")).all())
            assert options == {t: ["fillfactor=50"]
                               for t in ("budgets", "user_usage", "reservations")}
    cfg = alembic_config(database.url)
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007_prices_demand")
    assert sorted(k["referred_table"] for k in _ledger_keys(database)) == [
        "budgets", "groups", "reservations"]


def _ledger_indexes(database: Database) -> list[str]:
    """The ledger's indexes besides its primary and idempotency keys."""
    return sorted(i["name"] for i in inspect(database.engine).get_indexes("usage_entries")
                  if i["name"] != "uq_usage_entries_idempotency_key")


def test_ledger_migration_drops_the_per_line_indexes_and_sums_charged_hours(db_factory):
    """0009: the ledger keeps only its id and idempotency key (each further index cost a
    1,000,000-row tick about 40 ms); the budgets' charged hours start from the old lines,
    summed per budget and hour; downgrade restores the indexes."""
    database = db_factory()
    database.upgrade("0008_meter_at_scale")
    lines = [(1, 5, "2026-11-10 12:00:00"), (1, 7, "2026-11-10 12:59:59.999999"),
             (1, 11, "2026-11-10 13:00:00"), (2, 13, "2026-11-10 12:30:00")]
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO usage_entries (reservation_id, budget_id, group_id,"
                          " username, resource_class, amount, accelerator_hours, ts_from, ts_to,"
                          " created_at, idempotency_key) VALUES (:b, :b, 1, 'a', 'aws', :amount, 1,"
                          " :ts, :ts, :ts, :key)"),
                     [{"b": b, "amount": a, "ts": datetime.fromisoformat(ts), "key": f"e{n}"}
                      for n, (b, a, ts) in enumerate(lines)])
    assert len(_ledger_indexes(database)) == 4
    database.upgrade()
    hour = 1794312000 // 3600  # 2026-11-10 12:00 UTC, in hours since the epoch
    with database.engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT budget_id, hour, amount FROM charged_hours")).all()) \
            == [(1, hour, 12), (1, hour + 1, 11), (2, hour, 13)]
    assert _ledger_indexes(database) == []
    cfg = alembic_config(database.url)
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008_meter_at_scale")
    assert _ledger_indexes(database) == ["ix_usage_entries_budget", "ix_usage_entries_group_ts",
                                         "ix_usage_entries_reservation", "ix_usage_entries_user"]
    assert "charged_hours" not in inspect(database.engine).get_table_names()


def test_a_bulk_commit_on_sqlite_leaves_the_checkpoint_to_a_background_thread(
        tmp_path, monkeypatch):
    """A tick's transaction commits into the WAL only; the checkpoint that copies it into
    the database file follows in its own thread, and the pooled connection gets SQLite's
    usual autocheckpoint back."""
    path = str(tmp_path / "wal.sqlite")  # SQLite's WAL only: PostgreSQL has a checkpointer
    db = Database(f"sqlite:///{path}")
    sizes: list[int] = []
    checkpoint = Database._checkpoint

    def watched(self) -> None:
        sizes.append(os.path.getsize(path))
        checkpoint(self)
        sizes.append(os.path.getsize(path))

    monkeypatch.setattr(Database, "_checkpoint", watched)
    with db.bulk_session() as s:  # 6 MB: 1,500 pages, past the 1,000 that checkpoint a commit
        s.execute(text("CREATE TABLE filler (x TEXT)"))
        s.execute(text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                       " WHERE i < 6000) INSERT INTO filler SELECT printf('%01000d', i) FROM n"))
    db.wait_checkpoint()
    assert len(sizes) == 2 and sizes[0] < 1_000_000 < 6_000_000 < sizes[1]
    raw = db.engine.raw_connection()
    try:
        assert raw.driver_connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (
            SQLITE_AUTOCHECKPOINT_PAGES,)
    finally:
        raw.close()
        db.dispose()


def test_reads_inside_one_reading_share_its_transaction_and_a_write_there_is_refused(db):
    """The picker's reads run in one read transaction; a write slipped into it fails and lands nowhere."""
    acct = Accounting(db)
    acct.ensure_budget("lab-a", "community", 10)
    with db.reading() as shared:
        with db.session() as inner:
            assert inner is shared
        left = acct.remaining_many([("lab-a", "community", None), ("lab-b", "community", None)])
        assert left[("lab-a", "community", None)].amount_left == 10
        assert left[("lab-b", "community", None)] is None
        with pytest.raises(RuntimeError, match="write inside Database.reading"):
            with db.session() as inner:
                inner.execute(update(Group).values(frozen=True))
    with pytest.raises(RuntimeError, match="write inside Database.reading"):
        with db.reading() as s:
            s.add(Group(name="lab-c"))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Group).where(Group.frozen)) == 0
        assert s.scalar(select(Group.id).where(Group.name == "lab-c")) is None



def test_a_reading_does_not_wait_for_a_writer(db, db_factory):
    """A page's reads go on while another process holds a write transaction open (SQLite:
    no BEGIN IMMEDIATE for a reading, so no wait of up to the busy timeout on the writer)."""
    acct = Accounting(db)
    acct.ensure_budget("lab-a", "community", 10)
    writer = db_factory()
    read: list = []

    def page() -> None:
        with acct.db.reading():
            read.append(acct.remaining_many([("lab-a", "community", None)]))

    with writer.session() as w:
        w.execute(update(Group).where(Group.name == "lab-a").values(confidential_dirs=["x"]))
        reader = threading.Thread(target=page, daemon=True)
        reader.start()
        reader.join(timeout=10)  # the busy timeout a write lock would wait for is longer
        assert not reader.is_alive(), "the reading waited for the writer's lock"
    assert read and read[0][("lab-a", "community", None)].amount_left == 10


def test_a_write_shows_to_the_next_reading_whichever_thread_reads(db, db_factory):
    """The hub reads in a pool of worker threads: a reading in another thread than the one that kept an
    answer must see a write made since (SQLite's data_version counts per connection, so the threads must
    ask one connection)."""
    acct = Accounting(db)
    acct.ensure_budget("lab-a", "community", 10)

    def left() -> float:
        with db.reading():
            return acct.remaining_many([("lab-a", "community", None)])[("lab-a", "community", None)].amount_left

    with ThreadPoolExecutor(1) as first:
        assert first.submit(left).result() == 10
    Accounting(db_factory()).ensure_budget("lab-a", "community", 25)  # another process's write
    with ThreadPoolExecutor(1) as second:
        assert second.submit(left).result() == 25


def test_group_reads_are_shared_across_readings_until_any_process_writes(db, db_factory, monkeypatch):
    """A lecture hall's pickers read the same groups' budgets: a reading reuses them while nothing was
    written since, by this process or another (another engine here), and for at most UNCHANGED_SECONDS;
    a write elsewhere shows on the next reading, and outside a reading nothing is reused.  A reading
    that reuses nothing asks no data version on a connection of its own."""
    from hybridhub.accounting import db as dbmod

    acct = Accounting(db)
    acct.ensure_budget("lab-a", "community", 10)
    queries: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: queries.append(a[2]))

    def left() -> float:
        with db.reading():
            return acct.remaining_many([("lab-a", "community", None)])[("lab-a", "community", None)].amount_left

    def budget_reads() -> int:
        return sum("FROM budgets" in q for q in queries)

    def left_again() -> tuple[float, int]:
        """A reading after another, and the budget reads it made (0: it reused the first's answer).  PostgreSQL's
        version is its server's WAL position, which other tests' writes (another worker's) move too: the pair
        is tried again until no write anywhere came between (bounded)."""
        for _ in range(200):
            version = db.data_version()
            left()
            before = budget_reads()
            amount = left()
            if db.data_version() == version:
                return amount, budget_reads() - before
        pytest.fail("the database server was never quiet for two readings")

    assert left() == 10 and budget_reads() == 1
    assert left_again() == (10, 0)  # nothing written since: reused
    other = Accounting(db_factory())  # another process's engine
    other.ensure_budget("lab-a", "community", 25)
    assert left() == 25  # its write shows at once
    assert left_again() == (25, 0)
    monkeypatch.setattr(dbmod, "UNCHANGED_SECONDS", 0.0)
    assert left_again() == (25, 1)  # kept no longer than UNCHANGED_SECONDS
    reads = budget_reads()
    acct.remaining_many([("lab-a", "community", None)])
    acct.remaining_many([("lab-a", "community", None)])
    assert budget_reads() == reads + 2  # outside a reading (admission): always read
    checkouts: list[object] = []
    event.listen(db.engine, "checkout", lambda *a: checkouts.append(a))
    with db.reading() as session:
        session.execute(text("SELECT 1"))
    assert len(checkouts) == 1, checkouts
