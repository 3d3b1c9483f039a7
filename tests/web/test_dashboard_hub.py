"""The quota admin's view through a real hub and portal: refused launches recorded at each
refusal point, money on the usage API, CSV and CLI at the catalog's price, the dashboard per
role (a student never sees another group), the picker's forecast and a Chromium screenshot."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import time
from datetime import timedelta

import pytest
import requests

from hybridhub.accounting.courses import CourseSchedule
from hybridhub.accounting.demand import record_refusal
from hybridhub.accounting.models import utcnow
from hybridhub.accounting.periods import month_start
from hybridhub.accounting.trust import TrustPolicy
from hybridhub.catalog import load_catalog
from hybridhub.hub.config import DEMO_ADMIN_PASSWORD, DEMO_GROUPS, DEMO_USER_PASSWORD
from hybridhub.web.app import SERVICE_NAME
from tests.fixtures.browser import login
from tests.fixtures.env import docs_artifact
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.portal import Portal, accounting_on, ready_portal
from tests.web.test_portal_api import CLI

pytestmark = pytest.mark.usefixtures("hub_prereqs")

UNTRUSTED = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1}
ENTERPRISE = {"class": "enterprise", "model": "a100", "count": 1, "hours": 2}


@pytest.fixture(scope="module")
def hub(hub_prereqs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashhub")
    h = Hub(workdir, extra_config="c.Spawner.poll_interval = 1\n", env={
        "HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_COURSE_SCHEDULER": "0",
        "HYBRIDHUB_ROLLUP_INTERVAL": "1",
    }).start()
    yield h
    h.stop()
    _stop_user_processes(workdir)


@pytest.fixture(scope="module")
def portal(hub) -> Portal:
    return ready_portal(hub)


@pytest.fixture(scope="module")
def acct(hub):
    yield from accounting_on(hub)


def demand(portal: Portal, user: str) -> list[dict]:
    r = portal.call(user, "GET", "api/demand")
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_every_refusal_kind_is_recorded_as_unmet_demand(portal, hub, acct):
    # budget: course-ml101 has 1 h of enterprise left, alice asks for 2
    bid = portal.budget("course-ml101", "enterprise")["id"]
    acct.set_budget(bid, amount=1.0)
    r = hub.spawn("alice", {**ENTERPRISE, "group": "course-ml101"})
    assert r.status_code == 403, r.text
    # barred: lab-vision may not use untrusted hardware
    TrustPolicy(acct.db).set_policy("lab-vision", barred_untrusted=True)
    try:
        r = hub.spawn("carol", {**UNTRUSTED, "group": "lab-vision"})
        assert r.status_code == 403 and "barred" in r.json()["message"], r.text
    finally:
        TrustPolicy(acct.db).set_policy("lab-vision", barred_untrusted=False)
    # course lock: bob's server belongs to a running session on community hardware
    sessions = CourseSchedule(acct, load_catalog())
    now = utcnow()
    info = sessions.create(group="course-ml101", resource_class="community", model="rtx3090",
                           count=1, starts_at=now - timedelta(minutes=1),
                           ends_at=now + timedelta(hours=1), title="Lab 9")
    sessions.begin(info.id, ["bob"], {"instructors": []})
    try:
        r = hub.spawn("bob", {**ENTERPRISE, "group": "course-ml101"})
        assert r.status_code == 403 and "Lab 9" in r.json()["message"], r.text
    finally:
        sessions.end_now(info.id)
    rows = demand(portal, "admin")
    got = {(r["resource_class"], r["model"], r["reason"]): (r["refusals"], r["accelerator_hours"])
           for r in rows}
    assert got == {("enterprise", "a100", "budget"): (1, 2.0),
                   ("community", "rtx4090", "barred"): (1, 1.0),
                   ("enterprise", "a100", "course_lock"): (1, 2.0)}
    # who sees what: alice her own, carol (leads lab-vision) her group's, ivy her course's
    assert {r["reason"] for r in demand(portal, "alice")} == {"budget"}
    assert {r["reason"] for r in demand(portal, "carol")} == {"barred"}
    assert {r["reason"] for r in demand(portal, "ivy")} == {"budget", "course_lock"}
    assert {r["reason"] for r in demand(portal, "dave")} == set()
    text = portal.call("admin", "GET", "demand.csv").text
    assert text.splitlines()[0] == ("day,resource_class,model,reason,refusals,accelerators,"
                                    "accelerator_hours")
    page = portal.call("admin", "GET", "demand")
    assert page.status_code == 200 and "course_lock" in page.text and "vega-chart" in page.text
    board = portal.call("admin", "GET", "api/dashboard").json()
    assert board["refusals_24h"] == {"budget": 1, "barred": 1, "course_lock": 1}
    assert portal.call("alice", "GET", "api/dashboard").json()["refusals_24h"] == {"budget": 1}
    acct.set_budget(bid, amount=10.0)


def test_money_at_the_catalog_price_on_api_csv_cli_and_dashboard(portal, hub, acct):
    price = next(o for o in load_catalog().all_offerings()
                 if o.key == "community/rtx4090").price_per_hour
    r = hub.spawn("dave", {**UNTRUSTED, "count": 2, "group": "project-llm"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("dave")
    time.sleep(3)  # the meter (every second) charges a few seconds
    hub.stop_server("dave")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = portal.call("admin", "GET", "api/usage?group=project-llm").json()["rows"]
        if rows:
            break
        time.sleep(0.5)
    (row,) = rows
    assert row["accelerator_hours"] > 0
    assert row["cost"] == pytest.approx(row["accelerator_hours"] * price, abs=1e-6)  # money kept to $1e-6
    parsed = list(csv.DictReader(io.StringIO(
        portal.call("admin", "GET", "api/usage.csv?group=project-llm").text)))
    assert float(parsed[0]["cost"]) == pytest.approx(row["cost"], abs=1e-6)
    env = {**os.environ, "HYBRIDHUB_PORTAL_URL": portal.url,
           "JUPYTERHUB_API_TOKEN": portal.token("admin")}
    out = subprocess.run([str(CLI), "usage", "--group", "project-llm"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{row['cost']:>12.2f}" in out.stdout.splitlines()[1]
    # the dashboard: admins see dave's spend, dave sees his own, alice sees none of it
    spend = {u: {t["resource_class"]: t["cost"] for t in
                 portal.call(u, "GET", "api/dashboard").json()["spend"]}
             for u in ("admin", "dave", "alice")}
    assert spend["admin"]["community"] == pytest.approx(row["cost"], abs=1e-6)
    assert spend["dave"]["community"] == pytest.approx(row["cost"], abs=1e-6)
    assert spend["alice"] == {}


def test_near_limit_budgets_and_roles_on_the_dashboard(portal, acct):
    bid = portal.budget("lab-vision", "aws")["id"]
    acct.set_budget(bid, amount=1.0)
    rid = acct.admit(username="carol", group="lab-vision", resource_class="aws",
                     model="trn1", count=1, hours=0.9)  # 90 % reserved
    try:
        near = {u: [(b["group"], b["resource_class"]) for b in
                    portal.call(u, "GET", "api/dashboard").json()["near_limit"]]
                for u in ("admin", "carol", "alice")}
        assert ("lab-vision", "aws") in near["admin"] and ("lab-vision", "aws") in near["carol"]
        assert all(g == "course-ml101" for g, _ in near["alice"])  # never another group's
        board = portal.call("carol", "GET", "api/dashboard").json()
        (b,) = [b for b in board["near_limit"] if b["id"] == bid]
        assert b["forecast"]["label"] == "never" and b["share"] == pytest.approx(0.9)
        page = portal.call("carol", "GET", "")
        assert page.status_code == 200
        for tile in ("tile-spend", "tile-limits", "tile-running", "tile-capacity",
                     "tile-refusals"):
            assert f'id="{tile}"' in page.text
        assert f'href="/services/{SERVICE_NAME}/groups"' in page.text
        js = requests.get(portal.url + "static/vega-lite.min.js", timeout=30)
        assert js.status_code == 200 and "javascript" in js.headers["Content-Type"]
    finally:
        acct.release(rid, "test over")
        acct.set_budget(bid, amount=50.0)


def test_picker_shows_the_forecast_beside_the_remaining_quota(hub):
    s = requests.Session()
    form = s.get(f"{hub.url}/hub/login").text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
    s.post(f"{hub.url}/hub/login", data={"username": "carol", "_xsrf": xsrf,
                                         "password": DEMO_USER_PASSWORD})
    page = s.get(f"{hub.url}/hub/spawn").text
    found = re.findall(r"at the last 7 days' rate: runs out: ([^<]+)</span>", page)
    assert found and all(re.fullmatch(r"never|exhausted|\d{4}-\d\d-\d\d \d\d:\d\d UTC|"
                                      r"not before its reset on \d{4}-\d\d-\d\d", f)
                         for f in found), found


def test_dashboard_in_chromium(portal, hub, acct, page, tmp_path):
    now = utcnow()
    record_refusal(acct.db, username="alice", group="course-ml101", resource_class="enterprise",
                   model="h100", count=4, hours=2, reason="capacity", message="full", now=now)
    start = month_start(now)  # this period, so the dashboard's chart has it
    for i, (rc, hours) in enumerate((("enterprise", 1.5), ("community", 0.000623),
                                     ("aws", 2.0))):  # tiny values once clipped the axis
        rid = acct.admit(username="carol", group="lab-vision", resource_class=rc,
                         model="x", count=1, hours=hours, price_per_hour=2.5)
        acct.mark_running(rid, start + timedelta(minutes=i))
        acct.release(rid, "stopped", now=start + timedelta(minutes=i, hours=hours))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, hub.url, "admin", DEMO_ADMIN_PASSWORD)
    page.goto(portal.url)
    try:
        page.wait_for_selector("#spend-chart .vega-chart.vega-ready svg", timeout=20_000)
    finally:
        assert not errors, errors
    assert page.locator("#tile-refusals tr[data-reason]").count() >= 1
    page.screenshot(path=str(docs_artifact("dashboard-admin.png", tmp_path)), full_page=True)
    page.goto(portal.url + "usage")
    page.wait_for_selector(".vega-chart.vega-ready svg")
    labels = page.locator(".vega-chart.vega-ready svg .role-axis-label text").all_text_contents()
    assert labels and not any(t.startswith("000") for t in labels)
    page.screenshot(path=str(docs_artifact("usage-admin.png", tmp_path)), full_page=True)


def _role_page(chromium, hub, user: str, password: str = DEMO_USER_PASSWORD):
    """A fresh Chromium context logged in as ``user``; JS errors collected in ``page.errors``."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    login(page, hub.url, user, password)
    return context, page


