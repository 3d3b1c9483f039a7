"""Benchmark accounting on SQLite and PostgreSQL.

Fills a fresh database with 1,000 groups (a budget each), 10,000 running servers and
``--rows`` ledger rows (default 1,000,000; ``--quick`` uses 100,000), then measures:

- an admission check (``Accounting.admit``: one conditional-update transaction) and
  ``Accounting.remaining``, p50/p99 over ``--samples`` calls;
- one metering tick over the 10,000 running servers;
- a ``Database.reading()`` that reuses nothing (a portal page's), against a plain session; on PostgreSQL also
  with its data version asked eagerly on a connection of its own (how readings asked it before);

each printed beside a bare ``SELECT 1`` round trip measured in the same run, with ratios.
Targets: admission p99 < 5 ms on PostgreSQL; a metering tick <= 0.2 s (``bench/meter.py``
measures it at scale beside a hand-written ``INSERT ... SELECT``).

    python bench/accounting.py [--rows N] [--quick] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from hybridhub.accounting import meter_sql  # noqa: E402
from hybridhub.accounting.db import Database  # noqa: E402
from hybridhub.accounting.ledger import Accounting  # noqa: E402
from hybridhub.accounting.models import to_units  # noqa: E402
from hybridhub.accounting.periods import month_start  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "HYBRIDHUB_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
GROUPS = 1000
RUNNING = 10_000

ENTRY_COLS = (
    "reservation_id", "budget_id", "group_id", "username", "resource_class", "model",
    "amount", "accelerator_hours", "ts_from", "ts_to", "created_at", "idempotency_key",
)
RES_COLS = (
    "budget_id", "group_id", "username", "server_name", "resource_class", "model", "count",
    "hours", "billing_weight", "price_per_hour", "amount_reserved", "amount_charged",
    "state", "created_at", "started_at", "charged_until", "idempotency_key",
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def fill(db: Database, rows: int, now: datetime, groups: int = GROUPS,
         running: int = RUNNING) -> None:
    """Groups, budgets, members, running reservations and ledger rows, in bulk."""
    _bulk(db, "groups", ("name", "kind", "frozen", "barred_untrusted", "confidential_dirs",
                         "created_at"),
          [(f"g{i:04d}", "project", False, False, "[]", now) for i in range(groups)])
    with db.engine.connect() as conn:
        gids = conn.execute(text("SELECT id, name FROM groups ORDER BY id")).all()
    _bulk(db, "group_members", ("group_id", "username"),
          [(gid, "user" + name[1:]) for gid, name in gids])
    period = month_start(now)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO budgets (group_id, resource_class, model, unit, amount, period,"
                " period_start, used, reserved, frozen, created_at)"
                " SELECT id, 'aws', NULL, 'hours', :amount, 'monthly', :period, 0, :reserved,"
                " :false, :now FROM groups"
            ),
            {"amount": to_units(1e9), "period": period, "reserved": to_units(10 * 10.0),
             "false": False, "now": now},  # raw SQL: amounts as the stored integer units
        )
        ids = conn.execute(text("SELECT b.id, b.group_id, g.name FROM budgets b "
                                "JOIN groups g ON g.id = b.group_id ORDER BY b.id")).all()
    started = now - timedelta(minutes=30)
    until = now - timedelta(seconds=60)
    reservations = []
    for n in range(running):
        bid, gid, gname = ids[n % len(ids)]
        user = "user" + gname[1:]
        reservations.append((bid, gid, user, f"s{n}", "aws", "rtx4090", 1, 10.0, 1.0, 0.0,
                             to_units(10.0), to_units(29 / 60), "running", started, started,
                             until, f"bench:res:{n}"))
    _bulk(db, "reservations", RES_COLS, reservations)
    with db.engine.connect() as conn:
        res = conn.execute(text("SELECT id, budget_id, group_id, username FROM reservations "
                                "ORDER BY id")).all()
    batch: list[tuple] = []
    t0 = time.perf_counter()
    for i in range(rows):
        rid, bid, gid, user = res[i % len(res)]
        ts = started - timedelta(minutes=i // len(res))
        batch.append((rid, bid, gid, user, "aws", "rtx4090", to_units(1 / 60), to_units(1 / 60), ts,
                      ts + timedelta(minutes=1), ts, f"bench:{i}"))
        if len(batch) >= 100_000:
            _bulk(db, "usage_entries", ENTRY_COLS, batch)
            batch = []
    if batch:
        _bulk(db, "usage_entries", ENTRY_COLS, batch)
    with db.engine.begin() as conn:  # as the tick and release keep them
        meter_sql.fold_hours(conn, meter_sql.ledger_lines())
    # Settle after the bulk load (statistics, and no autovacuum or checkpoint mid-measurement).
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE)"))
            conn.execute(text("CHECKPOINT"))
    else:
        raw = db.engine.raw_connection()  # autocommit: a checkpoint cannot run in a transaction
        try:
            raw.cursor().execute("ANALYZE")
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    print(f"  filled {rows:,} ledger rows in {time.perf_counter() - t0:.1f} s")


def _bulk(db: Database, table: str, cols: tuple[str, ...], rows: list[tuple]) -> None:
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if db.dialect == "postgresql":
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cur.execute("BEGIN")
            marks = ", ".join("?" for _ in cols)
            cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                            [tuple(_sqlite_value(v) for v in row) for row in rows])
        raw.commit()
    finally:
        raw.close()


def _sqlite_value(value):
    """Datetimes in the text form SQLAlchemy's SQLite DateTime type stores and compares."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def timed(fn, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def reading_costs(db: Database, samples: int, rounds: int = 5) -> dict[str, list[float]]:
    """A ``Database.reading()`` that reuses nothing (one ``SELECT 1``); on PostgreSQL also with its data version
    asked on a connection of its own before it begins, as before readings asked it lazily (rounds alternate)."""

    def one_reading() -> None:
        with db.reading() as s:
            s.execute(text("SELECT 1")).scalar()

    one_reading()  # the first reading asks the server how its readings may learn the data version
    modes = {"reading (SELECT 1)": db._pg_version}
    if db._pg_version == "lazy":
        modes["reading, version eager"] = "eager"
    out: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(rounds):
        for label, mode in modes.items():
            db._pg_version = mode  # a private switch, for this comparison only
            out[label] += timed(one_reading, max(1, samples // rounds))
    db._pg_version = modes["reading (SELECT 1)"]
    return out


def run(kind: str, url: str, rows: int, samples: int) -> None:
    print(f"\n== {kind}: {rows:,} ledger rows, {GROUPS:,} groups, {RUNNING:,} running servers")
    db = Database(url)
    db.upgrade()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    fill(db, rows, now)
    clock_now = [now.replace(tzinfo=UTC).timestamp()]
    acct = Accounting(db, clock=lambda: clock_now[0], meter_interval=60)
    rng = random.Random(1)

    with db.engine.connect() as conn:
        select1 = timed(lambda: conn.execute(text("SELECT 1")).scalar(), samples)
        conn.rollback()

    def one_session_select1() -> None:
        with db.session() as s:
            s.execute(text("SELECT 1")).scalar()

    session1 = timed(one_session_select1, samples)
    readings = reading_costs(db, samples)

    def one_admit() -> None:
        i = rng.randrange(GROUPS)
        acct.admit(username=f"user{i:04d}", group=f"g{i:04d}", resource_class="aws",
                   model="rtx4090", count=1, hours=1)

    def one_remaining() -> None:
        i = rng.randrange(GROUPS)
        acct.remaining(f"g{i:04d}", "aws", "rtx4090", username=f"user{i:04d}")

    admit_ms = timed(one_admit, samples)
    remaining_ms = timed(one_remaining, samples)

    b50, b99 = statistics.median(select1), percentile(select1, 0.99)
    s50, s99 = statistics.median(session1), percentile(session1, 0.99)
    print(f"  SELECT 1 round trip          p50 {b50:7.3f} ms  p99 {b99:7.3f} ms")
    print(f"  SELECT 1 in a session/txn    p50 {s50:7.3f} ms  p99 {s99:7.3f} ms")
    for label, ms in readings.items():
        p50, p99 = statistics.median(ms), percentile(ms, 0.99)
        print(f"  {label:<28} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms   "
              f"ratio to the session: p50 x{p50 / s50:.2f}, p99 x{p99 / s99:.2f}")
    for label, ms in (("admit (admission check)", admit_ms), ("remaining()", remaining_ms)):
        p50, p99 = statistics.median(ms), percentile(ms, 0.99)
        print(f"  {label:<28} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms   "
              f"ratio to SELECT 1: p50 x{p50 / b50:.1f}, p99 x{p99 / b99:.1f}")

    t0 = time.perf_counter()
    report = acct.meter()
    tick1 = time.perf_counter() - t0
    clock_now[0] += 60
    t0 = time.perf_counter()
    report2 = acct.meter()
    tick2 = time.perf_counter() - t0
    for label, secs, rep in (("meter tick (catch-up)", tick1, report),
                             ("meter tick (+60 s)", tick2, report2)):
        print(f"  {label:<28} {secs * 1000:9.1f} ms for {rep.charged:,} charges   "
              f"ratio to SELECT 1 p50: x{secs * 1000 / b50:,.0f}  "
              f"({'OK' if secs <= 0.2 else 'over'} target 0.2 s)")
    target = percentile(admit_ms, 0.99)
    if kind == "postgresql":
        print(f"  admission p99 target < 5 ms: {'OK' if target < 5 else 'MISSED'}")
    db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="ledger rows (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, fewer samples")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    samples = args.samples or (300 if args.quick else 1000)
    for kind, url in with_databases(args.db):
        run(kind, url, rows, samples)


def with_databases(which: str) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh SQLite file and/or a fresh PostgreSQL database, each removed
    after its turn."""
    if which in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            yield "sqlite", f"sqlite:///{tmp}/bench.sqlite"
    if which in ("postgresql", "both"):
        import psycopg

        admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
        name = f"hh_bench_{secrets.token_hex(4)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield "postgresql", f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

if __name__ == "__main__":
    main()
