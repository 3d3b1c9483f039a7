"""A server that cannot start: the user is told what failed and what to do; nothing stays reserved; it is recorded."""

import time

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


#: A server process that starts, then dies before it ever answers (as jupyter-server does when a root
#: hub starts it without --allow-root).
DIES = "import sys, time; time.sleep(1); print('Running as root is not recommended', file=sys.stderr); sys.exit(3)"


@pytest.fixture(scope="module")
def dying_hub(hub_prereqs, hub_db_url, tmp_path_factory):
    """A demo hub whose servers exit while starting, with a short metering interval (minimum charge 5 s)."""
    import sys

    from tests.fixtures.hub import Hub, _stop_user_processes

    hub = Hub(tmp_path_factory.mktemp("hub"), db_url=hub_db_url,
              extra_config=f"c.LocalBackend.cmd = [{sys.executable!r}, '-c', {DIES!r}]\n"
                           "c.Spawner.http_timeout = 30\n").start()
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


def test_a_server_that_dies_while_starting_is_reported_at_once_and_costs_nothing(dying_hub):
    acct = Accounting(Database(dying_hub.db_url))
    before = acct.remaining("lab-vision", "community", "rtx4090").amount_left
    started = time.monotonic()
    r = dying_hub.spawn("carol", {**OPTS, "group": "lab-vision"})
    waited = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert waited < 15, f"reported after {waited:.1f} s, not within seconds"
    message = r.json()["message"]
    assert "exited while starting (status 3)" in message and "Nothing was charged" in message, message
    assert acct.remaining("lab-vision", "community", "rtx4090").amount_left == before  # no minimum charge
    assert not acct.open_reservations("carol")
    (record,) = SessionLog(Database(dying_hub.db_url)).sessions("carol")
    assert record.end_reason == END_FAILED_START and "exited while starting" in record.end_detail