def test_leader_and_student_walk_through_in_chromium(portal, hub, acct, chromium, tmp_path):
    budget = portal.budget("lab-vision", "aws")
    bid, taken = budget["id"], budget["used"] + budget["reserved"]  # earlier tests here used some
    acct.set_budget(bid, amount=taken + 1.0)
    rid = acct.admit(username="carol", group="lab-vision", resource_class="aws",
                     model="trn1", count=1, hours=0.9)  # lab-vision's AWS budget at 90 % or more
    record_refusal(acct.db, username="alice", group="course-ml101", resource_class="enterprise",
                   model="h100", count=2, hours=1, reason="budget", message="over budget", now=utcnow())
    record_refusal(acct.db, username="carol", group="lab-vision", resource_class="community",
                   model="rtx4090", count=1, hours=1, reason="capacity", message="full", now=utcnow())
    # the hub's memberships, as a spawn syncs them (a course session above synced a one-student roster)
    acct.sync_groups({name: g["users"] for name, g in DEMO_GROUPS.items()})
    start = month_start(utcnow())
    for user, group, rc in (("carol", "lab-vision", "enterprise"), ("alice", "course-ml101", "community")):
        used = acct.admit(username=user, group=group, resource_class=rc, model="x", count=1, hours=0.5,
                          price_per_hour=1.5)
        acct.mark_running(used, start)
        acct.release(used, "stopped", now=start + timedelta(minutes=20))  # this period's use: a chart
    try:
        # the leader: her group's figures, the near-limit tile leads to the group with its forecast
        context, page = _role_page(chromium, hub, "carol")
        try:
            page.goto(portal.url)
            page.wait_for_selector("#spend-chart .vega-chart.vega-ready svg", timeout=20_000)
            assert "the leader of lab-vision" in page.locator("main, body").first.inner_text()
            rows = page.locator(f'#tile-limits tr[data-budget="{bid}"]')
            assert rows.count() == 1 and "lab-vision" in rows.inner_text()
            page.screenshot(path=str(docs_artifact("dashboard-leader.png", tmp_path)), full_page=True)
            page.click("#h-limits a")
            page.wait_for_url(lambda url: url.endswith("/groups"))
            group = page.locator("#group-lab-vision")
            assert group.count() == 1 and page.locator("#group-course-ml101").count() == 0
            assert group.locator(".runs-out").count() >= 1
            assert page.locator("body").inner_text().count("course-ml101") == 0
            assert not page.errors, page.errors
        finally:
            context.close()
        # the student: her own use; another group's names appear nowhere, not even in demand
        context, page = _role_page(chromium, hub, "alice")
        try:
            page.goto(portal.url)
            page.wait_for_selector("#spend-chart .vega-chart.vega-ready svg", timeout=20_000)
            text = page.locator("body").inner_text()
            assert "your own use and your groups' budgets" in text
            assert "lab-vision" not in text and "carol" not in text, text
            shown = dict(zip(page.locator("#tile-refusals tr[data-reason]").evaluate_all(
                "rows => rows.map(r => r.dataset.reason)"), map(int, page.locator(
                    "#tile-refusals tr[data-reason] td.num").all_inner_texts()), strict=True))
            mine = portal.call("alice", "GET", "api/dashboard").json()["refusals_24h"]
            everyone = portal.call("admin", "GET", "api/dashboard").json()["refusals_24h"]
            assert shown == mine and shown["budget"] >= 1, (shown, mine)
            assert everyone["capacity"] > mine.get("capacity", 0)  # carol's refusal is not hers to see
            assert page.locator("a[href$='/audit']").count() == 0
            page.screenshot(path=str(docs_artifact("dashboard-student.png", tmp_path)), full_page=True)
            page.click("#h-refusals a")
            page.wait_for_url(lambda url: "/demand" in url)
            demand_text = page.locator("body").inner_text()
            assert "h100" in demand_text and "lab-vision" not in demand_text and "rtx4090" not in demand_text
            assert not page.errors, page.errors
        finally:
            context.close()
    finally:
        acct.release(rid, "test over")
        acct.set_budget(bid, amount=50.0)
