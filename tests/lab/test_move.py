"""Moving a running server to other hardware (issue #28, item 3), through a real hub.

The move is admitted first (a refusal changes nothing and says why), then the old server stops
and its reservation is released, then the new one starts under the same name with the held
reservation; one session record names the other.  A course session's lock forbids moving.
In Chromium, a student moves from the Lab panel and finds their (unsaved) notebook saved and
open in the new Lab, and the status item shows money.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import requests

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Reservation, UsageEntry
from hybridhub.accounting.sessions import END_MOVED, SessionLog
from hybridhub.hub.config import DEMO_USER_PASSWORD
from hybridhub.web.app import SERVICE_NAME
from tests.fixtures.browser import login
from tests.fixtures.courses import start_course_session, stop_all_servers
from tests.fixtures.env import require
from tests.fixtures.hub import pending_gate

LABEXT = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "hybridhub-lab" / "package.json"
LAB_ARGS = "c.Spawner.args = ['--allow-root', '--HybridhubLab.min_interval=2']\n"
RTX = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
H100 = {"class": "enterprise", "model": "h100", "count": 1, "hours": 1, "group": "course-ml101"}
TOO_MUCH = {**H100, "count": 8, "hours": 2}  # 16 h of the course's 10 h enterprise budget


def _db_state(hub, user: str):
    """(reservations by id, session records) of ``user``, read from the hub's database."""
    db = Database(hub.db_url)
    try:
        acct = Accounting(db)
        with db.session() as s:
            res = {r.id: (r.model, r.state, r.close_reason, r.started_at is not None, r.amount_charged)
                   for r in s.query(Reservation).filter(Reservation.username == user)}
            charged = {e.reservation_id for e in s.query(UsageEntry).filter(UsageEntry.username == user)}
        records = SessionLog(db).sessions(user)
        return res, charged, records, acct.remaining("course-ml101", "enterprise").reserved
    finally:
        db.dispose()


def _move(hub, user: str, options: dict, token: str, server: str = "") -> requests.Response:
    return requests.post(f"{hub.api_url}/hybridhub/move/{user}/{server}", data=json.dumps(options),
                         headers={"Authorization": f"token {token}"}, timeout=120)


@pytest.fixture
def moving_hub(hub_factory):
    hub = hub_factory(env={"HYBRIDHUB_METER_INTERVAL": "2"}, extra_config=LAB_ARGS)
    r = hub.spawn("alice", RTX)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    return hub


