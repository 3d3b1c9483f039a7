"""A server that cannot start: the user is told what failed and what to do; nothing stays reserved; it is recorded."""

import pytest

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import END_FAILED_START, SessionLog
from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login

MISSING = "/nonexistent/bin/jupyterhub-singleuser"
OPTS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


@pytest.fixture(scope="module")
def broken_hub(hub_prereqs, hub_db_url, tmp_path_factory):
    """A demo hub whose local backend points at an executable that does not exist."""
    from tests.fixtures.hub import Hub, _stop_user_processes

    hub = Hub(tmp_path_factory.mktemp("hub"), db_url=hub_db_url,
              extra_config=f"c.LocalBackend.cmd = [{MISSING!r}]").start()
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


def test_rest_start_failure_names_the_cause_releases_and_is_recorded(broken_hub):
    acct = Accounting(Database(broken_hub.db_url))
    before = acct.remaining("course-ml101", "community", "rtx4090").amount_left
    r = broken_hub.spawn("bob", OPTS)
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert "could not be started on the local backend" in message and MISSING in message, message
    assert "reservation was released" in message and "Unhandled" not in message
    assert acct.remaining("course-ml101", "community", "rtx4090").amount_left == before
    assert not acct.open_reservations("bob")
    (record,) = SessionLog(Database(broken_hub.db_url)).sessions("bob")
    assert record.end_reason == END_FAILED_START and MISSING in record.end_detail
    assert broken_hub.server_model("bob") is None


def test_form_start_failure_is_shown_on_the_page(broken_hub, page):
    login(page, broken_hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{broken_hub.url}/hub/spawn")
    page.get_by_label("RTX 4090", exact=True).check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_selector("text=could not be started", timeout=60_000)
    body = page.inner_text("body")
    assert MISSING in body and "Unhandled error" not in body
