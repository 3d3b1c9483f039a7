"""Quota through a real hub: remaining in the picker, refusals on REST and form, metering to a stop, restart."""

import time

import pytest

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login

OPTS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def accounting(hub) -> Accounting:
    return Accounting(Database(hub.db_url))


def test_over_quota_rest_launch_is_403_with_asked_left_and_reset(demo_hub):
    # course budget for aws is 10 h/month; a trn1.32xlarge hour weighs 16
    body = {"class": "aws", "model": "trn1.32xlarge", "count": 1, "hours": 1, "group": "course-ml101"}
    r = demo_hub.spawn("bob", body)
    assert r.status_code == 403, r.text
    msg = r.json()["message"]
    assert "asked 16" in msg and "10" in msg and "left" in msg and "resets" in msg
    assert demo_hub.server_model("bob") is None


def test_admitted_launch_reserves_and_stop_releases_the_rest(demo_hub):
    acct = accounting(demo_hub)
    before = acct.remaining("course-ml101", "community", "rtx3090").amount_left
    r = demo_hub.spawn("bob", {**OPTS, "model": "rtx3090", "count": 2, "hours": 2})
    assert r.status_code in (201, 202), r.text
    demo_hub.wait_ready("bob")
    during = acct.remaining("course-ml101", "community", "rtx3090").amount_left
    assert during == pytest.approx(before - 2 * 2 * 0.5)  # 2 GPUs x 2 h x weight 0.5, reserved up front
    demo_hub.stop_server("bob")
    after = acct.remaining("course-ml101", "community", "rtx3090").amount_left
    assert before - 0.05 < after <= before  # only the seconds actually used are charged
    assert not acct.open_reservations("bob")


@pytest.fixture
def metered_hub(hub_factory):
    return hub_factory(
        env={"HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_GRACE_SECONDS": "4"},
        extra_config="c.HybridSpawner.min_launch_hours = 0.001\n"
                     "c.HybridSpawner.hours_resolution = 0.001\n",
    )


def test_server_is_stopped_with_warning_when_its_reservation_runs_out(metered_hub):
    hub = metered_hub
    r = hub.spawn("carol", {**OPTS, "hours": 0.003, "group": "lab-vision"})  # 10.8 s
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("carol")
    acct = accounting(hub)
    assert acct.banners_for("carol") == []
    banners_seen: list[str] = []
    deadline = time.monotonic() + 60
    while hub.server_model("carol") is not None and time.monotonic() < deadline:
        banners_seen += acct.banners_for("carol")
        time.sleep(0.3)
    assert hub.server_model("carol") is None, "the meter did not stop the server"
    assert banners_seen, "no warning was shown before the stop"
    assert not acct.open_reservations("carol")
    used = acct.usage(group="lab-vision", username="carol")
    # the whole reservation and the grace after it ran out: no second was served for free
    assert used["amount"] >= 0.003 + 4 / 3600
    assert used["amount"] < 0.003 + 60 / 3600  # (the stop comes within seconds of the grace)


def test_restart_readopts_running_server_and_keeps_metering(hub_factory):
    hub = hub_factory()
    assert hub.spawn("dave", {**OPTS, "group": "lab-vision"}).status_code in (201, 202)
    hub.wait_ready("dave")
    [res] = accounting(hub).open_reservations("dave")
    hub.restart()
    model = hub.wait_ready("dave")
    assert model["user_options"]["group"] == "lab-vision"
    [after] = accounting(hub).open_reservations("dave")
    assert after.id == res.id  # the same reservation, not a second admission
    hub.stop_server("dave")
    assert not accounting(hub).open_reservations("dave")


@pytest.mark.browser
def test_over_quota_form_launch_shows_the_reason_in_the_picker(demo_hub, page):
    login(page, demo_hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{demo_hub.url}/hub/spawn")
    page.get_by_label("Trainium (16 chips)", exact=True).check()
    page.get_by_label("Requested hours").fill("2")
    page.get_by_role("button", name="Start").click()
    error = page.locator(".spawn-error-msg")
    error.wait_for()
    assert "asked 32" in error.inner_text() and "left" in error.inner_text()
    assert demo_hub.server_model("alice") is None


def test_a_group_without_a_kind_cannot_be_charged(demo_hub):
    """README: a group needs a kind (lab, project or course) before its members can launch, even
    with a budget in the database (an identity provider's group an admin has not finished setting up)."""
    assert demo_hub.api("POST", "/users/nadia").status_code in (201, 409)
    assert demo_hub.api("POST", "/groups/idp-imported", json={"users": ["nadia"]}).status_code == 201
    acct = accounting(demo_hub)
    acct.sync_groups({"idp-imported": ["nadia"]})
    acct.ensure_budget("idp-imported", "community", 10.0)
    r = demo_hub.spawn("nadia", {**OPTS, "group": "idp-imported"})
    assert r.status_code == 403, r.text
    assert "has no kind" in r.json()["message"] and "'kind' property" in r.json()["message"]
    assert demo_hub.server_model("nadia") is None
    assert not acct.open_reservations("nadia")


def test_the_picker_and_the_log_say_the_local_backend_is_a_shared_machine(hub_factory):
    """Where the local backend runs every server as the hub's own Unix user (a non-root hub, or a root hub
    told so), a user is told before launching; a root hub by default keeps users apart and says nothing."""
    shared = hub_factory(extra_config="c.LocalBackend.separate_users = False")
    page = shared.signed_in("alice").get(f"{shared.url}/hub/spawn", timeout=60)
    assert page.status_code == 200
    assert "shared machine: other users can read your files" in page.text
    assert "users can read each other's files" in shared.log()
