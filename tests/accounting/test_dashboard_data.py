"""Money at the price in force, forecasts, unmet demand, the dashboard's figures and
threshold mail, on SQLite and PostgreSQL (mail through a real aiosmtpd server)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from hybridhub.accounting.dashboard import Scope, dashboard
from hybridhub.accounting.demand import demand_csv, demand_report, record_refusal, refusals_by_reason
from hybridhub.accounting.forecast import WINDOW_DAYS, forecasts
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.mail import NoticeMail, ThresholdMailer
from hybridhub.accounting.models import SCALE
from hybridhub.accounting.reports import UsageFilter, refresh_rollup, usage_csv, usage_report
from hybridhub.web.budgets import groups_view

NOW = datetime(2026, 11, 10, 12, 0)  # the clock fixture's time


@pytest.fixture
def acct(db, clock) -> Accounting:
    a = Accounting(db, clock=clock)
    a.sync_groups({"lab": ["carol", "dave"], "course": ["alice", "bob"]},
                  kinds={"lab": "lab", "course": "course"})
    return a


def oneoff(acct: Accounting, group: str, rc: str, amount: float, model: str | None = None) -> int:
    """A one-off budget open from October to March (no monthly reset)."""
    return acct.ensure_budget(group, rc, amount, model=model, period="oneoff",
                              starts_at=datetime(2026, 10, 1), ends_at=datetime(2027, 3, 1))


def use(acct: Accounting, user: str, group: str, rc: str, model: str, start: datetime,
        hours: float, count: int = 1, price: float = 0.0) -> None:
    """One closed launch admitted at ``price`` per accelerator-hour that ran ``hours``."""
    rid = acct.admit(username=user, group=group, resource_class=rc, model=model, count=count,
                     hours=hours, price_per_hour=price)
    acct.mark_running(rid, start)
    acct.release(rid, "stopped", now=start + timedelta(hours=hours))


def test_changing_the_catalog_price_does_not_rewrite_the_past(acct, db):
    oneoff(acct, "lab", "enterprise", 1000.0)
    use(acct, "carol", "lab", "enterprise", "h100", NOW - timedelta(days=3), 1.5, count=2,
        price=4.0)                                   # 3 accelerator-hours at $4
    refresh_rollup(db)                               # the old time is folded into the rollup
    use(acct, "dave", "lab", "enterprise", "h100", NOW - timedelta(days=1), 1.0, price=6.5)
    whole_days = usage_report(db, UsageFilter(bucket="day"))              # rollup + tail
    exact = usage_report(db, UsageFilter(since=NOW - timedelta(days=9, hours=1)))  # ledger only
    for rows in (whole_days, exact):
        assert [(r.username, r.accelerator_hours, r.cost) for r in rows] == [
            ("carol", pytest.approx(3.0), pytest.approx(12.0)),
            ("dave", pytest.approx(1.0), pytest.approx(6.5)),
        ]
    refresh_rollup(db)
    assert sum(r.cost for r in usage_report(db)) == pytest.approx(18.5)
    header, *lines = usage_csv(usage_report(db)).splitlines()
    assert header.endswith(",cost") and lines[0].endswith(",12.000000")


def test_forecast_on_a_synthetic_history(acct, db):
    oneoff(acct, "lab", "community", 100.0)
    oneoff(acct, "course", "community", 50.0)
    for day in range(1, 8):  # 2 h a day for the last 7 days: burn 2 h/day
        use(acct, "carol", "lab", "community", "rtx4090", NOW - timedelta(days=day), 2.0)
    use(acct, "dave", "lab", "community", "rtx4090", NOW - timedelta(days=WINDOW_DAYS + 2), 10.0)
    groups = groups_view(db, None, NOW)
    lab = next(g for g in groups if g["name"] == "lab")["budgets"][0]
    course = next(g for g in groups if g["name"] == "course")["budgets"][0]
    assert lab["remaining"] == pytest.approx(100 - 14 - 10)
    assert lab["forecast"]["burn_per_day"] == pytest.approx(2.0)   # older use is not counted
    assert lab["forecast"]["runs_out_at"] == NOW + timedelta(days=76 / 2)
    assert lab["forecast"]["label"] == "2026-12-18 12:00 UTC"
    assert course["forecast"] == {"burn_per_day": 0.0, "window_days": 7, "runs_out_at": None,
                                  "label": "never"}
    # a monthly budget that lasts past its reset says so
    acct.ensure_budget("course", "enterprise", 100.0)
    use(acct, "alice", "course", "enterprise", "h100", NOW - timedelta(days=1), 1.0)
    budget = next(b for g in groups_view(db, ["course"], NOW) for b in g["budgets"]
                  if b["resource_class"] == "enterprise")
    assert budget["forecast"]["label"] == "not before its reset on 2026-12-01"
    # a rate too small to matter is "never", not an overflow
    assert forecasts(db, [{**lab, "remaining": 1e12}], NOW)[lab["id"]].label == "never"
    # the window moves with the clock: a week later nothing was used
    later = forecasts(db, [lab], NOW + timedelta(days=8))
    assert later[lab["id"]].label == "never"


def test_forecast_counts_what_the_metering_ticks_charged(acct, db):
    """The burn rate sees the tick's charges (its own upsert of the charged hours, in the
    tick's transaction), hour by hour as they leave the window."""
    oneoff(acct, "lab", "community", 100.0)
    rid = acct.admit(username="carol", group="lab", resource_class="community",
                     model="rtx4090", count=2, hours=12)
    start = NOW - timedelta(days=WINDOW_DAYS, hours=1)  # an hour before the window opens
    acct.mark_running(rid, start)
    for hours in (1, 2, 3):  # a tick an hour, each charging an hour of two GPUs
        assert acct.meter(start + timedelta(hours=hours)).charged == 1
    lab = next(g for g in groups_view(db, None, NOW) if g["name"] == "lab")["budgets"][0]
    assert lab["remaining"] == pytest.approx(100 - 2 * 12)  # the ticks charge out of the hold
    burn = forecasts(db, [lab], NOW)[lab["id"]].burn_per_day
    assert burn == pytest.approx(4 / WINDOW_DAYS)  # the hour before the window is not counted
    later = forecasts(db, [lab], NOW + timedelta(hours=1))[lab["id"]].burn_per_day
    assert later == pytest.approx(2 / WINDOW_DAYS)


