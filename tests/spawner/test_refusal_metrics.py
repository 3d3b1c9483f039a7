"""Refusals the JupyterHub 6 way, through a real hub: each kind keeps its status and text, is logged as
one line (JupyterHub's SpawnException path) and is counted on ``/hub/metrics`` with its reason, in the
hub's own spawn metric and in ``hybridhub_refusals_total``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hybridhub.accounting.courses import CourseSchedule
from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import utcnow
from hybridhub.accounting.trust import TrustPolicy
from hybridhub.catalog import load_catalog
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.metrics import hub_metrics, refused, sample
from tests.fixtures.theta import hub_theta_config, theta_api  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("hub_prereqs")

RTX4090 = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1}
RTX5090 = {"class": "community", "model": "rtx5090", "hours": 1}
A100 = {"class": "enterprise", "model": "a100", "count": 1, "hours": 1}


@pytest.fixture(scope="module")
def hub(hub_prereqs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("refusalhub")
    h = Hub(workdir, env={"HYBRIDHUB_DEMO_INVENTORY": "1", "HYBRIDHUB_COURSE_SCHEDULER": "0"}).start()
    yield h
    h.stop()
    _stop_user_processes(workdir)


def test_every_kind_of_refusal_is_counted_with_its_reason(hub):
    db = Database(hub.db_url)
    refused(hub, "bob", {**RTX4090, "model": "nope", "group": "course-ml101"}, 400, "Invalid option", "options")
    refused(hub, "bob", {**RTX4090, "group": "course-ml101", "pad": "x" * 20000}, 413, "bytes is over", "options")
    aws = {"class": "aws", "model": "trn1.32xlarge", "count": 1, "hours": 1, "group": "course-ml101"}
    refused(hub, "bob", aws, 403, "left", "budget")
    assert hub.api("POST", "/users/nadia").status_code in (201, 409)
    assert hub.api("POST", "/groups/idp-imported", json={"users": ["nadia"]}).status_code == 201
    refused(hub, "nadia", {**RTX4090, "group": "idp-imported"}, 403, "has no kind yet", "group")
    TrustPolicy(db).set_policy("lab-vision", barred_untrusted=True)
    try:
        refused(hub, "carol", {**RTX4090, "group": "lab-vision"}, 403, "barred from untrusted", "trust")
    finally:
        TrustPolicy(db).set_policy("lab-vision", barred_untrusted=False)
    sessions = CourseSchedule(Accounting(db), load_catalog())
    now = utcnow()
    info = sessions.create(group="course-ml101", resource_class="community", model="rtx3090", count=1,
                           starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(hours=1), title="Lab 9")
    sessions.begin(info.id, ["bob"], {"instructors": []})
    try:
        refused(hub, "bob", {**A100, "group": "course-ml101"}, 403, "Lab 9", "course")
    finally:
        sessions.end_now(info.id)
    # capacity: the demo's two RTX 5090s are taken by alice, so the backend refuses carol with 429
    assert hub.spawn("alice", {**RTX5090, "count": 2, "group": "course-ml101"}).status_code in (201, 202)
    hub.wait_ready("alice")
    refused(hub, "carol", {**RTX5090, "count": 1, "group": "lab-vision"}, 429, "No capacity", "capacity")
    text = hub_metrics(hub)
    assert sample(text, "hybridhub_admissions_total", outcome="admitted", offering="community/rtx5090") >= 1
    assert sample(text, "hybridhub_running_accelerators", offering="community/rtx5090") == 2
    assert sample(text, "hybridhub_spawn_duration_seconds_count", backend="local", outcome="served") >= 1
    assert sample(text, "hybridhub_spawn_duration_seconds_count", backend="local", outcome="refused") >= 1
    assert hub.server_model("alice")["user_options"]["profile"] == "community/rtx5090"  # the admin page's column
    hub.stop_server("alice")
    assert sample(hub_metrics(hub), "hybridhub_running_accelerators", offering="community/rtx5090") == 0
    # a restart without options reuses the saved ones, "profile" included (display only, never refused)
    assert hub.spawn("alice", None).status_code in (201, 202)
    assert hub.wait_ready("alice")["user_options"]["profile"] == "community/rtx5090"
    hub.stop_server("alice")
    assert "alice" not in "".join(line for line in hub_metrics(hub).splitlines() if line.startswith("hybridhub_"))
    assert "Traceback" not in hub.log()
    db.dispose()


def test_a_group_with_a_kind_but_no_budget_for_the_class_is_counted_as_no_budget(hub):
    assert hub.api("POST", "/users/nadia").status_code in (201, 409)
    assert hub.api("POST", "/groups/lab-unfunded", json={"users": ["nadia"]}).status_code == 201
    assert hub.api("PUT", "/groups/lab-unfunded/properties", json={"kind": "lab"}).status_code == 200
    refused(hub, "nadia", {**RTX4090, "group": "lab-unfunded"}, 403, "has no budget for community", "no_budget")


def test_a_quote_above_the_price_ceiling_is_counted_as_price(theta_api, hub_factory):  # noqa: F811
    hub = hub_factory(extra_config=hub_theta_config(theta_api, cap=0.20))  # Theta quotes $0.29/h
    r = refused(hub, "alice", {**RTX4090, "group": "course-ml101"}, 409, "$0.29/h", "price")
    assert "$0.20/h" in r.json()["message"] and not theta_api.nodes
