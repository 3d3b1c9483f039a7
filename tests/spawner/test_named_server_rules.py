"""Each server of a user under its own rules, through a real hub on SQLite and PostgreSQL (issue #27).

A course session locks the student's session server, never their named servers; trust is each server's
own (an untrusted named server gets the clamped token and no confidential folder while a trusted one
beside it gets both); options changed with JupyterHub 6's ``PATCH /users/:u/servers/:s`` meet the lock,
the bar and the trust rules again at start; two servers of one user cannot together overspend their
group's budget when started at once; and the meter's own ``/metrics`` counts a real stop at zero and a
real threshold mail (aiosmtpd).  One metered hub (1 s ticks) per database serves the module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import requests

from hybridhub.accounting.courses import CourseSchedule
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import utcnow
from hybridhub.accounting.trust import TrustPolicy
from hybridhub.catalog import load_catalog
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.metrics import sample, scrape
from tests.fixtures.portal import accounting_on
from tests.fixtures.smtp import Inbox, smtp_server
from tests.fixtures.trust import probe, user_home

UNTRUSTED = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
TRUSTED = {"class": "enterprise", "model": "a100", "count": 1, "hours": 1, "group": "course-ml101"}
LEADER = "lead@example.org"
EXTRA = """
c.HybridSpawner.min_launch_hours = 0.001  # the stop at zero below runs out in 3.6 s
c.HybridSpawner.hours_resolution = 0.001
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "servers!user",
                                 "read:users!user"]
"""


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Inbox]:
    """The SMTP server the hub's meter mails group leaders through."""
    with smtp_server() as (inbox, port):
        inbox.port = port
        yield inbox


@pytest.fixture(scope="module")
def hub(hub_prereqs, hub_db_url, mailbox, tmp_path_factory) -> Iterator[Hub]:
    """The demo hub on the database under test: 1 s meter ticks, threshold mail to ``mail-lab``'s leader,
    no course scheduler (the tests begin and end sessions), broad tokens for trusted hardware."""
    hub = Hub(tmp_path_factory.mktemp("hub"), db_url=hub_db_url, extra_config=EXTRA, env={
        "HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_GRACE_SECONDS": "0", "HYBRIDHUB_COURSE_SCHEDULER": "0",
        "HYBRIDHUB_SMTP_HOST": "127.0.0.1", "HYBRIDHUB_SMTP_PORT": str(mailbox.port),
        "HYBRIDHUB_LEADER_ADDRESSES": json.dumps({"mail-lab": [LEADER]}),
    }).start()
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


@pytest.fixture(scope="module")
def acct(hub) -> Iterator[Accounting]:
    yield from accounting_on(hub)


@pytest.fixture(scope="module")
def funded_group(hub, acct) -> Callable[[str, str, float], None]:
    """Make a lab group on the hub with one member and a budget of community hours (mirrored in accounting)."""

    def make(group: str, user: str, hours: float) -> None:
        assert hub.api("POST", f"/users/{user}").status_code in (201, 409)
        assert hub.api("POST", f"/groups/{group}", json={"users": [user]}).status_code == 201
        assert hub.api("PUT", f"/groups/{group}/properties", json={"kind": "lab"}).status_code == 200
        acct.sync_groups({group: [user]}, kinds={group: "lab"})
        acct.ensure_budget(group, "community", hours, unit="hours", period="monthly")

    return make


def open_by_server(acct: Accounting, user: str) -> dict[str, tuple]:
    return {r.server_name: (r.model, r.count) for r in acct.open_reservations(user)}


def patched_start(hub: Hub, user: str, server: str, options: dict) -> requests.Response:
    """Set a stopped server's options with ``PATCH`` as its user, then start it with no body (the saved ones)."""
    token = hub.user_token(user)
    r = hub.api("PATCH", f"/users/{user}/servers/{server}", json={"user_options": options}, token=token)
    assert r.status_code == 200, r.text
    return hub.api("POST", f"/users/{user}/servers/{server}", token=token)


def test_two_servers_of_one_user_cannot_together_exceed_their_group_budget(hub, acct, funded_group):
    funded_group("race-lab", "carol", 1.0)
    each = {**UNTRUSTED, "hours": 0.75, "group": "race-lab"}  # 0.75 h each, 1 h for both
    answers = hub.spawn_together("carol", {"ra": each, "rb": each})
    started = [name for name, r in answers.items() if r.status_code in (201, 202)]
    refused = [r for r in answers.values() if r.status_code == 403]
    assert len(started) == 1 and len(refused) == 1, {n: (r.status_code, r.text) for n, r in answers.items()}
    assert "left" in refused[0].json()["message"]
    [res] = acct.open_reservations("carol")
    assert res.server_name == started[0]
    assert acct.remaining("race-lab", "community", "rtx4090").amount_left == pytest.approx(0.25)
    hub.wait_ready("carol", started[0])
    hub.stop_server("carol", started[0])


@pytest.fixture
def lab9(acct) -> Iterator[None]:
    """A running course session 'Lab 9' (RTX 3090) with a seat for bob; ended and released after."""
    sessions = CourseSchedule(acct, load_catalog())
    now = utcnow()
    info = sessions.create(group="course-ml101", resource_class="community", model="rtx3090", count=1,
                           starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(hours=1), title="Lab 9")
    sessions.begin(info.id, ["bob"], {"instructors": []})
    yield
    sessions.end_now(info.id)
    sessions.begin_end(info.id)


