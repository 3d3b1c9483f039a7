"""Trust, provenance and verification through a real hub on the local backend.

One hub for the module (SQLite; the database behaviour itself is covered on SQLite and
PostgreSQL in test_provenance.py).  Trusted hardware is configured with a *broad*
``server_token_scopes`` and passes AWS/hybridhub secrets through ``env_keep``, so the
tests show that untrusted hardware gets neither.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
import requests

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import END_BY_SERVICE, END_QUOTA, SessionLog
from hybridhub.accounting.trust import TrustPolicy
from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.env import docs_artifact
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.trust import deterministic_notebook, probe, user_home, verify

pytestmark = pytest.mark.usefixtures("hub_prereqs")

UNTRUSTED = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
TRUSTED = {"class": "enterprise", "model": "a100", "count": 1, "hours": 1, "group": "course-ml101"}
SECRET = "aws-secret-for-the-test"
EXTRA = """
c.JupyterHub.allow_named_servers = True
c.HybridSpawner.min_launch_hours = 0.001  # the quota stop below runs out in 3.6 s
c.HybridSpawner.hours_resolution = 0.001
c.Spawner.poll_interval = 1
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "servers!user",
                                 "read:users!user", "list:users"]
c.Spawner.env_keep = ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL",
                      "AWS_SECRET_ACCESS_KEY", "HYBRIDHUB_TEST_DB_PASSWORD"]
