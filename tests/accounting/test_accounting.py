"""Accounting behaviour as users see it, on SQLite and PostgreSQL (the ``db`` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from hybridhub.accounting.ledger import (
    Accounting,
    BudgetUnavailable,
    NoBudget,
    NotMember,
    QuotaExceeded,
)
from hybridhub.accounting.models import Budget, ChargedHour, UsageEntry

G = "course-ml101"
#: Amounts are exact millionths and each charge is rounded up: one unit per entry.
UNITS_SLACK = 1e-5
HOUR = 3600.0


def epoch(*ymd: int) -> float:
    return datetime(*ymd, tzinfo=UTC).timestamp()


@pytest.fixture
def acct(db, clock):
    accounting = Accounting(db, clock=clock, meter_interval=60, grace_seconds=300)
    accounting.sync_groups({G: ["alice", "bob"], "lab-x": ["carol"]},
                           kinds={G: "course", "lab-x": "lab"})
    return accounting


def admit(acct, user="alice", group=G, rc="aws", model="rtx4090", count=1, hours=1.0,
          weight=1.0, price=0.0, **kw):
    return acct.admit(username=user, group=group, resource_class=rc, model=model, count=count,
                      hours=hours, billing_weight=weight, price_per_hour=price, **kw)


def budget_row(db, budget_id):
    with db.session() as s:
        return s.get(Budget, budget_id)


def ledger_total(db, reservation_id=None):
    with db.session() as s:
        q = select(func.coalesce(func.sum(UsageEntry.amount), 0.0), func.count(UsageEntry.id))
        if reservation_id is not None:
            q = q.where(UsageEntry.reservation_id == reservation_id)
        return tuple(s.execute(q).one())


# ------------------------------------------------------------------ admission


def test_admission_that_fits_reserves_the_whole_request(acct, db):
    bid = acct.ensure_budget(G, "aws", 10)
    admit(acct, count=2, hours=3)
    row = budget_row(db, bid)
    assert (row.used, row.reserved) == (0, 6)
    assert acct.remaining(G, "aws", "rtx4090").amount_left == 4


def test_refusal_says_what_was_asked_what_is_left_and_when_it_resets(acct):
    acct.ensure_budget(G, "aws", 11.5)
    admit(acct, hours=8)
    with pytest.raises(QuotaExceeded) as info:
        admit(acct, user="bob", count=2, hours=4)
    err = info.value
    assert (err.asked, err.left, err.unit) == (8, 3.5, "hours")
    assert err.resets_at == datetime(2026, 12, 1)
    assert err.user_message == (
        "asked 8 h (2 x 4 h x weight 1), 3.5 h left in course-ml101's aws budget, "
        "resets 2026-12-01"
    )
    assert acct.open_reservations("bob") == []


def test_billing_weight_makes_an_h100_hour_cost_four_4090_hours(acct):
    acct.ensure_budget(G, "enterprise", 8)
    admit(acct, rc="enterprise", model="h100", hours=1, weight=4)
    admit(acct, rc="enterprise", model="rtx4090", hours=4, weight=1)
    assert acct.remaining(G, "enterprise", "h100").amount_left == 0
    with pytest.raises(QuotaExceeded) as info:
        admit(acct, rc="enterprise", model="h100", hours=0.25, weight=4)
    assert "1 x 0.25 h x weight 4" in str(info.value)


def test_credits_budget_charges_price_times_count_times_hours(acct):
    acct.ensure_budget(G, "aws", 20, unit="credits")
    admit(acct, model="trn1", count=2, hours=3, price=2.5)
    left = acct.remaining(G, "aws", "trn1")
    assert (left.amount_left, left.unit) == (5, "credits")
    with pytest.raises(QuotaExceeded) as info:
        admit(acct, model="trn1", count=1, hours=3, price=2.5)
    assert "asked 7.5 credits (1 x 3 h x 2.5 credits/h), 5 credits left" in str(info.value)


def test_model_specific_budget_wins_over_class_budget(acct):
    acct.ensure_budget(G, "enterprise", 100)
    h100 = acct.ensure_budget(G, "enterprise", 2, model="h100")
    assert acct.remaining(G, "enterprise", "h100").budget_id == h100
    with pytest.raises(QuotaExceeded):
        admit(acct, rc="enterprise", model="h100", hours=3)
    admit(acct, rc="enterprise", model="a100", hours=3)
    assert acct.remaining(G, "enterprise", "a100").amount_left == 97


def test_no_budget_is_refused_naming_group_and_class(acct):
    with pytest.raises(NoBudget) as info:
        admit(acct, rc="enterprise", model="h100")
    assert "course-ml101" in str(info.value) and "enterprise" in str(info.value)
    assert acct.remaining(G, "enterprise", "h100") is None
    with pytest.raises(NoBudget):
        admit(acct, group="unknown-group")


def test_non_member_is_refused(acct):
    acct.ensure_budget(G, "aws", 10)
    with pytest.raises(NotMember):
        admit(acct, user="mallory")


def test_per_user_cap_limits_one_user_but_not_the_others(acct):
    acct.ensure_budget(G, "aws", 100, per_user_cap=5)
    admit(acct, hours=4)
    with pytest.raises(QuotaExceeded) as info:
        admit(acct, hours=2)
    assert info.value.scope == "user" and info.value.left == 1
    assert "your per-user cap" in str(info.value)
    admit(acct, user="bob", hours=5)
    assert acct.remaining(G, "aws", "rtx4090", username="alice").amount_left == 1
    assert acct.remaining(G, "aws", "rtx4090").amount_left == 91


def test_remaining_many_is_remaining_for_each_key(acct):
    """The picker's batched read gives exactly what one remaining() call per cell gives."""
    acct.ensure_budget(G, "aws", 100, per_user_cap=5)
    acct.ensure_budget(G, "aws", 7, model="trn1")  # a model budget wins over the class one
    acct.ensure_budget("lab-x", "community", 20)
    admit(acct, hours=4)
    admit(acct, model="trn1", hours=2)
    keys = [(G, "aws", "rtx4090"), (G, "aws", "trn1"), (G, "community", None), ("lab-x", "community", "x"),
            ("no-such-group", "aws", None), (G, "aws", "rtx4090")]
    many = acct.remaining_many(keys, username="alice")
    assert set(many) == set(keys)
    for key in keys:
        assert many[key] == acct.remaining(*key, username="alice"), key
    assert many[(G, "aws", "rtx4090")].amount_left == 1 and many[(G, "aws", "trn1")].amount_left == 5
    assert many[(G, "community", None)] is None and many[("no-such-group", "aws", None)] is None