def test_refused_launches_per_day_offering_and_reason(db):
    day1, day2 = NOW - timedelta(days=1, hours=1), NOW
    record_refusal(db, username="alice", group="course", resource_class="enterprise",
                   model="h100", count=2, hours=3, reason="budget", message="only 1 h left",
                   now=day1)
    record_refusal(db, username="bob", group="course", resource_class="enterprise",
                   model="h100", count=1, hours=2, reason="budget", message="x", now=day1)
    record_refusal(db, username="carol", group="lab", resource_class="community",
                   model="rtx4090", count=4, hours=1, reason="capacity", message="full",
                   now=day2)
    record_refusal(db, username="carol", group="", resource_class="<b>x</b>" * 20,
                   model=None, count="9" * 40, hours=float("nan"), reason="bogus", message="m",
                   now=day2)  # untrusted input, cut to size
    rows = demand_report(db)
    assert [(r.day, r.resource_class[:8], r.model, r.reason, r.refusals, r.accelerators,
             r.accelerator_hours) for r in rows] == [
        ("2026-11-09", "enterpri", "h100", "budget", 2, 3, pytest.approx(8.0)),
        ("2026-11-10", "<b>x</b>", "", "other", 1, 1024, pytest.approx(0.0)),
        ("2026-11-10", "communit", "rtx4090", "capacity", 1, 4, pytest.approx(4.0)),
    ]
    assert [r.reason for r in demand_report(db, username="alice")] == ["budget"]
    assert demand_report(db, username="alice")[0].accelerator_hours == pytest.approx(6.0)
    assert {r.reason for r in demand_report(db, groups=["lab"])} == {"capacity"}
    assert refusals_by_reason(db, NOW) == {"capacity": 1, "other": 1}
    assert refusals_by_reason(db, NOW, hours=48) == {"budget": 2, "capacity": 1, "other": 1}
    assert demand_csv(rows).splitlines()[0] == (
        "day,resource_class,model,reason,refusals,accelerators,accelerator_hours")


