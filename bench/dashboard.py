"""Benchmark the portal's overview (dashboard) over a 1,000,000-row ledger on PostgreSQL.

Fills a fresh database with ``bench/accounting.py``'s bulk loader (1,000 groups and
budgets, 10,000 running servers, ``--rows`` ledger rows), folds all but the newest 10,000
entries into the daily rollup as the portal does every minute, and times, interleaved in
the same run:

- ``dashboard figures``: what ``GET /api/dashboard`` computes for an admin (every group):
  this month's spend by class, budgets near their limit with 7-day forecasts, running
  servers and capacity by class, refusals in 24 h;
- ``dashboard page``: the same plus the chart and the template (``GET /`` minus HTTP);
- ``raw SQL``: the same figures written by hand on a bare psycopg connection (the baseline).

Target: the page under 200 ms (median); the ratio to raw SQL is printed.

    python bench/dashboard.py [--rows N] [--samples N]
"""

from __future__ import annotations

import statistics
import sys
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from markupsafe import Markup  # noqa: E402

from hybridhub.accounting.dashboard import Scope, dashboard  # noqa: E402
from hybridhub.accounting.periods import month_start  # noqa: E402
from hybridhub.accounting.reports import refresh_rollup, totals_by  # noqa: E402
from hybridhub.web.base import Viewer, _jinja_env  # noqa: E402
from hybridhub.web.charts import stacked_bars  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from usage_report import _ms, ledger_bench_main, loaded_ledger  # noqa: E402  (not copied)

RAW = [
    ("SELECT e.resource_class, sum(e.accelerator_hours * r.price_per_hour),"
     " sum(e.accelerator_hours) FROM usage_entries e JOIN reservations r"
     " ON r.id = e.reservation_id WHERE e.ts_from >= %(month)s GROUP BY 1"),
    ("SELECT b.id, g.name, b.amount, b.used, b.reserved FROM budgets b JOIN groups g"
     " ON g.id = b.group_id WHERE b.amount > 0 AND b.used + b.reserved >= 0.8 * b.amount"),
    ("SELECT budget_id, sum(amount) / 7 FROM charged_hours WHERE hour >= %(week_h)s"
     " AND hour < %(now_h)s GROUP BY 1"),
    ("SELECT resource_class, model, count(*), sum(count), sum(price_per_hour * count)"
     " FROM reservations WHERE state != 'closed' GROUP BY 1, 2"),
    ("SELECT reason, count(*) FROM refused_launches WHERE at >= %(day)s AND at <= %(now)s"
     " GROUP BY 1"),
]
TICK = 10_000
EPOCH = datetime(1970, 1, 1)


def run(url: str, rows: int, samples: int) -> bool:
    db, raw, now, top = loaded_ledger(url, rows)
    refresh_rollup(db, upto=top - TICK)
    raw.execute("VACUUM ANALYZE usage_rollup")
    env = _jinja_env()
    viewer = Viewer("admin", True, None, frozenset())
    hour = timedelta(hours=1)
    params = {"month": month_start(now), "now": now, "day": now - timedelta(hours=24),
              "week_h": (now - timedelta(days=7) - EPOCH) // hour,
              "now_h": -((EPOCH - now) // hour)}

    def figures():
        return dashboard(db, Scope(None, None), now, None)

    def page():
        board = figures()
        chart = stacked_bars(totals_by(board.daily, "resource_class", "cost"),
                             title="Spend per day this month by class", unit="cost ($)")
        return env.get_template("dashboard.html").render(
            prefix="/services/hybridhub-portal/", hub_url="/hub/", viewer=viewer,
            xsrf_form_html=lambda: Markup(""), board=board, chart=chart)

    def raw_sql():
        return [raw.execute(sql, params).fetchall() for sql in RAW]

    cases = {"dashboard figures": figures, "dashboard page": page, "raw SQL": raw_sql}
    board, raw_rows = figures(), raw_sql()  # warm-up and a check: the same money
    assert abs(sum(t["cost"] for t in board.spend) - sum(r[1] for r in raw_rows[0])) < 1e-6
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(samples):  # interleaved, so drift hits every case alike
        for name, fn in cases.items():
            times[name].append(_ms(fn))
    raw.close()
    db.dispose()
    med = {name: statistics.median(ms) for name, ms in times.items()}
    print(f"\n== postgresql: {rows:,} ledger rows, {samples} samples each (median, min)")
    for name, ms in times.items():
        print(f"  {name:<20} {med[name]:8.1f} ms  (min {min(ms):7.1f})")
    ratio = med["dashboard page"] / med["raw SQL"]
    print(f"  ratio page / raw SQL  x{ratio:.2f}")
    ok = med["dashboard page"] < 200
    print(f"  dashboard page {med['dashboard page']:.1f} ms: "
          f"{'OK' if ok else 'MISSED'} target < 200 ms")
    return ok


def main(argv: list[str] | None = None) -> int:
    return ledger_bench_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