def test_per_user_cap_refusal_leaves_the_group_budget_untouched(acct, db):
    bid = acct.ensure_budget(G, "aws", 100, per_user_cap=1)
    with pytest.raises(QuotaExceeded):
        admit(acct, hours=2)
    assert budget_row(db, bid).reserved == 0


def test_oneoff_budget_outside_its_dates_admits_nothing(acct, clock):
    acct.ensure_budget(G, "aws", 10, period="oneoff",
                       starts_at=datetime(2026, 12, 1), ends_at=datetime(2027, 1, 1))
    with pytest.raises(BudgetUnavailable) as info:
        admit(acct)
    assert "only valid from 2026-12-01 to 2027-01-01" in str(info.value)
    assert acct.remaining(G, "aws", "rtx4090").amount_left == 0
    clock.now = epoch(2026, 12, 5)
    admit(acct)
    assert acct.remaining(G, "aws", "rtx4090").resets_at is None
    clock.now = epoch(2027, 1, 1)
    with pytest.raises(BudgetUnavailable):
        admit(acct)


def test_frozen_group_or_budget_is_refused_with_reason(acct):
    acct.ensure_budget(G, "aws", 10)
    acct.set_frozen(G)
    with pytest.raises(BudgetUnavailable) as info:
        admit(acct)
    assert "frozen" in str(info.value)
    acct.set_frozen(G, False)
    acct.ensure_budget(G, "aws", 10, frozen=True)
    with pytest.raises(BudgetUnavailable):
        admit(acct)


