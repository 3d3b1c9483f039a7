"""One metering tick charges exactly what the per-row rule says, on SQLite and PostgreSQL.

:func:`legacy_tick` is the per-reservation rule of the tick as it was written before the
tick became a few set-based statements (transcribed from it, float for float); each test
snapshots the database, predicts the next tick with it, runs the real tick and compares
every stored integer: ledger lines, reservations, budgets, per-user usage, the report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from hybridhub.accounting.ledger import Accounting, QuotaExceeded
from hybridhub.accounting.models import Budget, Notice, Reservation, UsageEntry, UserUsage, from_units, to_units
from hybridhub.accounting.periods import ceil_units
from tests.fixtures.db import FakeClock

START = 1794312000.0  # 2026-11-10 12:00:00 UTC
HOUR = 3600.0


def snapshot(db) -> dict:
    """Every stored integer the tick may change, keyed for comparison."""
    with db.engine.connect() as c:
        res = c.execute(select(Reservation.__table__).order_by(Reservation.id)).all()
        budgets = c.execute(select(Budget.__table__)).all()
        users = c.execute(select(UserUsage.__table__)).all()
        ledger = c.execute(select(UsageEntry.__table__)).all()
        notices = c.execute(select(Notice.__table__)).all()
    return {
        "res": {r.id: r for r in res},
        "budgets": {b.id: (to_units(b.used), to_units(b.reserved)) for b in budgets},
        "budget_rows": {b.id: b for b in budgets},
        "users": {(u.budget_id, u.username, u.period_start): (to_units(u.used),
                                                             to_units(u.reserved))
                  for u in users},
        "ledger": {e.idempotency_key: (e.reservation_id, e.ts_from, e.ts_to, to_units(e.amount),
                                       to_units(e.accelerator_hours), e.created_at)
                   for e in ledger},
        "notices": {(n.budget_id, n.level, n.reservation_id): n for n in notices},
    }


def legacy_tick(before: dict, now: datetime, interval_s: float) -> dict:
    """The state after one tick by the per-row rule (the old loop), and its totals."""
    interval = timedelta(seconds=interval_s)
    after = {k: dict(before[k]) for k in ("budgets", "users", "ledger")}
    res = {rid: (r.charged_until, to_units(r.amount_charged)) for rid, r in before["res"].items()}
    bdelta: dict = defaultdict(lambda: [0, 0])
    udelta: dict = defaultdict(lambda: [0, 0])
    charged = 0
    for r in before["res"].values():
        if r.state != "running":
            continue
        end = r.started_at + timedelta(hours=r.hours)
        whole = math.floor((now - r.charged_until) / interval)
        new_until = r.charged_until + whole * interval
        if r.charged_until < end <= now:
            new_until = max(new_until, end)
        if new_until <= r.charged_until:
            continue
        seconds = (new_until - r.charged_until).total_seconds()
        units = ceil_units(r.amount_reserved * seconds / (r.hours * 3600.0))
        held = max(0, to_units(r.amount_reserved) - to_units(r.amount_charged))
        offset_ms = round((r.charged_until - r.started_at).total_seconds() * 1000)
        hours_u = to_units(r.count * seconds / 3600.0)
        after["ledger"][f"res:{r.id}:{offset_ms}ms"] = (
            r.id, r.charged_until, new_until, units, hours_u, now)
        res[r.id] = (new_until, to_units(r.amount_charged) + units)
        keys = [bdelta[r.budget_id]]
        if r.user_period_start is not None:
            keys.append(udelta[(r.budget_id, r.username, r.user_period_start)])
        for d in keys:
            d[0] += units
            d[1] += min(units, held)
        charged += 1
    for bid, (used, held) in bdelta.items():
        u, rv = after["budgets"][bid]
        after["budgets"][bid] = (u + used, rv - held)
    for key, (used, held) in udelta.items():
        u, rv = after["users"][key]
        after["users"][key] = (u + used, rv - held)
    after["res"] = res
    after["charged"] = charged
    after["amount"] = sum(d[0] for d in bdelta.values())
    return after


def expected_warnings(before: dict, after: dict, now: datetime, grace: float) -> tuple:
    """New threshold levels per budget, and (reservation, reason) to stop, by the old rules."""
    levels = set()
    for bid, b in after["budget_rows"].items():
        used, amount = to_units(b.used), to_units(b.amount)
        if amount <= 0:
            continue
        for pct, name in ((100, "exhausted"), (95, "95"), (80, "80")):
            if used * 100 >= amount * pct and (bid, name, None) not in before["notices"]:
                levels.add((bid, name))
    stops = set()
    for r in after["res"].values():
        if r.state != "running":
            continue
        b = after["budget_rows"][r.budget_id]
        if now >= r.started_at + timedelta(hours=r.hours) or \
                to_units(r.amount_charged) >= to_units(r.amount_reserved):
            reason = f"its reservation of {r.hours:g} h ran out"
        elif b.frozen or after["frozen"].get(r.group_id):
            reason = "the group's budget was frozen"
        elif to_units(b.used) >= to_units(b.amount):
            reason = "the group's budget is used up"
        else:
            continue
        notice = before["notices"].get((r.budget_id, "stop_pending", r.id))
        stop_at = notice.stop_at if notice else now + timedelta(seconds=grace)
        if now >= stop_at:
            stops.add((r.id, reason))
    return levels, stops


def frozen_groups(db) -> dict:
    with db.engine.connect() as c:
        return dict(c.execute(text("SELECT id, frozen FROM groups")).all())


def tick_and_compare(acct: Accounting, db, now: float) -> None:
    """Predict one tick at ``now`` with the per-row rule, run it, compare everything."""
    now_dt = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
    before = snapshot(db)
    want = legacy_tick(before, now_dt, acct.meter_interval)
    report = acct.meter(now)
    got = snapshot(db)
    assert got["ledger"] == want["ledger"]
    assert {rid: (r.charged_until, to_units(r.amount_charged))
            for rid, r in got["res"].items()} == want["res"]
    assert got["budgets"] == want["budgets"]
    assert got["users"] == want["users"]
    assert (report.charged, to_units(report.amount)) == (want["charged"], want["amount"])
    got["frozen"] = frozen_groups(db)
    levels, stops = expected_warnings(before, got, now_dt, acct.grace_seconds)
    assert {(w.budget_id, w.level) for w in report.warnings if w.reservation_id is None} == levels
    assert {(o.reservation.id, o.reason) for o in report.to_stop} == stops


def reset(db) -> None:
    with db.engine.begin() as conn:
        for table in ("notices", "usage_entries", "reservations", "user_usage", "budgets",
                      "group_members", "groups"):
            conn.execute(text(f"DELETE FROM {table}"))


def mixed_population(acct: Accounting, clock: FakeClock) -> None:
    """Course seats, tiny and overdrawn budgets, credits, weights, odd starts and hours."""
    acct.sync_groups({"course-a": ["s1", "s2", "s3"], "proj-b": ["bob"], "lab-c": ["carol"],
                      "lab-d": ["dan"]}, kinds={"course-a": "course"})
    acct.ensure_budget("course-a", "aws", 20, per_user_cap=3)
    acct.ensure_budget("proj-b", "aws", 0.75)
    acct.ensure_budget("lab-c", "aws", 500, unit="credits")
    acct.ensure_budget("lab-d", "aws", 40)
    hours = (START + 4321.5 - clock.now) / HOUR  # a course session ending at an odd time
    seats = acct.admit_all([
        {"username": u, "group": "course-a", "resource_class": "aws", "model": "inf2",
         "count": 1, "hours": hours, "idempotency_key": f"seat:{u}"} for u in ("s1", "s2", "s3")
    ])
    for i, rid in enumerate(seats):
        acct.mark_running(rid, clock.now + i * 0.123457)
    launches = [
        ("proj-b", "bob", 1, 0.25, 1.0, 0.0, 7.5),      # runs past its end: overdrawn
        ("proj-b", "bob", 2, 0.1, 1.5, 0.0, 0.000001),   # exhausts the budget
        ("lab-c", "carol", 3, 1 / 3, 1.0, 2.75, 12.345678),
        ("lab-d", "dan", 4, 2.0, 4.0, 0.0, 59.999999),
        ("lab-d", "dan", 1, 5.0, 1.0, 0.0, 0.5),
    ]
    for group, user, count, h, weight, price, delay in launches:
        rid = acct.admit(username=user, group=group, resource_class="aws", model="inf2",
                         count=count, hours=h, billing_weight=weight, price_per_hour=price)
        acct.mark_running(rid, clock.now + delay)
    acct.admit(username="dan", group="lab-d", resource_class="aws", model="inf2", count=1,
               hours=1)  # admitted, never started: never charged
    gone = acct.admit(username="dan", group="lab-d", resource_class="aws", model="inf2",
                      count=1, hours=1)
    acct.mark_running(gone, clock.now)
    acct.release(gone, "stopped", clock.now + 30)  # closed: never metered


TICKS = (0, 59.999999, 60, 61.5, 61.5, 137.25, 30, 900.000001, 1201, 1800, 2700, 4321.5,
         4322, 5400, 5400, 7200.75, 9000, 9000)


@pytest.mark.parametrize("interval", [60, 45.5])
def test_tick_charges_exactly_what_the_per_row_rule_says(db, interval):
    clock = FakeClock(START)
    acct = Accounting(db, clock=clock, meter_interval=interval, grace_seconds=300)
    mixed_population(acct, clock)
    for i, t in enumerate(TICKS):
        if i == 9:
            acct.set_frozen("lab-d")
        tick_and_compare(acct, db, START + t)  # 30 after 137.25: the clock went back


def test_a_repeated_tick_at_the_same_instant_changes_nothing(db):
    clock = FakeClock(START)
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=300)
    mixed_population(acct, clock)
    first = acct.meter(START + 1234.5)
    before = snapshot(db)
    again = acct.meter(START + 1234.5)
    after = snapshot(db)
    assert first.charged > 0 and (again.charged, again.amount) == (0, 0.0)
    assert {k: after[k] for k in ("ledger", "budgets", "users")} == {
        k: before[k] for k in ("ledger", "budgets", "users")}
    assert [w for w in again.warnings if w.reservation_id is None] == []
    assert [o.reservation.id for o in again.to_stop] == [o.reservation.id for o in first.to_stop]


LAUNCH = st.tuples(
    st.integers(1, 4),                                   # count
    st.sampled_from([0.1, 0.25, 1 / 3, 1.0, 1.2345678]),  # hours
    st.sampled_from([1.0, 1.5, 4.0]),                    # weight
    st.integers(0, 120_000_000),                         # start delay in microseconds
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(launches=st.lists(LAUNCH, min_size=1, max_size=6),
       waits=st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=6),
       interval=st.sampled_from([60, 45.5, 7]), budget=st.sampled_from([0.5, 3.0, 100.0]))
def test_any_launches_and_ticks_match_the_per_row_rule(db, launches, waits, interval, budget):
    reset(db)
    clock = FakeClock(START)
    acct = Accounting(db, clock=clock, meter_interval=interval, grace_seconds=120,
                      check_membership=False)
    acct.ensure_budget("g", "aws", budget, per_user_cap=budget)
    for count, hours, weight, delay in launches:
        try:
            rid = acct.admit(username="u", group="g", resource_class="aws", model=None,
                             count=count, hours=hours, billing_weight=weight)
        except QuotaExceeded:
            continue
        acct.mark_running(rid, START + delay / 1e6)
    now = START
    for wait in waits:
        now += wait / 1e6
        tick_and_compare(acct, db, now)


def test_legacy_rule_is_the_rule_this_module_states(db, clock):
    """The reference itself: two whole minutes of a 2-accelerator launch, 120 s exactly."""
    acct = Accounting(db, clock=clock, meter_interval=60)
    acct.sync_groups({"g": ["a"]})
    acct.ensure_budget("g", "aws", 10)
    rid = acct.admit(username="a", group="g", resource_class="aws", model=None, count=2,
                     hours=2)
    acct.mark_running(rid)
    before = snapshot(db)
    want = legacy_tick(before, datetime.fromtimestamp(clock.now + 150, UTC).replace(
        tzinfo=None), 60)
    assert want["charged"] == 1 and from_units(want["amount"]) == pytest.approx(2 * 120 / HOUR, abs=1e-5)


def test_two_ticks_at_once_on_separate_connections_charge_each_span_once(db, db_factory):
    """Concurrent ticks (two hubs): the second waits for the first's locks, charges nothing."""
    import threading

    clock = FakeClock(START)
    acct = Accounting(db, clock=clock, meter_interval=60)
    acct.sync_groups({"g": ["a"]})
    acct.ensure_budget("g", "aws", 1000)
    for _ in range(20):
        rid = acct.admit(username="a", group="g", resource_class="aws", model=None, count=1,
                         hours=1)
        acct.mark_running(rid)
    others = [Accounting(db_factory(), clock=clock, meter_interval=60) for _ in range(2)]
    reports: list = []
    threads = [threading.Thread(target=lambda a=a: reports.append(a.meter(START + 600)))
               for a in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.charged for r in reports) == [0, 20]
    got = snapshot(db)
    assert len(got["ledger"]) == 20
    assert sum(v[3] for v in got["ledger"].values()) == sum(u for u, _ in got["budgets"].values())
