"""The portal service end to end, through a real hub and its proxy, on SQLite and PostgreSQL:
roles (every 403), field errors, CSV import/export, audit log, running servers, and the
``hybridhub-quota`` CLI against the running service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from hybridhub.accounting.ledger import Accounting
from hybridhub.hub.config import DEMO_USER_PASSWORD
from hybridhub.web.app import SERVICE_NAME
from tests.fixtures.portal import Portal, accounting_on, ready_portal

pytestmark = pytest.mark.usefixtures("hub_prereqs")
CLI = Path(sys.executable).parent / "hybridhub-quota"


@pytest.fixture(scope="module")
def portal(demo_hub) -> Portal:
    return ready_portal(demo_hub)


@pytest.fixture(scope="module")
def acct(demo_hub) -> Iterator[Accounting]:
    """Accounting on the hub's own database, to put usage in the ledger."""
    yield from accounting_on(demo_hub)



def test_openapi_document_merges_every_module(portal):
    doc = requests.get(portal.url + "api/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/groups", "/api/budgets/{budget_id}/top-up", "/api/usage", "/api/usage.csv",
            "/api/servers", "/api/audit", "/api/budgets/import"} <= set(doc["paths"])
    assert doc["servers"] == [{"url": f"/services/{SERVICE_NAME}"}]


def test_hub_navbar_links_to_the_portal(portal):
    s = requests.Session()
    form = s.get(f"{portal.hub.url}/hub/login").text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
    s.post(f"{portal.hub.url}/hub/login", data={"username": "alice", "_xsrf": xsrf,
                                                "password": DEMO_USER_PASSWORD})
    r = s.get(f"{portal.hub.url}/hub/home")
    assert f'href="/services/{SERVICE_NAME}/"' in r.text and "Quotas &amp; usage" in r.text


def test_each_role_sees_its_groups(portal):
    names = {u: [g["name"] for g in portal.call(u, "GET", "api/groups").json()["groups"]]
             for u in ("admin", "carol", "alice", "ivy", "dave")}
    assert names == {
        "admin": ["course-ml101", "lab-vision", "project-llm"],
        "carol": ["lab-vision"],
        "alice": ["course-ml101"],
        "ivy": ["course-ml101"],
        "dave": ["lab-vision", "project-llm"],
    }


FORBIDDEN = [
    # students: no other groups, no managing anything
    ("alice", "GET", "api/groups/lab-vision", None),
    ("alice", "POST", "top-up:course-ml101", {"amount": 1}),
    ("alice", "PATCH", "budget:course-ml101", {"amount": 99}),
    ("alice", "POST", "api/groups/course-ml101/budgets", {"resource_class": "aws", "amount": 1}),
    ("alice", "POST", "api/groups/course-ml101/freeze", {"frozen": True}),
    ("alice", "GET", "api/usage?group=lab-vision", None),
    ("alice", "GET", "api/usage?user=bob", None),
    ("alice", "GET", "api/usage.csv?user=bob", None),
    ("alice", "GET", "api/audit", None),
    ("alice", "GET", "budget-get:lab-vision", None),
    # a leader tops up their own group only, and does not set, freeze or import
    ("carol", "POST", "top-up:course-ml101", {"amount": 1}),
    ("carol", "PATCH", "budget:lab-vision", {"amount": 500}),
    ("carol", "POST", "api/groups/lab-vision/freeze", {"frozen": True}),
    ("carol", "POST", "api/groups/lab-vision/budgets", {"resource_class": "aws", "amount": 1}),
    ("carol", "GET", "api/groups/course-ml101", None),
    ("carol", "GET", "api/audit?group=course-ml101", None),
    ("ivy", "POST", "top-up:lab-vision", {"amount": 1}),
    # no token at all
    (None, "GET", "api/groups", None),
]


def _resolve(portal: Portal, path: str) -> str:
    kind, _, group = path.partition(":")
    if kind == "top-up":
        return f"api/budgets/{portal.budget(group)['id']}/top-up"
    if kind in ("budget", "budget-get"):
        return f"api/budgets/{portal.budget(group)['id']}"
    return path


