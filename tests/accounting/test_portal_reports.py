"""Portal data layer on SQLite and PostgreSQL: usage reports, CSV export and import, audited
budget changes (set, top up, freeze) and running servers."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from html import unescape

import pytest

from hybridhub.accounting import audit
from hybridhub.accounting.budget_csv import CsvImportError, import_budgets, parse_budgets
from hybridhub.accounting.budgets import BudgetError
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.reports import (
    CSV_COLUMNS,
    UsageFilter,
    refresh_rollup,
    running_servers,
    totals_by,
    usage_csv,
    usage_report,
)
from hybridhub.web.charts import stacked_bars

T0 = datetime(2026, 11, 2, 9, 0)  # a Monday


@pytest.fixture
def acct(db, clock) -> Accounting:
    a = Accounting(db, clock=clock)
    a.sync_groups({"lab": ["carol", "dave"], "course": ["alice", "bob"]},
                  kinds={"lab": "lab", "course": "course"})
    a.ensure_budget("lab", "community", 100.0)
    a.ensure_budget("lab", "enterprise", 50.0)
    a.ensure_budget("course", "community", 20.0)
    return a


def use(acct: Accounting, user: str, group: str, rc: str, model: str, start: datetime,
        hours: float, count: int = 1) -> None:
    """One closed launch that ran ``hours`` from ``start`` (one ledger entry)."""
    rid = acct.admit(username=user, group=group, resource_class=rc, model=model, count=count,
                     hours=hours)
    acct.mark_running(rid, start)
    acct.release(rid, "stopped", now=start + timedelta(hours=hours))


@pytest.fixture
def ledger(acct) -> Accounting:
    use(acct, "carol", "lab", "community", "rtx4090", T0, 2.0)
    use(acct, "carol", "lab", "community", "rtx4090", T0 + timedelta(hours=3), 1.0)
    use(acct, "dave", "lab", "enterprise", "h100", T0 + timedelta(days=1), 1.0, count=2)
    use(acct, "alice", "course", "community", "rtx3090", T0 + timedelta(days=8), 0.5)
    return acct


def test_report_groups_by_day_group_class_model_and_user(ledger):
    rows = usage_report(ledger.db)
    got = [(r.period, r.group, r.resource_class, r.model, r.username, round(r.amount, 6),
            r.entries) for r in rows]
    assert got == [
        ("2026-11-02", "lab", "community", "rtx4090", "carol", 3.0, 2),
        ("2026-11-03", "lab", "enterprise", "h100", "dave", 2.0, 1),
        ("2026-11-10", "course", "community", "rtx3090", "alice", 0.5, 1),
    ]
    assert rows[1].accelerator_hours == pytest.approx(2.0)


@pytest.mark.parametrize("bucket, periods", [
    ("week", ["2026-11-02", "2026-11-09"]),
    ("month", ["2026-11-01"]),
])
def test_report_buckets(ledger, bucket, periods):
    rows = usage_report(ledger.db, UsageFilter(bucket=bucket))
    assert sorted({r.period for r in rows}) == periods
    assert sum(r.amount for r in rows) == pytest.approx(5.5)


def test_report_filters(ledger):
    only = usage_report(ledger.db, UsageFilter(groups=["course"]))
    assert {r.group for r in only} == {"course"}
    mine = usage_report(ledger.db, UsageFilter(username="carol"))
    assert {r.username for r in mine} == {"carol"} and len(mine) == 1
    span = usage_report(ledger.db, UsageFilter(since=T0 + timedelta(days=1),
                                               until=T0 + timedelta(days=2)))
    assert [r.username for r in span] == ["dave"]
    cls = usage_report(ledger.db, UsageFilter(resource_class="enterprise"))
    assert [r.model for r in cls] == ["h100"]
    with pytest.raises(ValueError, match="bucket"):
        usage_report(ledger.db, UsageFilter(bucket="year"))


FILTERS = [
    UsageFilter(),
    UsageFilter(bucket="week"),
    UsageFilter(bucket="month", groups=["lab"]),
    UsageFilter(since=T0 + timedelta(days=1), until=T0 + timedelta(days=9)),  # not midnight
    UsageFilter(since=datetime(2026, 11, 3), until=datetime(2026, 11, 11)),
    UsageFilter(username="carol", resource_class="community"),
]


def test_report_reads_the_rollup_plus_newer_entries_exactly(ledger):
    before = [usage_report(ledger.db, f) for f in FILTERS]
    assert refresh_rollup(ledger.db) == 4
    assert refresh_rollup(ledger.db) == 0  # nothing new: idempotent
    assert [usage_report(ledger.db, f) for f in FILTERS] == before
    use(ledger, "carol", "lab", "community", "rtx4090", T0 + timedelta(hours=6), 1.0)  # same day
    use(ledger, "bob", "course", "community", "rtx3090", T0 + timedelta(days=2), 1.0)
    tail = [usage_report(ledger.db, f) for f in FILTERS]
    assert refresh_rollup(ledger.db) == 2
    assert [usage_report(ledger.db, f) for f in FILTERS] == tail
    (carol_day,) = [r for r in tail[0] if r.username == "carol"]
    assert (carol_day.amount, carol_day.entries) == (pytest.approx(4.0), 3)


def test_csv_export_has_a_header_and_every_row(ledger):
    rows = usage_report(ledger.db)
    parsed = list(csv.DictReader(io.StringIO(usage_csv(rows))))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert [(p["period"], p["group"], p["username"]) for p in parsed] == [
        (r.period, r.group, r.username) for r in rows
    ]
    assert float(parsed[0]["amount"]) == pytest.approx(3.0)


def test_chart_is_an_escaped_vega_lite_spec_with_a_data_table(ledger):
    rows = usage_report(ledger.db)
    html = str(stacked_bars(totals_by(rows, "username"), title="<b>use</b>", unit="hours"))
    assert "&lt;b&gt;use&lt;/b&gt;" in html and "<b>" not in html
    spec = json.loads(unescape(re.search(r'data-spec="([^"]+)"', html).group(1)))
    assert spec["title"] == "<b>use</b>" and spec["mark"]["type"] == "bar"
    assert spec["encoding"]["y"]["title"] == "hours"
    assert spec["encoding"]["y"]["axis"]["format"] == ",.4~g"   # no clipped "0006235"
    assert {v["series"] for v in spec["data"]["values"]} == {"alice", "carol", "dave"}
    table = html[html.index("<table"):]                 # the same numbers without JavaScript
    assert table.count("<tr>") == 1 + len({r.period for r in rows})
    assert '<th scope="col" class="num">carol</th>' in table
    assert "No usage" in str(stacked_bars({}, title="t"))


GOOD_CSV = """group,resource_class,amount,unit,period,model,per_user_cap
lab,community,150,hours,monthly,,10
newlab,aws,5,credits,monthly,trn1,
"""


def test_import_creates_and_updates_budgets_audited(acct):
    changes = import_budgets(acct, GOOD_CSV, actor="admin", audit=audit.record)
    assert [(c.group, c.action) for c in changes] == [("lab", "set"), ("newlab", "create")]
    assert changes[0].before["amount"] == 100.0 and changes[0].after["amount"] == 150.0
    assert acct.remaining("lab", "community").amount == 150.0
    assert acct.remaining("newlab", "aws", "trn1").unit == "credits"
    log = audit.entries(acct.db)
    assert [(e["actor"], e["action"], e["group"]) for e in log] == [
        ("admin", "create", "newlab"), ("admin", "set", "lab"),
    ]


BAD_CSV = """group,resource_class,amount,unit,period
lab,community,150,hours,monthly
lab,enterprise,-5,hours,monthly
,community,1,hours,monthly
course,community,abc,hours,monthly
course,aws,3,minutes,monthly
lab,community,7,hours,monthly
"""


def test_import_reports_every_bad_line_and_imports_nothing(acct):
    with pytest.raises(CsvImportError) as info:
        import_budgets(acct, BAD_CSV, actor="admin", audit=audit.record)
    errors = dict(info.value.errors)
    assert sorted(errors) == [3, 4, 5, 6, 7]
    assert "amount must be at least 0" in errors[3]
    assert "group is required" in errors[4]
    assert "amount must be a number" in errors[5]
    assert "unit" in errors[6]
    assert "same budget as line 2" in errors[7]
    assert acct.remaining("lab", "community").amount == 100.0  # line 2 was NOT imported
    assert audit.entries(acct.db) == []


def test_import_header_errors():
    with pytest.raises(CsvImportError) as info:
        parse_budgets("group,amount,colour\nlab,1,red\n")
    assert info.value.errors == [(1, "missing column(s) resource_class; unknown column(s) colour")]


def test_import_rolls_back_when_the_database_refuses_a_line(acct):
    rid = acct.admit(username="carol", group="lab", resource_class="enterprise", model="h100",
                     count=1, hours=30)  # 30 of 50 reserved
    data = "group,resource_class,amount\nlab,community,999\nlab,enterprise,10\n"
    with pytest.raises(CsvImportError) as info:
        import_budgets(acct, data, actor="admin", audit=audit.record)
    assert info.value.errors[0][0] == 3 and "at least 30" in info.value.errors[0][1]
    assert acct.remaining("lab", "community").amount == 100.0
    assert audit.entries(acct.db) == []
    acct.release(rid, "stopped")


def test_set_budget_never_below_used_and_reserved(acct):
    bid = acct.remaining("lab", "community").budget_id
    rid = acct.admit(username="carol", group="lab", resource_class="community",
                     model="rtx4090", count=1, hours=40)
    with pytest.raises(BudgetError) as info:
        acct.set_budget(bid, amount=39, actor="admin", audit=audit.record)
    assert info.value.field == "amount" and info.value.limit == pytest.approx(40)
    with pytest.raises(BudgetError, match="at least 0"):
        acct.set_budget(bid, amount=-1)
    change = acct.set_budget(bid, amount=40, actor="admin", audit=audit.record)
    assert (change.before["amount"], change.after["amount"]) == (100.0, 40.0)
    assert acct.remaining("lab", "community").amount_left == pytest.approx(0)
    acct.release(rid, "stopped")
    assert [e["action"] for e in audit.entries(acct.db)] == ["set"]


def test_top_up_and_freeze_are_audited(acct):
    bid = acct.remaining("course", "community").budget_id
    change = acct.top_up(bid, 5, actor="ivy", audit=audit.record)
    assert (change.before["amount"], change.after["amount"]) == (20.0, 25.0)
    for bad in (0, -3, 2e6, float("nan")):
        with pytest.raises(BudgetError) as info:
            acct.top_up(bid, bad)
        assert info.value.field == "amount"
    acct.freeze_group("course", True, actor="admin", audit=audit.record)
    assert acct.remaining("course", "community").frozen
    with pytest.raises(KeyError):
        acct.freeze_group("nope")
    log = audit.entries(acct.db)
    assert [(e["actor"], e["action"], e["before"], e["after"]) for e in log] == [
        ("admin", "freeze", {"frozen": False}, {"frozen": True}),
        ("ivy", "top_up", change.before, change.after),
    ]
    assert audit.entries(acct.db, groups={"lab"}) == []


def test_running_servers_with_cost_so_far(acct, clock):
    start = datetime(2026, 11, 10, 10, 0)
    rid = acct.admit(username="dave", group="lab", resource_class="enterprise", model="h100",
                     count=2, hours=4, price_per_hour=3.0)
    acct.mark_running(rid, start)
    acct.meter(now=start + timedelta(hours=1))
    (server,) = running_servers(acct.db)
    assert (server.username, server.group, server.count, server.state) == ("dave", "lab", 2, "running")
    assert server.amount_reserved == pytest.approx(8.0)
    assert server.amount_charged == pytest.approx(2.0)
    assert server.cost_so_far == pytest.approx(6.0)  # 2 x 1 h x $3
    assert running_servers(acct.db, groups=["course"]) == []
    assert running_servers(acct.db, username="carol") == []