def test_monthly_budget_resets_at_the_start_of_the_month(acct, clock):
    acct.ensure_budget(G, "aws", 2)
    rid = admit(acct, hours=2)
    acct.mark_running(rid)
    clock.advance(2 * HOUR)
    acct.release(rid, "stopped")
    with pytest.raises(QuotaExceeded):
        admit(acct, hours=1)
    clock.now = epoch(2026, 12, 1)
    left = acct.remaining(G, "aws", "rtx4090")
    assert left.amount_left == 2 and left.resets_at == datetime(2027, 1, 1)
    admit(acct, hours=2)


def test_retried_admit_with_same_key_returns_the_same_reservation(acct, db):
    bid = acct.ensure_budget(G, "aws", 10)
    first = admit(acct, hours=3, idempotency_key="spawn:alice::1")
    again = admit(acct, hours=3, idempotency_key="spawn:alice::1")
    assert first == again
    assert budget_row(db, bid).reserved == 3
    assert len(acct.open_reservations("alice")) == 1


def test_ensure_budget_is_idempotent(acct):
    first = acct.ensure_budget(G, "aws", 10)
    assert acct.ensure_budget(G, "aws", 12) == first
    assert acct.remaining(G, "aws", None).amount == 12


def test_sync_groups_adds_and_removes_members(acct):
    acct.ensure_budget(G, "aws", 10)
    acct.sync_groups({G: ["bob", "dave"]})
    with pytest.raises(NotMember):
        admit(acct, user="alice")
    admit(acct, user="dave")


# ------------------------------------------------------------------ release and metering


def test_release_charges_elapsed_time_and_returns_the_rest(acct, db, clock):
    bid = acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, count=2, hours=4)
    acct.mark_running(rid)
    clock.advance(HOUR + 30)
    released = acct.release(rid, "user stopped")
    assert released.charged == pytest.approx(2 * (HOUR + 30) / HOUR)
    row = budget_row(db, bid)
    assert row.reserved == pytest.approx(0)
    assert row.used == pytest.approx(2 * (HOUR + 30) / HOUR)
    assert acct.release(rid, "again").already_closed
    assert budget_row(db, bid).used == pytest.approx(row.used)
    assert acct.open_reservations() == []


def test_release_of_a_server_that_never_started_charges_nothing(acct, db):
    bid = acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=4)
    assert acct.release(rid, "start failed").released == 4
    assert (budget_row(db, bid).used, budget_row(db, bid).reserved) == (0, 0)
    assert ledger_total(db) == (0, 0)


def test_metering_charges_whole_intervals_of_elapsed_time_only(acct, db, clock):
    bid = acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, count=2, hours=2)
    acct.mark_running(rid)
    clock.advance(150)  # 2.5 minutes: two whole intervals
    report = acct.meter()
    assert report.charged == 1
    assert ledger_total(db, rid)[0] == pytest.approx(2 * 120 / HOUR, abs=UNITS_SLACK)
    assert acct.meter().charged == 0  # nothing new elapsed
    clock.advance(30)
    acct.meter()
    assert ledger_total(db, rid)[0] == pytest.approx(2 * 180 / HOUR, abs=UNITS_SLACK)
    row = budget_row(db, bid)
    assert row.used + row.reserved == pytest.approx(4, abs=UNITS_SLACK)
    clock.advance(20)
    acct.release(rid, "stopped")
    assert ledger_total(db, rid)[0] == pytest.approx(2 * 200 / HOUR, abs=UNITS_SLACK)
    assert budget_row(db, bid).used == pytest.approx(2 * 200 / HOUR, abs=UNITS_SLACK)
    assert budget_row(db, bid).reserved == pytest.approx(0, abs=UNITS_SLACK)