@pytest.mark.parametrize("user, method, path, body", FORBIDDEN,
                         ids=[f"{u}-{m}-{p}" for u, m, p, _ in FORBIDDEN])
def test_forbidden_is_403_with_a_json_body(portal, user, method, path, body):
    before = portal.call("admin", "GET", "api/groups").json()
    r = portal.call(user, method, _resolve(portal, path), json=body)
    assert r.status_code == 403, r.text
    assert r.json()["status"] == 403 and r.json()["message"]
    assert portal.call("admin", "GET", "api/groups").json() == before


def test_hub_token_without_portal_access_is_403(portal):
    r = requests.get(portal.url + "api/groups", timeout=30,
                     headers={"Authorization": f"token {portal.hub.token}"})
    assert r.status_code == 403 and r.json()["status"] == 403


def test_leader_tops_up_own_group_and_it_is_audited(portal):
    for leader, group in (("carol", "lab-vision"), ("ivy", "course-ml101")):
        before = portal.budget(group)
        r = portal.call(leader, "POST", f"api/budgets/{before['id']}/top-up", json={"amount": 2.5})
        assert r.status_code == 200, r.text
        assert r.json()["budget"]["amount"] == pytest.approx(before["amount"] + 2.5)
        log = portal.call(leader, "GET", "api/audit").json()["entries"]
        assert {e["group"] for e in log} == {group}
        top = log[0]
        assert (top["actor"], top["action"], top["budget_id"]) == (leader, "top_up", before["id"])
        assert top["before"]["amount"] == pytest.approx(before["amount"])
        assert top["after"]["amount"] == pytest.approx(before["amount"] + 2.5)


def test_admin_sets_creates_and_freezes(portal):
    b = portal.budget("project-llm")
    r = portal.call("admin", "PATCH", f"api/budgets/{b['id']}", json={"amount": 77})
    assert r.status_code == 200 and r.json()["budget"]["amount"] == 77
    r = portal.call("admin", "POST", "api/groups/project-llm/budgets",
                    json={"resource_class": "aws", "model": "trn1", "amount": 3, "unit": "credits"})
    assert r.status_code == 200 and r.json()["change"]["action"] == "create"
    assert r.json()["budget"]["unit"] == "credits"
    for frozen in (True, False):
        r = portal.call("admin", "POST", "api/groups/project-llm/freeze", json={"frozen": frozen})
        assert r.status_code == 200
        assert portal.call("admin", "GET", "api/groups/project-llm").json()["frozen"] is frozen
    actions = [e["action"] for e in portal.call("admin", "GET", "api/audit").json()["entries"][:4]]
    assert actions == ["thaw", "freeze", "create", "set"]


BAD_INPUT = [
    ("top-up:lab-vision", "POST", {"amount": -1}, "amount", "more than 0"),
    ("top-up:lab-vision", "POST", {"amount": 0}, "amount", "more than 0"),
    ("top-up:lab-vision", "POST", {"amount": "5"}, "amount", "must be a finite number"),
    ("top-up:lab-vision", "POST", {"amount": 1e9}, "amount", "at most 1e+06"),
    ("top-up:lab-vision", "POST", {}, "amount", "amount is required"),
    ("budget:lab-vision", "PATCH", {"amount": -3}, "amount", "at least 0"),
    ("budget:lab-vision", "PATCH", {"colour": "red"}, "colour", "unknown field"),
    ("budget:lab-vision", "PATCH", {"frozen": "yes"}, "frozen", "true or false"),
    ("api/groups/lab-vision/budgets", "POST", {"resource_class": "aws", "amount": 1, "unit": "min"},
     "unit", "one of ['hours', 'credits']"),
    ("api/groups/lab-vision/budgets", "POST", {"amount": 1}, "resource_class", "required"),
    ("api/groups/lab-vision/budgets", "POST",
     {"resource_class": "aws", "amount": 1, "period": "term"}, "starts_at", "needs starts_at"),
    ("api/groups/lab-vision/budgets", "POST",
     {"resource_class": "aws", "amount": 1, "starts_at": "soon"}, "starts_at", "YYYY-MM-DD"),
    ("api/groups/lab-vision/freeze", "POST", {"frozen": 1}, "frozen", "true or false"),
    ("api/usage?bucket=year", "GET", None, "bucket", "one of"),
    ("api/usage?since=yesterday", "GET", None, "since", "YYYY-MM-DD"),
    ("api/usage?since=2026-02-01&until=2026-01-01", "GET", None, "until", "after since"),
]