def test_dashboard_figures_match_the_ledger(acct, db, clock):
    acct.ensure_budget("lab", "community", 10.0)
    acct.ensure_budget("lab", "enterprise", 100.0)
    acct.ensure_budget("course", "community", 100.0)
    use(acct, "carol", "lab", "community", "rtx4090", NOW - timedelta(days=2), 8.5, price=0.5)
    use(acct, "dave", "lab", "enterprise", "h100", NOW - timedelta(days=1), 2.0, count=2,
        price=3.0)
    use(acct, "alice", "course", "community", "rtx3090", NOW - timedelta(hours=5), 1.0,
        price=0.25)
    use(acct, "alice", "course", "community", "rtx3090", datetime(2026, 10, 30), 1.0,
        price=0.25)                                   # last month: not in this period
    rid = acct.admit(username="bob", group="course", resource_class="community",
                     model="rtx3090", count=1, hours=4, price_per_hour=0.25)
    acct.mark_running(rid, NOW - timedelta(hours=1))
    acct.meter(NOW)                                   # bob's first hour is charged
    record_refusal(db, username="alice", group="course", resource_class="enterprise",
                   model="h100", count=1, hours=1, reason="no_budget", message="", now=NOW)
    refresh_rollup(db)
    everyone = dashboard(db, Scope(None, None), NOW, None)
    with db.engine.connect() as conn:  # the same figures straight from the ledger
        raw = dict(((rc, (float(cost) / SCALE, float(hours) / SCALE))  # stored as integer units
                    for rc, cost, hours in conn.execute(text(
            "SELECT e.resource_class, SUM(e.accelerator_hours * r.price_per_hour),"
            " SUM(e.accelerator_hours) FROM usage_entries e"
            " JOIN reservations r ON r.id = e.reservation_id"
            " WHERE e.ts_from >= :start GROUP BY e.resource_class"), {"start": datetime(2026, 11, 1)})))
    assert {t["resource_class"]: (pytest.approx(t["cost"]), pytest.approx(t["accelerator_hours"]))
            for t in everyone.spend} == raw
    assert raw["enterprise"] == (pytest.approx(12.0), pytest.approx(4.0))
    assert [(b["group"], b["resource_class"]) for b in everyone.near_limit] == [
        ("lab", "community")]                         # 8.5 of 10 h
    assert everyone.near_limit[0]["forecast"]["burn_per_day"] == pytest.approx(8.5 / 7)
    assert everyone.running == [{"resource_class": "community", "servers": 1,
                                 "accelerators": 1, "cost_so_far": pytest.approx(0.25),
                                 "cost_per_hour": pytest.approx(0.25)}]
    assert everyone.capacity == [{"resource_class": "community", "model": "rtx3090",
                                  "in_use": 1, "allocated": None, "known": None}]
    assert everyone.refusals == {"no_budget": 1}
    # a leader sees their group's, a student only their own
    leader = dashboard(db, Scope(frozenset({"lab"}), None), NOW, {"lab"})
    assert {t["resource_class"] for t in leader.spend} == {"community", "enterprise"}
    assert leader.running == [] and leader.refusals == {}
    student = dashboard(db, Scope(None, "carol"), NOW, {"lab"})
    assert [(t["resource_class"], t["cost"]) for t in student.spend] == [
        ("community", pytest.approx(4.25))]
    assert student.running == [] and student.refusals == {}