def test_restart_meters_on_without_double_charge_or_lost_minutes(db, db_factory, clock):
    first = Accounting(db, clock=clock, meter_interval=60)
    first.sync_groups({G: ["alice"]})
    first.ensure_budget(G, "aws", 10)
    rid = admit(first, hours=5)
    first.mark_running(rid)
    clock.advance(10 * 60 + 10)
    first.meter()
    assert ledger_total(db, rid)[0] == pytest.approx(10 / 60, abs=UNITS_SLACK)
    db.dispose()  # the hub goes down ...
    clock.advance(25 * 60)  # ... for 25 minutes, and comes back with a fresh object
    second = Accounting(db_factory(), clock=clock, meter_interval=60)
    second.meter()
    second.meter()
    # 35 min 10 s have elapsed; whole minutes charged, at most one interval behind
    assert ledger_total(db, rid)[0] == pytest.approx(35 / 60, abs=UNITS_SLACK)
    clock.advance(50)
    second.release(rid, "stopped")
    assert ledger_total(db, rid)[0] == pytest.approx((36 * 60) / HOUR, abs=UNITS_SLACK)


def test_two_meters_at_the_same_instant_never_double_charge(db, db_factory, clock):
    a = Accounting(db, clock=clock)
    a.sync_groups({G: ["alice"]})
    a.ensure_budget(G, "aws", 10)
    rid = admit(a, hours=5)
    a.mark_running(rid)
    clock.advance(300)
    b = Accounting(db_factory(), clock=clock)
    a.meter()
    b.meter()
    assert ledger_total(db, rid) == (pytest.approx(5 / 60, abs=UNITS_SLACK), 1)


def test_time_served_after_the_reservation_ran_out_is_charged(acct, db, clock):
    bid = acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=1)
    acct.mark_running(rid)
    clock.advance(3 * HOUR)  # the server outlived its hour (grace, a late stop)
    acct.meter()
    acct.release(rid, "stopped")
    assert ledger_total(db, rid)[0] == 3  # every hour served, exactly
    row = budget_row(db, bid)
    assert (row.used, row.reserved) == (3, 0)  # the hold is given back whole, not more


def test_warnings_at_80_and_95_percent_are_recorded_once(acct, clock):
    acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=10)
    acct.mark_running(rid)
    clock.advance(7.9 * HOUR)
    assert [w.level for w in acct.meter().warnings] == []
    clock.advance(0.2 * HOUR)  # 8.1 h = 81%
    assert [w.level for w in acct.meter().warnings] == ["80"]
    assert acct.meter().warnings == []
    banners = acct.banners_for("bob")
    assert banners == ["course-ml101's aws budget is 80% used (8.1 h of 10 h), resets 2026-12-01"]
    assert acct.banners_for("carol") == []
    clock.advance(1.5 * HOUR)  # 9.6 h = 96%
    assert [w.level for w in acct.meter().warnings] == ["95"]
    assert "95% used" in acct.banners_for("alice")[0]
    assert acct.meter().warnings == []


def test_warning_is_logged(acct, clock, caplog):
    acct.ensure_budget(G, "aws", 1)
    rid = admit(acct, hours=1)
    acct.mark_running(rid)
    clock.advance(0.85 * HOUR)
    with caplog.at_level("WARNING", logger="hybridhub.accounting"):
        acct.meter()
    assert any("quota 80 for course-ml101" in r.getMessage() for r in caplog.records)


def test_run_out_reservation_is_warned_then_stopped_after_grace(acct, clock):
    acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=1, server_name="gpu")
    acct.mark_running(rid)
    clock.advance(HOUR - 60)
    assert acct.meter().to_stop == []
    clock.advance(60)
    report = acct.meter()
    assert report.to_stop == []
    [warning] = [w for w in report.warnings if w.level == "stop_pending"]
    assert warning.username == "alice" and "alice/gpu will be stopped" in warning.message
    assert any("will be stopped" in b for b in acct.banners_for("alice"))
    clock.advance(299)
    assert acct.meter().to_stop == []
    clock.advance(1)
    [(reservation, reason, stop_at)] = acct.meter().to_stop
    assert reservation.id == rid and reservation.server_name == "gpu"
    assert "ran out" in reason and stop_at == datetime(2026, 11, 10, 13, 5)
    acct.release(rid, reason)
    assert acct.meter().to_stop == []
    assert not any("will be stopped" in b for b in acct.banners_for("alice"))