def test_move_is_admitted_first_links_the_records_and_charges_only_served_launches(moving_hub):
    hub = moving_hub
    alice = hub.user_token("alice")
    # nobody else moves alice's server (the hub answers 404, as for its own server routes), nor does a
    # token without the servers scope on it
    assert _move(hub, "alice", H100, hub.user_token("bob")).status_code == 404
    assert _move(hub, "alice", H100, hub.user_token("alice", scopes=["access:servers!user=alice"])).status_code == 403
    # bad input: 4xx naming the field, nothing changed
    r = _move(hub, "alice", {**H100, "count": "lots"}, alice)
    assert r.status_code == 400 and "count" in r.json()["message"], r.text
    r = requests.post(f"{hub.api_url}/hybridhub/move/alice/", data="[1]", timeout=60,
                      headers={"Authorization": f"token {alice}"})
    assert r.status_code == 400 and "user_options" in r.json()["message"], r.text
    r = requests.post(f"{hub.api_url}/hybridhub/move/alice/", data="x" * 70_000, timeout=60,
                      headers={"Authorization": f"token {alice}"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["message"], r.text
    # over budget: refused with the picker's status and message; the RTX server keeps running
    r = _move(hub, "alice", TOO_MUCH, alice)
    assert r.status_code == 403 and "This launch reserves" in r.json()["message"], r.text
    assert hub.server_model("alice")["ready"] and hub.server_model("alice")["user_options"]["model"] == "rtx4090"
    res, _, records, held = _db_state(hub, "alice")
    assert [m for m, state, *_ in res.values() if state != "closed"] == ["rtx4090"] and held == 0
    old_record = records[0].id
    # the home page: money at the admitted price, and the way to move
    home = hub.signed_in("alice").get(f"{hub.url}/hub/home", timeout=60).text
    page = hub.signed_in("alice").get(f"{hub.url}/hub/hybridhub/move/alice/", timeout=60)
    html = page.content.decode()
    assert page.status_code == 200 and "Move default (RTX 4090 × 1) to other hardware" in html
    assert re.search(r'value="community/rtx4090"[^>]*checked', html), "not preselected"
    assert 'href="/hub/hybridhub/move/alice/"' in home and re.search(r"\$\d+\.\d\d <span[^>]*>at \$\d+\.\d\d/h", home)

    r = _move(hub, "alice", H100, alice)
    assert r.status_code == 202 and r.json()["pending_url"].endswith("/hub/spawn-pending/alice"), r.text
    _wait_moved(hub, "alice", "h100")
    time.sleep(3)  # a meter tick on the new server
    res, charged, records, _ = _db_state(hub, "alice")
    by_model = {m: (state, reason, started) for m, state, reason, started, _ in res.values()}
    assert by_model["rtx4090"] == ("closed", "stopped", True)  # the old one released
    assert by_model["h100"][0] == "running"
    assert len(res) == 2, res  # the refused move held nothing, the move one reservation: the new one's
    assert charged <= set(res) and all(res[r][3] for r in charged)  # only served launches are charged
    new, old = records[0], records[1]
    assert (old.id, old.end_reason, old.end_detail) == (old_record, END_MOVED, "to H100 80GB × 1")
    assert new.moved_from_id == old.id and new.stopped_at is None and new.offering == "enterprise/h100"
    portal = f"{hub.url}/services/{SERVICE_NAME}"
    r = requests.get(f"{portal}/api/sessions", headers={"Authorization": f"token {alice}"}, timeout=60)
    assert [s["moved_from_id"] for s in r.json()["sessions"]] == [old.id, None], r.text
    r = requests.get(f"{portal}/sessions", headers={"Authorization": f"token {alice}"}, timeout=60)
    assert f'moved from <a href="#session-{old.id}">' in r.text and END_MOVED in r.text
    # the Lab's session (the portal) shows money at the admitted price
    state = requests.get(f"{hub.url}/services/{SERVICE_NAME}/api/users/alice/session",
                         headers={"Authorization": f"token {alice}"}, timeout=60).json()
    assert state["reservation"]["hourly_price_text"].startswith("$") and "cost_text" in state["reservation"]
    # a server that is not running cannot move
    hub.stop_server("alice")
    assert _move(hub, "alice", RTX, alice).status_code == 409


def test_a_course_locked_server_cannot_move(hub_factory, request):
    """The course session's lock: the REST move with the student's own token is refused, and so
    is the move page; the server keeps running on the session's hardware."""
    hub = hub_factory(env={"HYBRIDHUB_COURSE_INTERVAL": "0.5"})
    request.addfinalizer(lambda: stop_all_servers(hub))
    start_course_session(hub, "Quiz 4", ends_in=20 * 60)
    hub.wait_ready("alice", timeout=180)
    alice = hub.user_token("alice")
    for options in (H100, RTX):  # other hardware, or even the same: a course server does not move
        r = _move(hub, "alice", options, alice)
        assert r.status_code == 403, r.text
        assert "Quiz 4" in r.json()["message"] and "cannot move" in r.json()["message"], r.text
    page = hub.signed_in("alice").get(f"{hub.url}/hub/hybridhub/move/alice/", timeout=60)
    assert page.status_code == 403 and "cannot" in page.text and "move to other hardware" in page.text
    assert hub.server_model("alice")["user_options"]["model"] == "rtx4090"


@pytest.mark.browser
def test_student_moves_from_the_lab_panel_and_finds_the_notebook_open(moving_hub, page):
    require(LABEXT.exists(), f"the built Lab extension in {sys.prefix} (run scripts/setup.sh)")
    hub = moving_hub
    login(page, hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/user/alice/lab")
    item = page.locator("#jp-main-statusbar .jp-hybridhub-status")
    item.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#jp-main-statusbar .jp-hybridhub-status')"
                           ".textContent.includes('$')", timeout=60_000)
    assert "$" in item.text_content() and "/h" in item.text_content(), item.text_content()
    # a notebook with an edit that is not saved
    nb = {"type": "notebook", "content": {"nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "cells": [
        {"cell_type": "code", "id": "c1", "source": "", "metadata": {}, "outputs": [], "execution_count": None}]}}
    r = requests.put(f"{hub.url}/user/alice/api/contents/moving.ipynb", json=nb, timeout=60,
                     headers={"Authorization": f"token {hub.user_token('alice')}"})
    assert r.status_code in (200, 201), r.text
    page.goto(f"{hub.url}/user/alice/lab/tree/moving.ipynb")
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.wait_for(timeout=120_000)
    cell.click()
    page.keyboard.type("moved_marker = 42")
    page.locator(".jp-mod-dirty").first.wait_for(timeout=30_000)
    # a refused move from the panel: the old server keeps running, the page says why
    item.click()
    page.get_by_role("button", name="Move to other hardware").click()
    page.wait_for_url("**/hub/hybridhub/move/alice**", timeout=60_000)
    assert page.locator("#offering-enterprise-h100, [value='enterprise/h100']").count() >= 1
    checked = page.locator("input[name='offering']:checked").get_attribute("value")
    assert checked == "community/rtx4090"  # preselected with the current choice
    _choose(page, "enterprise/h100", count=8, hours=2)
    page.locator("#start-launch").click()
    error = page.locator("#spawn-error")
    error.wait_for(timeout=60_000)
    assert "This launch reserves" in error.text_content(), error.text_content()
    assert hub.server_model("alice")["ready"]
    # the move: back in the Lab, the panel's button saves, records the open notebook and moves
    page.goto(f"{hub.url}/user/alice/lab")
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    page.screenshot(path="/tmp/hh-move-back.png")
    page.locator("#jp-main-statusbar .jp-hybridhub-status").click()
    page.get_by_role("button", name="Move to other hardware").click()
    page.wait_for_url("**/hub/hybridhub/move/alice**", timeout=60_000)
    _choose(page, "enterprise/h100", count=1, hours=1)
    page.locator("#start-launch").click()
    page.wait_for_url("**/user/alice/lab**", timeout=180_000)
    # reopened by the extension's record: Lab's own workspace does not do it here (a server running as the
    # user cannot write its workspace under the hub's ~/.jupyter: checked with the record removed)
    tab = page.locator(".lm-TabBar-tab", has_text="moving.ipynb")
    tab.wait_for(timeout=120_000)
    assert hub.server_model("alice")["user_options"]["model"] == "h100"
    (saved,) = Path(hub.workdir).rglob("moving.ipynb")  # the same home: the edit was saved before the stop
    assert "moved_marker = 42" in saved.read_text()
    try:
        page.locator(".jp-Notebook", has_text="moved_marker = 42").first.wait_for(timeout=60_000)
    finally:
        page.screenshot(path="/tmp/hh-move-landed.png")
    page.wait_for_function("() => document.querySelector('#jp-main-statusbar .jp-hybridhub-status')"
                           ".textContent.startsWith('H100')", timeout=60_000)


def _wait_moved(hub, user: str, model: str, timeout: float = 180) -> None:
    """Wait until ``user``'s default server runs ``model`` and is ready (it stops, then starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = hub.server_model(user) or {}
        if server.get("ready") and (server.get("user_options") or {}).get("model") == model:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{user}'s server did not move to {model}:\n{hub.log()[-3000:]}")


def _choose(page, key: str, *, count: int, hours: float) -> None:
    """Pick ``key`` with ``count`` accelerators for ``hours`` in the picker."""
    page.locator(f"input[name='offering'][value='{key}']").check()
    page.locator(f"select[name='count:{key}']").select_option(str(count))
    page.fill("#hours", str(hours))


#: The local backend's command, except that a server on an H100 exits at once (a start that fails).
H100_FAILS = ("c.LocalBackend.cmd = ['/bin/sh', '-c', 'case \"$HYBRIDHUB_MODEL\" in H100*) exit 3;; esac; "
              "exec \"$0\" \"$@\"', " + repr(sys.executable) + ", '-P', '-m', 'hybridhub.backends.local.server']\n")


def test_a_move_whose_new_server_fails_releases_the_held_reservation_and_charges_nothing(hub_factory):
    hub = hub_factory(env={"HYBRIDHUB_METER_INTERVAL": "2"}, extra_config=LAB_ARGS + H100_FAILS)
    assert hub.spawn("alice", RTX).status_code in (201, 202)
    hub.wait_ready("alice")
    r = _move(hub, "alice", H100, hub.user_token("alice"))
    assert r.status_code in (202, 500, 503), r.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        res, charged, records, held = _db_state(hub, "alice")
        if len(res) == 2 and all(state == "closed" for _, state, *_ in res.values()):
            break
        time.sleep(0.5)
    by_model = {m: (state, reason, started, amount) for m, state, reason, started, amount in res.values()}
    assert by_model["h100"] == ("closed", "failed to start", False, 0.0), by_model  # taken, never served
    assert by_model["rtx4090"][:3] == ("closed", "stopped", True)
    assert held == 0 and all(res[r][3] for r in charged)  # nothing held, only the served launch charged
    new, old = records[0], records[1]
    assert old.end_reason == END_MOVED and new.end_reason == "failed to start" and new.moved_from_id == old.id


def test_a_move_at_the_hubs_spawn_limit_is_refused_before_anything_stops(hub_factory, tmp_path):
    """JupyterHub's concurrent-spawn limit would refuse the new start only after the old server had
    stopped, leaving the student with none: the move asks first, answers 429 and changes nothing."""
    gate = tmp_path / "gate"
    hub = hub_factory(extra_config=LAB_ARGS + "c.JupyterHub.concurrent_spawn_limit = 1\n"
                      # the hub's range (JupyterHub 6.1's trait of that name has no config tag: its settings do)
                      "c.JupyterHub.tornado_settings = {'spawn_throttle_retry_range': (41, 42)}\n"
                      + pending_gate("bob", gate))
    try:
        assert hub.spawn("alice", RTX).status_code in (201, 202)
        hub.wait_ready("alice")
        assert hub.spawn("bob", RTX).status_code == 202  # held at the gate: the hub's one place is taken
        before = _db_state(hub, "alice")
        r = _move(hub, "alice", H100, hub.user_token("alice"))
        assert r.status_code == 429 and r.headers.get("Retry-After") == "41", (r.status_code, r.text)  # the hub's
        assert "nothing was moved" in r.json()["message"] and "in 50 seconds" in r.json()["message"]
        assert hub.server_model("alice")["ready"]
        assert _db_state(hub, "alice") == before  # no reservation held, no record ended
    finally:
        gate.touch()