def test_a_course_session_locks_the_session_server_only(hub, acct, lab9):
    seat = open_by_server(acct, "bob")
    assert seat == {"": ("rtx3090", 1)}  # the seat's pre-admitted reservation
    # bob's named server is his own: other hardware, its own reservation, the seat's untouched
    assert hub.spawn("bob", TRUSTED, server="own").status_code in (201, 202)
    hub.wait_ready("bob", "own")
    assert open_by_server(acct, "bob") == {**seat, "own": ("a100", 1)}
    # while it runs, the session server is still locked: other hardware is refused naming the session ...
    r = hub.spawn("bob", TRUSTED)
    assert r.status_code == 403 and "Lab 9" in r.json()["message"], r.text
    # ... also when PATCHed onto the stopped session server
    r = patched_start(hub, "bob", "", TRUSTED)
    assert r.status_code == 403 and "Lab 9" in r.json()["message"], r.text
    assert hub.server_model("bob") is None
    # with the session's own options it starts on the seat's reservation (charged once)
    assert patched_start(hub, "bob", "", {}).status_code in (201, 202)
    hub.wait_ready("bob")
    assert open_by_server(acct, "bob") == {**seat, "own": ("a100", 1)}
    hub.stop_server("bob", "own")
    # the named server, PATCHed onto other hardware again, is still not locked
    assert patched_start(hub, "bob", "own", UNTRUSTED).status_code in (201, 202)
    hub.wait_ready("bob", "own")
    hub.stop_server("bob", "own")
    hub.stop_server("bob")


def server_scopes(hub: Hub, token: str) -> set[str]:
    """A server token's scopes on servers, as the hub resolves them."""
    r = hub.api("GET", "/user", token=token)
    assert r.status_code == 200, r.text
    return {s for s in r.json()["scopes"] if "servers" in s}


def test_trust_is_each_servers_own_and_patched_options_meet_it_again(hub, acct):
    policy = TrustPolicy(acct.db)
    policy.set_policy("course-ml101", confidential_dirs=["secret"])
    user_home(hub, "alice", secret="secret")
    try:
        assert hub.spawn("alice", TRUSTED).status_code in (201, 202)
        assert hub.spawn("alice", UNTRUSTED, server="gpu").status_code in (201, 202)
        trusted, untrusted = hub.wait_ready("alice"), hub.wait_ready("alice", "gpu")
        seen = probe(hub, untrusted)
        assert (seen["trust"], seen["secret"]) == ("untrusted", [])
        assert server_scopes(hub, seen["token"]) == {"access:servers!server=alice/gpu"}  # its own server only
        seen = probe(hub, trusted)
        assert seen["secret"] == ["patients.csv"]
        assert "servers!user=alice" in server_scopes(hub, seen["token"]), server_scopes(hub, seen["token"])
        # the named server PATCHed onto trusted hardware gets the broad token and the folder
        hub.stop_server("alice", "gpu")
        assert patched_start(hub, "alice", "gpu", TRUSTED).status_code in (201, 202)
        seen = probe(hub, hub.wait_ready("alice", "gpu"))
        assert seen["secret"] == ["patients.csv"] and "servers!user=alice" in server_scopes(hub, seen["token"])
        # PATCHed back onto untrusted hardware charged to a barred group: refused at start
        hub.stop_server("alice", "gpu")
        policy.set_policy("course-ml101", barred_untrusted=True)
        r = patched_start(hub, "alice", "gpu", UNTRUSTED)
        assert r.status_code == 403 and "barred from untrusted hardware" in r.json()["message"], r.text
        assert hub.server_model("alice", "gpu") is None and set(open_by_server(acct, "alice")) == {""}
    finally:
        policy.set_policy("course-ml101", confidential_dirs=[], barred_untrusted=False)
        for server in ("", "gpu"):
            if hub.server_model("alice", server):
                hub.stop_server("alice", server)


def test_the_meter_counts_a_real_stop_at_zero_and_a_real_mail_on_its_metrics(hub, acct, funded_group, mailbox):
    meter = "/services/hybridhub-meter/metrics"
    funded_group("mail-lab", "erin", 0.003)
    weak = hub.user_token("erin", scopes=["read:users!user"])
    assert scrape(hub, meter, token=weak).status_code == 403  # a token without read:metrics
    before, mailed = scrape(hub, meter).text, len(mailbox.messages)  # one mailbox for both databases' hubs
    assert hub.spawn("erin", {**UNTRUSTED, "hours": 0.003, "group": "mail-lab"}).status_code in (201, 202)
    hub.wait_ready("erin")
    hub.wait_stopped("erin", timeout=60)  # 10.8 s, the whole budget: the meter stops it at zero
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(mailbox.messages) == mailed:
        time.sleep(0.5)
    mails = mailbox.messages[mailed:]
    assert mails and {m["X-Rcpt"] for m in mails} == {LEADER}
    assert all("mail-lab" in m["Subject"] for m in mails)
    stops = "hybridhub_stops_at_zero_total"
    labels = {"class": "community", "group": "mail-lab"}
    sent = "hybridhub_mails_sent_total"
    deadline = time.monotonic() + 10
    while True:  # a mail is received before the meter counts it, and a later threshold's may still come
        delivered = len(mailbox.messages) - mailed
        after = scrape(hub, meter).text
        if sample(after, sent) - sample(before, sent) == delivered or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sample(after, stops, **labels) == sample(before, stops, **labels) + 1
    assert sample(after, sent) - sample(before, sent) == delivered
    assert '"erin"' not in after  # never a label