def test_frozen_group_stops_running_servers_after_grace(acct, clock):
    acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=5)
    acct.mark_running(rid)
    acct.set_frozen(G)
    clock.advance(60)
    report = acct.meter()
    assert report.to_stop == [] and report.warnings[0].level == "stop_pending"
    clock.advance(300)
    assert [o.reservation.id for o in acct.meter().to_stop] == [rid]


def test_usage_totals_from_the_ledger(acct, clock):
    acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, count=2, hours=2)
    acct.mark_running(rid)
    clock.advance(HOUR)
    acct.release(rid, "done")
    totals = acct.usage(group=G)
    assert totals["amount"] == pytest.approx(2) and totals["accelerator_hours"] == pytest.approx(2)
    assert acct.usage(username="bob")["entries"] == 0


# ------------------------------------------------------------------ concurrency


@pytest.mark.timeout(180)
def test_fifty_simultaneous_launches_admit_exactly_what_fits(db, db_factory, clock):
    setup = Accounting(db, clock=clock)
    users = [f"u{i}" for i in range(50)]
    setup.sync_groups({G: users})
    bid = setup.ensure_budget(G, "aws", 7 * 3)  # fits exactly 7 launches of 3 hours
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def launch(user: str, database) -> None:
        acct = Accounting(database, clock=clock)
        barrier.wait()
        try:
            acct.admit(username=user, group=G, resource_class="aws", model="rtx4090",
                       count=1, hours=3)
            result = "admitted"
        except QuotaExceeded:
            result = "refused"
        except Exception as exc:  # recorded, so the assertion shows it
            result = f"error: {exc!r}"
        with lock:
            outcomes.append(result)

    databases = [db_factory(pool_size=1, max_overflow=0) for _ in users]
    threads = [
        threading.Thread(target=launch, args=(u, d))
        for u, d in zip(users, databases, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes if o.startswith("error")]
    assert errors == []
    assert outcomes.count("admitted") == 7 and outcomes.count("refused") == 43
    row = budget_row(db, bid)
    assert row.reserved == pytest.approx(21) and len(setup.open_reservations()) == 7


def test_a_release_beside_a_tick_holding_its_budget_waits_and_never_deadlocks(db, db_factory, clock):
    """A tick updates budgets, then upserts their charged hours; a release must lock in that
    order too.  Here another connection holds the budget as a tick does mid-way, and upserts the
    hour the release's last line starts in, while the release waits.  (Found by test_race on
    PostgreSQL: the release folded its hour first, and one of the two was killed as a deadlock.)"""
    acct = Accounting(db, clock=clock)
    acct.sync_groups({G: ["alice"]})
    bid = acct.ensure_budget(G, "aws", 10)
    rid = admit(acct, hours=2)
    acct.mark_running(rid)
    hour = int(clock() // HOUR)
    clock.advance(600)
    failed: list[BaseException] = []

    def release() -> None:
        try:
            acct.release(rid, "user stopped")
        except BaseException as e:  # reported below
            failed.append(e)

    tick = db_factory()
    with tick.session() as s:
        s.execute(text("UPDATE budgets SET used = used WHERE id = :b"), {"b": bid})
        worker = threading.Thread(target=release)
        worker.start()
        worker.join(0.5)  # the release now waits for the budget (or, the old way, holds the hour)
        s.execute(text("INSERT INTO charged_hours (budget_id, hour, amount) VALUES (:b, :h, 0) "
                       "ON CONFLICT (budget_id, hour) DO UPDATE SET amount = charged_hours.amount"),
                  {"b": bid, "h": hour})
    worker.join(30)
    assert not worker.is_alive() and not failed, failed
    assert acct.open_reservations() == []
    with db.session() as s:
        charged = s.scalar(select(func.sum(ChargedHour.amount)).where(ChargedHour.budget_id == bid))
    assert charged == pytest.approx(ledger_total(db, rid)[0])