def test_threshold_mail_to_each_leader_once(acct, db, smtp):
    inbox, port = smtp
    oneoff(acct, "lab", "enterprise", 10.0, model="h100")
    mailer = ThresholdMailer(db, "127.0.0.1", port, "hub@example.org",
                             {"lab": ["lead@example.org", "pi@example.org"],
                              "course": ["teacher@example.org"]},
                             portal_url="https://hub.example.org/services/hybridhub-portal/")
    assert mailer.send_pending(NOW) == 0
    use(acct, "carol", "lab", "enterprise", "h100", NOW - timedelta(days=2), 4.0)
    use(acct, "dave", "lab", "enterprise", "h100", NOW - timedelta(days=1), 4.2)
    acct.meter(NOW)                                    # 8.2 of 10 h: the 80 % notice
    assert mailer.send_pending(NOW) == 2
    assert mailer.send_pending(NOW) == 0               # once each
    first = inbox.messages[0]
    assert first["Subject"] == "[hybridhub] lab: enterprise (h100) budget 80 % used"
    assert sorted(m["X-Rcpt"] for m in inbox.messages) == ["lead@example.org", "pi@example.org"]
    body = first.get_payload(decode=True).decode()
    assert "Used:       8.2 h (82.0 %)" in body
    assert "Remaining:  1.8 h" in body
    assert "Burn rate:  1.17 h per day over the last 7 days" in body   # 8.2 h / 7 days
    assert "Runs out:   2026-11-12 00:52 UTC" in body  # 1.8 h at 8.2/7 h a day: 1.537 days
    assert "https://hub.example.org/services/hybridhub-portal/" in body
    use(acct, "dave", "lab", "enterprise", "h100", NOW - timedelta(hours=3), 1.8)
    acct.meter(NOW)                                    # 95 % and used up at once
    assert mailer.send_pending(NOW) == 4
    subjects = sorted(m["Subject"].rsplit(" budget ", 1)[1] for m in inbox.messages[2:])
    assert subjects == ["95 % used", "95 % used", "used up", "used up"]
    assert "Remaining:  0 h" in inbox.messages[-1].get_payload(decode=True).decode()
    assert "Runs out:   exhausted" in inbox.messages[-1].get_payload(decode=True).decode()
    with db.session() as s:
        assert s.query(NoticeMail).count() == 6


def test_threshold_mail_is_off_without_a_host(db):
    assert ThresholdMailer.from_env(db, {}) is None
    made = ThresholdMailer.from_env(db, {"HYBRIDHUB_SMTP_HOST": "127.0.0.1",
                                         "HYBRIDHUB_SMTP_PORT": "2525",
                                         "HYBRIDHUB_LEADER_ADDRESSES": '{"lab": ["a@b"]}'})
    assert (made.host, made.port, made.leaders) == ("127.0.0.1", 2525, {"lab": ["a@b"]})
    with pytest.raises(ValueError, match="HYBRIDHUB_LEADER_ADDRESSES"):
        ThresholdMailer.from_env(db, {"HYBRIDHUB_SMTP_HOST": "h",
                                      "HYBRIDHUB_LEADER_ADDRESSES": '["a@b"]'})


def test_the_meter_service_gets_the_mail_settings(monkeypatch, tmp_path):
    from traitlets.config import Config

    from hybridhub.accounting.settings import MeterSettings
    from hybridhub.hub.config import configure_services

    monkeypatch.setenv("HYBRIDHUB_SMTP_HOST", "smtp.example.org")
    monkeypatch.setenv("HYBRIDHUB_LEADER_ADDRESSES", '{"lab": ["pi@example.org"]}')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-meter")
    c = Config()
    configure_services(c, db_url=f"sqlite:///{tmp_path}/x.sqlite", settings=MeterSettings(60, 300))
    (meter,) = [s for s in c.JupyterHub.services if s["name"] == "hybridhub-meter"]
    env = meter["environment"]
    assert env["HYBRIDHUB_SMTP_HOST"] == "smtp.example.org"
    assert env["HYBRIDHUB_LEADER_ADDRESSES"] == '{"lab": ["pi@example.org"]}'
    assert "AWS_SECRET_ACCESS_KEY" not in env
