"""Benchmark one metering tick at scale, on SQLite and PostgreSQL.

Fills a fresh database with ``--servers`` running servers (10 per group, a budget per
group) and ``--rows`` ledger rows (default 10 per server), then, ``--samples`` times,
measures :meth:`Accounting.meter` beside a baseline measured in the same run on the
kind of rows: ONE hand-written ``INSERT ... SELECT`` of the same charges into the ledger
plus the matching ``UPDATE`` of the budgets and of the reservations, committed.  The two
alternate, each charging the next interval; medians and their ratio are printed.  Both
commit through :meth:`Database.bulk_session`: on SQLite the WAL checkpoint then runs in a
background thread after the commit; it is waited for (and its time printed) before the
next sample, so neither side pays for the other's.
Target: a tick over 10,000 servers <= 0.2 s.

    python bench/meter.py [--servers 10000|100000] [--rows N] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from bench.accounting import fill, with_databases  # noqa: E402
from hybridhub.accounting.db import Database  # noqa: E402
from hybridhub.accounting.ledger import Accounting  # noqa: E402

TARGET_S = 0.2
INTERVAL = 60

#: The hand-written baseline: the same charges (one interval per running server, as the
#: tick makes them), in plain SQL with each dialect's own date arithmetic.
_ADD = {"postgresql": "charged_until + INTERVAL '60 seconds'",
        "sqlite": "strftime('%Y-%m-%d %H:%M:%S', substr(charged_until, 1, 19), '+60 seconds')"
                  " || substr(charged_until, 20)"}
_CHARGE = "CAST(amount_reserved * 60.0 / (hours * 3600.0) AS BIGINT) + 1"
_BASELINE = (
    "INSERT INTO usage_entries (reservation_id, budget_id, group_id, username,"
    " resource_class, model, amount, accelerator_hours, ts_from, ts_to, created_at,"
    " idempotency_key) SELECT id, budget_id, group_id, username, resource_class, model,"
    f" {_CHARGE}, count * 16667, charged_until, {{add}}, :now,"
    " 'base:' || CAST(id AS VARCHAR) || :tag FROM reservations WHERE state = 'running'",
    f"UPDATE budgets SET used = budgets.used + c.amount FROM (SELECT budget_id,"
    f" SUM({_CHARGE}) AS amount FROM reservations WHERE state = 'running'"
    " GROUP BY budget_id) AS c WHERE budgets.id = c.budget_id",
    f"UPDATE reservations SET charged_until = {{add}},"
    f" amount_charged = amount_charged + {_CHARGE} WHERE state = 'running'",
)


def baseline(db: Database, now: datetime) -> float:
    """Seconds for the hand-written statements, committed: they charge the interval up to
    ``now`` as the tick would (so the next tick goes on from there)."""
    statements = [text(sql.format(add=_ADD[db.dialect])) for sql in _BASELINE]
    t0 = time.perf_counter()
    with db.bulk_session() as s:
        conn = s.connection()
        for i, stmt in enumerate(statements):
            conn.execute(stmt, {"now": now, "tag": f":{now.isoformat()}"} if i == 0 else {})
    return time.perf_counter() - t0


def run(kind: str, url: str, servers: int, rows: int, samples: int) -> None:
    groups = max(1, servers // 10)
    print(f"\n== {kind}: {servers:,} running servers, {groups:,} groups, {rows:,} ledger rows")
    db = Database(url)
    db.upgrade()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    fill(db, rows, now, groups=groups, running=servers)
    acct = Accounting(db, meter_interval=INTERVAL)
    ticks, bases, checkpoints = [], [], []
    for n in range(2 * samples):
        at = now + timedelta(seconds=INTERVAL * n)
        if n % 2:
            bases.append(baseline(db, at))
        else:
            t0 = time.perf_counter()
            report = acct.meter(at)
            ticks.append(time.perf_counter() - t0)
            assert report.charged == servers, report.charged
        t0 = time.perf_counter()
        db.wait_checkpoint()
        checkpoints.append(time.perf_counter() - t0)
    tick, base = statistics.median(ticks), statistics.median(bases)
    print(f"  meter tick            median {tick:7.3f} s  "
          f"({', '.join(f'{t:.3f}' for t in ticks)})")
    print(f"  INSERT..SELECT+UPDATE median {base:7.3f} s  "
          f"({', '.join(f'{t:.3f}' for t in bases)})")
    if db.dialect == "sqlite":
        print(f"  then, in the background: the WAL checkpoint, median "
              f"{statistics.median(checkpoints):.3f} s (waited for between samples)")
    verdict = "OK" if tick <= TARGET_S else "over"
    print(f"  ratio tick / baseline: {tick / base:.2f}   "
          f"({verdict} target <= {TARGET_S} s{' at 10,000' if servers != 10_000 else ''})")
    db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=None, help="ledger rows (10 per server)")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args(argv)
    rows = args.rows if args.rows is not None else 10 * args.servers
    for kind, url in with_databases(args.db):
        run(kind, url, args.servers, rows, args.samples)


if __name__ == "__main__":
    main()
