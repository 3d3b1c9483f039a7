"""Utilisation reports, the idle state and the culler's verdict (no hub; an injected clock)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hybridhub.accounting.lab_session import session_state
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import END_BY_SERVICE, END_IDLE, SessionLog
from hybridhub.accounting.utilisation import (
    ENV,
    BadReport,
    IdleSettings,
    TooSoon,
    idle_verdict,
    prune,
    record_report,
    utilisation_of,
)

T0 = datetime(2026, 11, 10, 12, 0, 0)
SETTINGS = IdleSettings(threshold_pct=5, warn_minutes=5, stale_seconds=120, min_report_seconds=10, keep_hours=1)
LIMITS = {"enterprise/h100": 30.0, "community/rtx4090": None}


def _open(db, user="carol", server="", offering="enterprise/h100", count=2) -> int:
    return SessionLog(db).open(username=user, server_name=server, group="lab-vision",
                               resource_class=offering.split("/")[0], offering=offering, accelerator="H100",
                               count=count, trust="trusted", backend="local", started_at=T0)


def _dev(util: float, index: int = 0) -> dict:
    return {"index": index, "utilisation": util, "memory_used_mb": 100, "memory_total_mb": 81920}


def _report(db, at: datetime, *utils: float, user="carol", server="") -> dict:
    return record_report(db, username=user, server_name=server, source="simulated",
                         devices=[_dev(u, i) for i, u in enumerate(utils)], now=at, settings=SETTINGS,
                         limit_of=LIMITS.get)


@pytest.mark.parametrize(("devices", "field"), [
    ([_dev(1, 0), _dev(1, 1), _dev(1, 2)], "devices"),              # 3 devices, 2 reserved
    ([_dev(101)], "devices[0].utilisation"),
    ([_dev(-1)], "devices[0].utilisation"),
    ([{**_dev(1), "index": 2}], "devices[0].index"),
    ([_dev(1), _dev(1)], "devices[1].index"),                         # listed twice
    ([{**_dev(1), "memory_used_mb": 90000}], "devices[0].memory_used_mb"),
    ([{**_dev(1), "utilisation": True}], "devices[0].utilisation"),
    ("all", "devices"),
])
def test_a_report_outside_its_limits_names_the_field(db, devices, field):
    _open(db)
    with pytest.raises(BadReport) as err:
        record_report(db, username="carol", server_name="", source="simulated", devices=devices, now=T0,
                      settings=SETTINGS)
    assert err.value.field == field, err.value


def test_no_session_and_unknown_source_are_refused(db):
    with pytest.raises(BadReport) as err:
        _report(db, T0, 1)
    assert err.value.field == "server"
    _open(db)
    with pytest.raises(BadReport) as err:
        record_report(db, username="carol", server_name="", source="cuda", devices=[], now=T0, settings=SETTINGS)
    assert err.value.field == "source"


def test_reports_are_rate_limited_and_pruned(db):
    _open(db)
    _report(db, T0, 50)
    with pytest.raises(TooSoon) as err:
        _report(db, T0 + timedelta(seconds=4), 50)
    assert err.value.retry_after == pytest.approx(6)
    for minute in range(1, 90, 10):
        _report(db, T0 + timedelta(minutes=minute), 50)
    assert prune(db, T0 + timedelta(minutes=81), SETTINGS) == 0  # each report prunes what is too old
    _open(db, user="dave")
    _report(db, T0 + timedelta(hours=5), 50, user="dave")  # carol's server stopped reporting: gone too
    assert prune(db, T0 + timedelta(hours=5), SETTINGS) == 0
    assert utilisation_of(db, SessionLog(db).open_session_id("carol", ""), T0 + timedelta(hours=5),
                          SETTINGS).state == "unknown"


def test_busy_idle_unknown_and_the_verdict(db):
    sid = _open(db)
    now = T0
    assert utilisation_of(db, sid, now, SETTINGS).state == "unknown"
    assert idle_verdict(db, "carol", "", now, SETTINGS)["verdict"] == "ordinary"
    _report(db, now, 0, 80)
    assert utilisation_of(db, sid, now, SETTINGS).state == "busy"
    assert idle_verdict(db, "carol", "", now, SETTINGS)["verdict"] == "keep"
    for minute in range(1, 32):  # idle from minute 1
        _report(db, T0 + timedelta(minutes=minute), 1, 2)
    now = T0 + timedelta(minutes=26)
    util = utilisation_of(db, sid, now, SETTINGS)
    assert util.state == "idle" and util.idle_since == T0 + timedelta(minutes=1)
    assert util.as_dict(now)["idle_minutes"] == 25
    answer = idle_verdict(db, "carol", "", now, SETTINGS)
    assert answer["verdict"] == "keep" and answer["utilisation"]["state"] == "idle"
    now = T0 + timedelta(minutes=31)
    assert idle_verdict(db, "carol", "", now, SETTINGS)["verdict"] == "cull"
    SessionLog(db).close(sid, by="stopped by service idle-culler")
    record = SessionLog(db).get(sid)
    assert record.end_reason == END_IDLE
    assert record.end_detail.endswith("(below 5 %); stopped by service idle-culler"), record.end_detail
    assert record.end_detail.startswith("2 × H100 idle 30 min")


def test_a_cull_not_carried_out_is_forgotten_when_the_accelerators_work_again(db):
    sid = _open(db)
    for minute in range(0, 32):
        _report(db, T0 + timedelta(minutes=minute), 0)
    assert idle_verdict(db, "carol", "", T0 + timedelta(minutes=31), SETTINGS)["verdict"] == "cull"
    _report(db, T0 + timedelta(minutes=32), 90)
    assert idle_verdict(db, "carol", "", T0 + timedelta(minutes=32), SETTINGS)["verdict"] == "keep"
    SessionLog(db).close(sid, default=END_BY_SERVICE, by="stopped by service idle-culler")
    assert SessionLog(db).get(sid).end_reason == END_BY_SERVICE


def test_cpu_only_stale_and_no_idle_minutes_keep_the_ordinary_rule(db):
    _open(db, server="cpu", count=0)
    _open(db, server="small", offering="community/rtx4090", count=1)
    _open(db, server="gone")
    _report(db, T0, user="carol", server="cpu")
    _report(db, T0, 0, server="small")
    _report(db, T0, 0, server="gone")
    later = T0 + timedelta(minutes=40)
    _report(db, later, user="carol", server="cpu")
    _report(db, later, 0, server="small")
    for server in ("cpu", "small", "gone"):  # gone: its last report is older than stale_seconds
        assert idle_verdict(db, "carol", server, later, SETTINGS)["verdict"] == "ordinary", server
    assert utilisation_of(db, SessionLog(db).open_session_id("carol", "gone"), later, SETTINGS).state == "unknown"


def test_the_lab_session_shows_utilisation_and_warns_before_the_idle_stop(db, monkeypatch):
    for name, var in ENV.items():
        monkeypatch.setenv(var, str(getattr(SETTINGS, name)))
    acct = Accounting(db)
    sid = _open(db)
    state = session_state(acct, "carol", "", now=T0)
    assert state["utilisation"] == {"state": "unknown", "idle_minutes": None, "devices": [], "sampled_at": None}
    for minute in range(0, 26):
        _report(db, T0 + timedelta(minutes=minute), 0, 3)
    state = session_state(acct, "carol", "", now=T0 + timedelta(minutes=24))
    assert state["utilisation"]["state"] == "idle" and not [w for w in state["warnings"] if w["kind"] == "idle"]
    state = session_state(acct, "carol", "", now=T0 + timedelta(minutes=25))
    (warning,) = [w for w in state["warnings"] if w["kind"] == "idle"]
    assert warning["message"] == ("Your 2 × H100 have been idle 25 min; this server stops in 5 min unless "
                                  "they are used.")
    assert warning["id"] == f"idle:{sid}:2026-11-10T12:00:00Z"
    assert state["stop_at"] == warning["stop_at"] == "2026-11-10T12:30:00Z"
    util = state["utilisation"]
    assert util["idle_minutes"] == 25 and util["sampled_at"] == "2026-11-10T12:25:00Z"
    assert util["devices"][1] == {"index": 1, "utilisation": 3, "memory_used_mb": 100, "memory_total_mb": 81920}


def test_the_dashboard_counts_hours_given_back_by_idle_stops_per_class(db, clock):
    from hybridhub.accounting.dashboard import Scope, idle_culled_by_class
    from hybridhub.accounting.periods import to_datetime

    acct = Accounting(db, clock=clock)
    acct.sync_groups({"lab-vision": ["carol", "dave"]}, kinds={"lab-vision": "lab"})
    acct.ensure_budget("lab-vision", "enterprise", 100)
    start = to_datetime(clock())
    log = SessionLog(db)
    for user, hours_run, reason in (("carol", 0.5, END_IDLE), ("dave", 0.25, END_IDLE), ("dave", 1, END_BY_SERVICE)):
        rid = acct.admit(username=user, group="lab-vision", resource_class="enterprise", model="h100", count=2,
                         hours=2, price_per_hour=2.5, server_name=f"s{hours_run}")
        acct.mark_running(rid, started_at=start)
        sid = log.open(username=user, server_name=f"s{hours_run}", group="lab-vision", resource_class="enterprise",
                       offering="enterprise/h100", accelerator="H100", count=2, trust="trusted", backend="local",
                       reservation_id=rid, started_at=start)
        log.close(sid, observed=reason, at=start + timedelta(hours=hours_run))
    (row,) = idle_culled_by_class(db, Scope(groups=None, username=None), start)
    # carol gave back 2 × 1.5 h, dave 2 × 1.75 h; dave's service stop is not an idle one
    assert row["servers"] == 2 and row["accelerator_hours"] == pytest.approx(6.5)
    assert row["value"] == pytest.approx(6.5 * 2.5)
    (mine,) = idle_culled_by_class(db, Scope(groups=None, username="carol"), start)
    assert mine["accelerator_hours"] == pytest.approx(3.0)
    assert idle_culled_by_class(db, Scope(groups=frozenset({"other"}), username=None), start) == []