"""


@pytest.fixture(scope="module")
def hub(hub_prereqs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trusthub")
    h = Hub(workdir, extra_config=EXTRA, env={
        "AWS_SECRET_ACCESS_KEY": SECRET, "HYBRIDHUB_TEST_DB_PASSWORD": "db-secret",
        "HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_GRACE_SECONDS": "0",
    }).start()
    yield h
    h.stop()
    _stop_user_processes(workdir)


@pytest.fixture(scope="module")
def db(hub):
    database = Database(hub.db_url)
    yield database
    database.dispose()


def hub_call(hub, token: str, method: str, path: str, **kw) -> int:
    return requests.request(method, f"{hub.api_url}{path}", headers={"Authorization": f"token {token}"},
                            timeout=30, **kw).status_code


# --------------------------------------------------------------------------- the bar


def test_barred_group_gets_403_on_rest_naming_the_reason(hub, db):
    TrustPolicy(db).set_policy("lab-vision", barred_untrusted=True)
    try:
        r = hub.spawn("carol", {**UNTRUSTED, "group": "lab-vision"})
        assert r.status_code == 403, r.text
        msg = r.json()["message"]
        assert "'lab-vision' is barred from untrusted hardware by an administrator" in msg
        assert "community/rtx4090" in msg and "volunteers outside the university" in msg
        assert hub.server_model("carol") is None
        assert not Accounting(db).open_reservations("carol")  # refused before admission
        # the bar is the charged group's: dave may charge community hardware to project-llm
        r = hub.spawn("dave", {**UNTRUSTED, "group": "project-llm"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("dave")
        hub.stop_server("dave")
        # and a trusted offering is fine for the barred group
        assert hub.spawn("carol", {**TRUSTED, "group": "lab-vision"}).status_code in (201, 202)
        hub.wait_ready("carol")
        hub.stop_server("carol")
    finally:
        TrustPolicy(db).set_policy("lab-vision", barred_untrusted=False)


def login(hub, user: str) -> tuple[requests.Session, str]:
    s = requests.Session()
    form = s.get(f"{hub.url}/hub/login", timeout=30).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
    r = s.post(f"{hub.url}/hub/login", data={"username": user, "password": DEMO_USER_PASSWORD, "_xsrf": xsrf},
               timeout=30)
    assert r.status_code == 200, r.text
    # the hub's own _xsrf cookie (a running server, visited after login, sets one for its path)
    hub_xsrf = [c.value for c in s.cookies if c.name == "_xsrf" and not c.path.startswith("/user/")]
    return s, (hub_xsrf[0] if hub_xsrf else xsrf)


def test_barred_group_is_refused_on_the_form_and_the_picker_says_so(hub, db):
    TrustPolicy(db).set_policy("lab-vision", barred_untrusted=True)
    try:
        s, xsrf = login(hub, "carol")
        page = s.get(f"{hub.url}/hub/spawn", timeout=60).text
        assert "Untrusted: run by volunteers outside the university" in page
        assert "Cannot be charged to\n" in page or "Cannot be charged to" in page
        assert re.search(r'value="community/rtx4090"[^>]*\s+disabled', page, re.S)  # carol's only group
        assert "Trusted: run by the university or its cloud account" in page
        r = s.post(f"{hub.url}/hub/spawn", timeout=60, data={
            "offering": "community/rtx4090", "count:community/rtx4090": "1", "hours": "1",
            "group": "lab-vision", "_xsrf": xsrf,
        })
        assert "barred from untrusted hardware by an administrator" in r.text
        assert hub.server_model("carol") is None
    finally:
        TrustPolicy(db).set_policy("lab-vision", barred_untrusted=False)


# --------------------------------------------------------------------------- what untrusted hardware gets


def test_untrusted_server_gets_only_its_own_token_no_secrets_no_confidential_folder(hub, db):
    TrustPolicy(db).set_policy("course-ml101", confidential_dirs=["secret"])
    user_home(hub, "alice", secret="secret")
    try:
        assert hub.spawn("alice", UNTRUSTED).status_code in (201, 202)
        untrusted = hub.wait_ready("alice")
        assert hub.spawn("alice", TRUSTED, server="trusted").status_code in (201, 202)
        trusted = hub.wait_ready("alice", "trusted")

        seen = probe(hub, untrusted)
        assert seen["secret"] == [] and seen["public"] == "shared"  # same home, folder left out
        assert seen["not_mounted"] == "secret (confidential to course-ml101)"
        assert seen["trust"] == "untrusted"
        assert seen["env"] == ["HYBRIDHUB_CLASS", "HYBRIDHUB_COUNT", "HYBRIDHUB_GROUP", "HYBRIDHUB_MODEL",
                               "HYBRIDHUB_NOT_MOUNTED", "HYBRIDHUB_PORTAL_URL", "HYBRIDHUB_TRUST",
                               "HYBRIDHUB_UTILISATION_SOURCE"]  # how the Lab samples (no secret)
        token = seen["token"]
        assert hub_call(hub, token, "GET", "/user") == 200  # it is a valid token ...
        assert hub_call(hub, token, "GET", "/users") == 403  # ... that cannot list users
        assert hub_call(hub, token, "POST", "/users/alice/servers/another", json=TRUSTED) == 403
        assert hub_call(hub, token, "POST", "/users/bob/server", json=UNTRUSTED) == 403
        contents = requests.get(hub.url + untrusted["url"] + "api/contents/secret/patients.csv",
                                headers={"Authorization": f"token {hub.token}"}, timeout=30)
        assert contents.status_code == 404

        # the same user on trusted hardware: everything there, and the broad token as configured
        seen = probe(hub, trusted)
        assert seen["secret"] == ["patients.csv"]
        assert "AWS_SECRET_ACCESS_KEY" in seen["env"] and seen["not_mounted"] is None
        assert hub_call(hub, seen["token"], "GET", "/users/alice") == 200
        # allowed to start servers: the bad option is what stops it, not the scope
        assert hub_call(hub, seen["token"], "POST", "/users/alice/servers/x", json={"class": "nope"}) == 400
    finally:
        TrustPolicy(db).set_policy("course-ml101", confidential_dirs=[])
        for server in ("", "trusted"):
            if hub.server_model("alice", server):
                hub.stop_server("alice", server)


def test_spawn_progress_names_the_folders_left_out(hub, db):
    TrustPolicy(db).set_policy("course-ml101", confidential_dirs=["secret"])
    (user_home(hub, "bob") / "secret").mkdir(exist_ok=True)
    try:
        notice = "Not mounted on this untrusted hardware: ~/secret (confidential to course-ml101)"
        messages: list[str] = []
        with ThreadPoolExecutor(1) as pool:  # read the event stream while the spawn is pending
            spawning = pool.submit(hub.spawn, "bob", UNTRUSTED)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("ready" in m for m in messages):
                r = requests.get(f"{hub.api_url}/users/bob/server/progress", stream=True, timeout=60,
                                 headers={"Authorization": f"token {hub.token}"})
                if r.status_code != 200:
                    time.sleep(0.05)
                    continue
                messages += [json.loads(line[5:]).get("message", "") for line in r.iter_lines(decode_unicode=True)
                             if line.startswith("data:")]
            assert spawning.result().status_code in (201, 202)
        assert any(m.startswith(notice) for m in messages), messages
        hub.wait_ready("bob")
    finally:
        TrustPolicy(db).set_policy("course-ml101", confidential_dirs=[])
        if hub.server_model("bob"):
            hub.stop_server("bob")


# --------------------------------------------------------------------------- provenance


def test_provenance_after_a_normal_stop_and_a_quota_stop(hub, db):
    log = SessionLog(db)
    assert hub.spawn("ivy", {**UNTRUSTED, "model": "rtx3090"}).status_code in (201, 202)
    hub.wait_ready("ivy")
    hub.stop_server("ivy")  # through the REST API, as the test-admin service
    [rec] = log.sessions("ivy")
    assert (rec.end_reason, rec.group, rec.offering, rec.accelerator, rec.trust) == (
        END_BY_SERVICE, "course-ml101", "community/rtx3090", "RTX 3090", "untrusted")
    assert rec.end_detail == "stopped by service test-admin"
    assert rec.host and rec.image == "local-process" and rec.details.get("pid")
    assert rec.reservation_id and rec.started_at < rec.stopped_at

    # the meter stops a server whose reservation ran out (0.001 h = 3.6 s): "quota"
    assert hub.spawn("ivy", {**UNTRUSTED, "hours": 0.001}).status_code in (201, 202)
    hub.wait_ready("ivy")
    hub.wait_stopped("ivy", timeout=60)
    rec = log.sessions("ivy")[0]
    assert rec.end_reason == END_QUOTA and "ran out" in rec.end_detail
    assert rec.offering == "community/rtx4090" and rec.stopped_at is not None


# --------------------------------------------------------------------------- verification


@pytest.fixture(scope="module")
def notebooks(hub) -> dict[str, str]:
    h = user_home(hub, "alice")
    (h / "results").mkdir(exist_ok=True)
    nb = deterministic_notebook()
    nbformat.write(nb, h / "results" / "det.ipynb")
    tampered = nbformat.from_dict(json.loads(json.dumps(nb)))
    tampered.cells[2].outputs[0]["data"]["text/plain"] = "0.042"  # a "better" mean
    nbformat.write(tampered, h / "results" / "tampered.ipynb")
    return {"ok": "results/det.ipynb", "tampered": "results/tampered.ipynb"}


def test_verification_passes_for_a_deterministic_notebook(hub, db, notebooks):
    checked = SessionLog(db).open(
        username="alice", server_name="", group="course-ml101", resource_class="community",
        offering="community/rtx4090", accelerator="RTX 4090", count=1, trust="untrusted",
        backend="local", host="volunteer-7",
    )
    t0 = time.monotonic()
    v = verify(hub, db, notebooks["ok"], session_id=checked)
    assert v.state == "passed", (v.message, v.report)
    report = v.report
    assert report["verdict"] == "passed" and report["summary"]["compared"] == 4
    assert report["checked_session"]["host"] == "volunteer-7"
    run = SessionLog(db).get(v.run_session_id)
    assert run.server_name == v.server_name and run.offering == "enterprise/a100" and run.trust == "trusted"
    assert run.end_reason == END_BY_SERVICE and run.stopped_at is not None  # the verifier stops it when done
    assert run.end_detail.startswith("stopped by service "), run.end_detail
    assert report["run_session"]["id"] == run.id and report["seconds"] < time.monotonic() - t0 + 1
    # charged like any launch: a closed reservation on the group's enterprise budget
    assert run.reservation_id is not None
    assert Accounting(db).reservation(run.reservation_id).group == "course-ml101"
    assert (user_home(hub, "alice") / "hybridhub-verify" / str(v.id) / "det.ipynb").exists()
    assert hub.server_model("alice", v.server_name) is None


def test_verification_reports_the_exact_tampered_cell(hub, db, notebooks, tmp_path):
    v = verify(hub, db, notebooks["tampered"])
    assert v.state == "failed" and v.message == "cell(s) 2 differ from the saved outputs"
    report = v.report
    assert report["summary"]["differing"] == [2]
    cell = report["cells"][2]
    assert cell["status"] == "differs" and cell["source"] == "round(statistics.mean(xs), 12)"
    [diff] = cell["differences"]
    assert diff["kind"] == "number" and diff["expected"] == "0.042" and diff["got"] != "0.042"
    assert [c["status"] for c in report["cells"]] == ["skipped", "match", "differs", "match", "match"]
    docs_artifact("verification-report-example.json", tmp_path).write_text(json.dumps(report, indent=2) + "\n")


def test_verification_of_a_missing_notebook_is_an_error_and_stops_the_server(hub, db):
    v = verify(hub, db, "nowhere/missing.ipynb")
    assert v.state == "error" and "cannot read nowhere/missing.ipynb" in v.message
    assert hub.server_model("alice", v.server_name) is None


# --------------------------------------------------------------------------- the portal pages


class Portal:
    """The portal service behind the module's hub, called with per-user tokens."""

    def __init__(self, hub):
        self.hub, self.url, self.tokens = hub, f"{hub.url}/services/hybridhub-portal/", {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "api/openapi.json", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("portal did not answer")

    def call(self, user: str, method: str, path: str, **kw) -> requests.Response:
        if user not in self.tokens:
            self.tokens[user] = self.hub.user_token(user)
        headers = {"Authorization": f"token {self.tokens[user]}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def portal(hub):
    return Portal(hub)


def test_portal_sessions_are_per_user_admins_see_all_and_csv(portal, db):
    log = SessionLog(db)
    for user in ("ivy", "dave"):
        log.open(username=user, server_name="", group="course-ml101", resource_class="aws",
                 offering="aws/trn1.2xlarge", accelerator="Trainium (1 chip)", count=1, trust="trusted",
                 backend="ec2", instance_id="i-0123456789abcdef0", instance_type="trn1.2xlarge")
    mine = portal.call("ivy", "GET", "api/sessions").json()["sessions"]
    assert mine and {s["username"] for s in mine} == {"ivy"}
    assert {"host", "gpu_uuids", "image_id", "end_reason", "trust"} <= set(mine[0])
    everyone = portal.call("admin", "GET", "api/sessions").json()["sessions"]
    assert {"ivy", "dave"} <= {s["username"] for s in everyone}
    assert portal.call("ivy", "GET", "api/sessions?user=dave").status_code == 403
    assert portal.call("ivy", "GET", f"api/sessions/{everyone[-1]['id']}").status_code in (200, 403)
    csv_text = portal.call("ivy", "GET", "api/sessions.csv").text
    assert csv_text.splitlines()[0].startswith("id,username,server_name,group")
    assert portal.call("ivy", "GET", "sessions", headers={"Accept": "text/html"}).status_code == 200
    doc = requests.get(portal.url + "api/openapi.json", timeout=10).json()
    paths = {"/api/sessions", "/api/sessions.csv", "/api/verifications", "/api/groups/{group}/trust"}
    assert paths <= set(doc["paths"])


def test_admin_bars_a_group_in_the_portal_and_the_spawner_enforces_it(portal, hub):
    r = portal.call("carol", "PUT", "api/groups/lab-vision/trust", json={"barred_untrusted": True})
    assert r.status_code == 403
    r = portal.call("admin", "PUT", "api/groups/lab-vision/trust",
                    json={"barred_untrusted": True, "confidential_dirs": ["scans", "../etc"]})
    assert r.status_code == 400 and r.json()["field"] == "confidential_dirs"
    r = portal.call("admin", "PUT", "api/groups/lab-vision/trust", json={"barred_untrusted": True})
    assert r.status_code == 200 and r.json()["barred_untrusted"] is True
    try:
        r = hub.spawn("carol", {**UNTRUSTED, "group": "lab-vision"})
        assert r.status_code == 403 and "barred from untrusted hardware" in r.json()["message"]
        audit = portal.call("admin", "GET", "api/audit?group=lab-vision").json()["entries"]
        assert audit[0]["action"] == "set trust policy" and audit[0]["actor"] == "admin"
    finally:
        portal.call("admin", "PUT", "api/groups/lab-vision/trust", json={"barred_untrusted": False})


def test_verify_from_the_portal(portal, hub, notebooks):
    r = portal.call("alice", "POST", "api/verifications", json={
        "notebook": notebooks["ok"], "offering": "community/rtx4090", "group": "course-ml101"})
    assert r.status_code == 400 and r.json()["field"] == "offering"  # untrusted: not a verification
    r = portal.call("alice", "POST", "api/verifications", json={
        "notebook": notebooks["tampered"], "offering": "enterprise/a100", "group": "course-ml101", "rel_tol": 1e-9})
    assert r.status_code == 202, r.text
    vid = r.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        v = portal.call("alice", "GET", f"api/verifications/{vid}").json()
        if v["state"] not in ("pending", "running"):
            break
        time.sleep(1)
    assert v["state"] == "failed" and v["report"]["summary"]["differing"] == [2], v
    page = portal.call("alice", "GET", f"verifications/{vid}", headers={"Accept": "text/html"}).text
    assert 'id="cell-2"' in page and "cell-differs" in page and "0.042" in page
    assert portal.call("bob", "GET", f"api/verifications/{vid}").status_code == 403