@pytest.mark.parametrize("path, method, body, field, text", BAD_INPUT,
                         ids=[f"{p.split('?')[0]}-{f}-{i}" for i, (p, _, _, f, _) in
                              enumerate(BAD_INPUT)])
def test_bad_input_is_400_naming_the_field(portal, path, method, body, field, text):
    r = portal.call("admin", method, _resolve(portal, path), json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["status"] == 400 and err["field"] == field and text in err["message"], err


def test_amount_below_used_and_reserved_is_refused_naming_the_limit(portal, acct):
    b = portal.budget("lab-vision", "enterprise")
    rid = acct.admit(username="dave", group="lab-vision", resource_class="enterprise",
                     model="h100", count=1, hours=4)
    try:
        r = portal.call("admin", "PATCH", f"api/budgets/{b['id']}", json={"amount": 1})
        assert r.status_code == 400
        assert r.json()["field"] == "amount" and "at least 4" in r.json()["message"]
    finally:
        acct.release(rid, "test over")


def test_csv_import_all_or_nothing(portal):
    before = portal.budget("course-ml101", "aws")
    bad = ("group,resource_class,amount\ncourse-ml101,aws,33\nlab-vision,aws,-1\n"
           "lab-vision,enterprise,lots\n")
    r = portal.call("admin", "POST", "api/budgets/import", data=bad,
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    assert [(e["line"], e["reason"].split(",")[0]) for e in r.json()["errors"]] == [
        (3, "amount must be at least 0"), (4, "amount must be a number"),
    ]
    assert portal.budget("course-ml101", "aws") == before
    r = portal.call("admin", "POST", "api/budgets/import",
                    data="group,resource_class,amount\ncourse-ml101,aws,33\n")
    assert r.status_code == 200 and r.json()["imported"] == 1
    assert portal.budget("course-ml101", "aws")["amount"] == 33


def test_usage_and_servers_by_role(portal, acct):
    now = acct._now()
    for user, group, model in (("alice", "course-ml101", "rtx4090"),
                               ("bob", "course-ml101", "rtx3090"),
                               ("carol", "lab-vision", "rtx4090")):
        rid = acct.admit(username=user, group=group, resource_class="community", model=model,
                         count=1, hours=1)
        acct.mark_running(rid, now - timedelta(minutes=30))
        acct.release(rid, "stopped", now=now)
    running = acct.admit(username="dave", group="lab-vision", resource_class="community",
                         model="rtx4090", count=2, hours=1, price_per_hour=0.35)
    acct.mark_running(running, now - timedelta(minutes=20))
    acct.meter(now=now)
    try:
        users = lambda who, q="": {r["username"] for r in  # noqa: E731
                                   portal.call(who, "GET", "api/usage" + q).json()["rows"]}
        assert {"alice", "bob", "carol", "dave"} <= users("admin")
        assert users("alice") == {"alice"}
        assert users("alice", "?group=course-ml101") == {"alice"}
        assert users("ivy", "?group=course-ml101") >= {"alice", "bob"}
        assert users("carol", "?group=lab-vision") >= {"carol", "dave"}
        csv_text = portal.call("alice", "GET", "api/usage.csv").text
        assert csv_text.splitlines()[0].startswith("period,group,resource_class,model,username")
        assert all(",alice," in line for line in csv_text.splitlines()[1:])
        servers = lambda who: {s["username"] for s in  # noqa: E731
                               portal.call(who, "GET", "api/servers").json()["servers"]}
        assert "dave" in servers("admin") and "dave" in servers("carol")
        assert servers("alice") == set() and servers("ivy") == set()
        (s,) = [s for s in portal.call("admin", "GET", "api/servers").json()["servers"]
                if s["reservation_id"] == running]
        assert s["count"] == 2 and s["amount_charged"] > 0 and s["cost_so_far"] > 0
        page = portal.call("admin", "GET", "usage?bucket=day")
        assert page.status_code == 200 and page.text.count('class="vega-chart"') == 6
    finally:
        acct.release(running, "test over")


def _cli(portal: Portal, user: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYBRIDHUB_PORTAL_URL": portal.url,
           "JUPYTERHUB_API_TOKEN": portal.token(user)}
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_cli_against_the_running_service(portal, tmp_path):
    out = _cli(portal, "admin", "list")
    assert out.returncode == 0 and "lab-vision" in out.stdout and "course-ml101" in out.stdout
    out = _cli(portal, "admin", "set", "project-llm", "enterprise", "61")
    assert out.returncode == 0, out.stderr
    assert portal.budget("project-llm", "enterprise")["amount"] == 61
    out = _cli(portal, "carol", "top-up", "lab-vision", "aws", "1.5")
    assert out.returncode == 0 and "topped up lab-vision aws" in out.stdout, out.stderr
    out = _cli(portal, "carol", "top-up", "course-ml101", "aws", "1")
    assert out.returncode == 1 and "HTTP 403" in out.stderr
    out = _cli(portal, "admin", "top-up", "lab-vision", "aws", "-2")
    assert out.returncode == 1 and "(field: amount)" in out.stderr
    assert _cli(portal, "admin", "freeze", "project-llm").returncode == 0
    assert portal.call("admin", "GET", "api/groups/project-llm").json()["frozen"] is True
    assert _cli(portal, "admin", "freeze", "project-llm", "--thaw").returncode == 0
    target = tmp_path / "usage.csv"
    out = _cli(portal, "admin", "export", "--bucket", "month", "-o", str(target))
    assert out.returncode == 0 and target.read_text().startswith("period,group")
    for command, header in (("export", "period,group"), ("demand", "day,resource_class")):
        out = _cli(portal, "admin", command, "-o", "-", cwd=tmp_path)  # '-': standard output
        assert out.returncode == 0 and out.stdout.startswith(header), out.stderr
        assert not (tmp_path / "-").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("group,resource_class,amount\nlab-vision,aws,x\n")
    out = _cli(portal, "admin", "import", str(bad))
    assert out.returncode == 1 and "line 2: amount must be a number" in out.stderr
    good = tmp_path / "good.csv"
    good.write_text("group,resource_class,amount\nlab-vision,aws,60\n")
    out = _cli(portal, "admin", "import", str(good))
    assert out.returncode == 0 and "imported 1" in out.stdout
    assert portal.token("admin") not in out.stdout + out.stderr


def test_oversized_bodies_and_lines_are_refused_naming_the_limit(portal):
    """Bounded input: 413 over 16 KiB of JSON or 2 MiB of CSV, 400 for a CSV line over 1,000
    characters; the message names the limit, quotes nothing back, and nothing changes."""
    before = portal.budget("course-ml101", "aws")
    huge = {"amount": 2.5, "note": "x" * (20 * 1024)}
    r = portal.call("admin", "POST", f"api/budgets/{before['id']}/top-up", json=huge)
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body" and "the limit is 16384 bytes" in r.json()["message"]
    assert "xxxx" not in r.text and len(r.content) < 500
    long_line = "group,resource_class,amount\ncourse-ml101,aws,7" + " " * 2000 + "\n"
    r = portal.call("admin", "POST", "api/budgets/import", data=long_line,
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [{"line": 2, "reason": "line is 2018 characters long; the limit is 1000"}]
    flood = "group,resource_class,amount\n" + "course-ml101,aws,7\n" * 120_000
    r = portal.call("admin", "POST", "api/budgets/import", data=flood, headers={"Content-Type": "text/csv"})
    assert r.status_code == 413 and "the limit is 2097152 bytes" in r.json()["message"], r.text[:300]
    assert portal.budget("course-ml101", "aws") == before
