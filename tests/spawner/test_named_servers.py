"""Named servers through a real hub (issue #27 item 1): each of a user's servers on its own hardware.

A researcher runs an RTX 4090 and an H100 side by side: each is admitted, reserved, metered, shown on
the home page and in its Lab, and named after its hardware; stopping one releases only its reservation;
a stopped one restarts on its saved hardware, and options changed with ``PATCH`` are checked again at
start.  One metered hub (1 s ticks) serves the whole module; the tests run in file order.  The budget race,
the course lock and trust per server, on SQLite and PostgreSQL: test_named_server_rules.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from jupyterhub.slugs import is_valid_display_name
from traitlets.config import Config

from hybridhub import loghygiene
from hybridhub.accounting.lab_session import session_state
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.sessions import SessionLog
from hybridhub.hub.config import (
    DEMO_ADMIN_PASSWORD,
    DEMO_NAMED_SERVER_LIMIT,
    DEMO_USER_PASSWORD,
    add_hybridhub,
    named_server_limit,
)
from hybridhub.hubapi import HubApi
from hybridhub.services.verification import stop_and_wait
from hybridhub.spawner.display import hardware_display_name
from tests.fixtures.browser import login
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.portal import accounting_on

RTX = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-vision"}
H100 = {"class": "enterprise", "model": "h100", "count": 1, "hours": 1, "group": "lab-vision"}


def test_the_display_name_keeps_the_users_name_and_says_the_hardware_of_this_start():
    assert hardware_display_name("rtx", "rtx", "RTX 4090 × 1") == "rtx · RTX 4090 × 1"
    assert hardware_display_name("rtx", "rtx · RTX 4090 × 1", "H100 80GB × 2") == "rtx · H100 80GB × 2"
    assert hardware_display_name("x", "My  training run", "H100 80GB × 1") == "My training run · H100 80GB × 1"
    assert hardware_display_name("x", None, "H100 80GB × 1") == "x · H100 80GB × 1"
    long = hardware_display_name("x", "a" * 300, "H100 80GB × 8")
    assert long.endswith(" · H100 80GB × 8") and len(long) == 255 and is_valid_display_name(long)


def test_the_named_server_limit_holds_for_people_not_for_services():
    limit = named_server_limit(3)
    assert limit(SimpleNamespace(current_user=SimpleNamespace(kind="user"))) == 3
    assert limit(SimpleNamespace(current_user=SimpleNamespace(kind="service"))) == 0


@pytest.mark.parametrize("site", [None, False, True])
def test_add_hybridhub_leaves_named_servers_to_the_site(tmp_path, monkeypatch, site):
    monkeypatch.setattr(loghygiene, "install", lambda: None)  # this test process's log records stay as they are
    c = Config()
    if site is not None:
        c.JupyterHub.allow_named_servers = site
    add_hybridhub(c, db_url=f"sqlite:///{tmp_path / 'hybridhub.sqlite'}", freeze_gc=False)
    assert c.JupyterHub.get("allow_named_servers") == site
    assert "named_server_limit_per_user" not in c.JupyterHub


@pytest.fixture(scope="module")
def hub(hub_prereqs, tmp_path_factory) -> Iterator[Hub]:
    """The demo hub on SQLite, metering every second with a 4 s grace; launches as short as 3.6 s."""
    hub = Hub(
        tmp_path_factory.mktemp("hub"),
        env={"HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_GRACE_SECONDS": "4"},
        extra_config="c.HybridSpawner.min_launch_hours = 0.001\nc.HybridSpawner.hours_resolution = 0.001\n",
    ).start()
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


@pytest.fixture(scope="module")
def acct(hub) -> Iterator[Accounting]:
    yield from accounting_on(hub)


@pytest.fixture(scope="module")
def dave(hub) -> str:
    """dave's servers ``rtx`` (RTX 4090) and ``h100`` (H100), started at once and ready; his token."""
    for name, r in hub.spawn_together("dave", {"rtx": RTX, "h100": H100}).items():
        assert r.status_code in (201, 202), (name, r.text)
    hub.wait_ready("dave", "rtx")
    hub.wait_ready("dave", "h100")
    return hub.user_token("dave")


def open_by_server(acct: Accounting, user: str) -> dict[str, tuple]:
    return {r.server_name: (r.model, r.count, r.hours) for r in acct.open_reservations(user)}


def home_row(html: str, server: str) -> str:
    """The text of the home page's running-server row of ``server``."""
    found = re.search(rf'<tr class="running-server" data-server="{server}">(.*?)</tr>', html, re.S)
    assert found, f"no running row for {server}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1)))


def test_an_rtx_4090_and_an_h100_run_side_by_side_each_on_its_own(hub, acct, dave):
    assert open_by_server(acct, "dave") == {"rtx": ("rtx4090", 1, 1.0), "h100": ("h100", 1, 1.0)}
    # each has its own session record
    records = {server: SessionLog(acct.db).open_session_id("dave", server) for server in ("rtx", "h100")}
    assert None not in records.values() and records["rtx"] != records["h100"]
    # each server's display name says its hardware
    assert hub.server_model("dave", "rtx")["display_name"] == "rtx · RTX 4090 × 1"
    assert hub.server_model("dave", "h100")["display_name"] == "h100 · H100 80GB × 1"
    # both are metered, each on its own reservation
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(r.amount_charged > 0 for r in acct.open_reservations("dave")):
        time.sleep(0.5)
    assert all(r.amount_charged > 0 for r in acct.open_reservations("dave"))
    # the home page: one row each, with its hardware, cost so far and when it stops
    html = hub.signed_in("dave").get(f"{hub.url}/hub/home", timeout=60).content.decode()
    for server, hardware in (("rtx", "RTX 4090 × 1"), ("h100", "H100 80GB × 1")):
        row = home_row(html, server)
        assert hardware in row and re.search(r"\$\d+\.\d\d", row) and "UTC" in row, row
    # each Lab shows its own server's session (the server extension, as the Lab asks it)
    for server, model in (("rtx", "rtx4090"), ("h100", "h100")):
        r = requests.get(f"{hub.url}/user/dave/{server}/hybridhub/session",
                         headers={"Authorization": f"token {dave}"}, timeout=60)
        assert r.status_code == 200, r.text
        assert (r.json()["server"], r.json()["reservation"]["model"]) == (server, model)


@pytest.mark.browser
def test_the_home_page_lists_both_servers_with_their_hardware(hub, dave, page):
    login(page, hub.url, "dave", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/hub/home")
    for server, hardware in (("rtx", "RTX 4090 × 1"), ("h100", "H100 80GB × 1")):
        running = page.locator(f'#running-servers tr[data-server="{server}"]')
        assert hardware in running.inner_text()
        assert "$" in running.locator(".cost").inner_text()
        assert "UTC" in running.locator(".stops-at").inner_text()
        named = page.locator(f'tr.home-server-row[data-server-name="{server}"]')
        assert f"{server} · {hardware}" in named.inner_text()


@pytest.mark.browser
def test_the_admin_page_shows_each_servers_offering_in_its_profile_column(hub, dave, page):
    login(page, hub.url, "admin", DEMO_ADMIN_PASSWORD)
    page.goto(f"{hub.url}/hub/admin")
    for server, offering in (("rtx", "community/rtx4090"), ("h100", "enterprise/h100")):
        row = page.locator("tbody tr").filter(has=page.get_by_text(server, exact=True)).filter(has_text="dave")
        assert row.locator('[data-testid="user-row-profile-used"]').inner_text().strip() == offering


@pytest.mark.browser
def test_a_researcher_starts_two_servers_side_by_side_in_the_browser_and_each_lab_shows_its_own(hub, page):
    login(page, hub.url, "carol", DEMO_USER_PASSWORD)
    for server, offering, words in (("small", "RTX 4090", ("4090", "community")),
                                    ("big", "H100 80GB", ("H100", "enterprise"))):
        page.goto(f"{hub.url}/hub/home")
        page.fill(".new-server-name", server)  # JupyterHub 6's own "Add New Server" row, then its start link
        page.click(".new-server-btn")
        page.locator(f'tr.home-server-row[data-server-name="{server}"] .start-server').click()
        page.wait_for_url(f"**/hub/spawn/carol/{server}**")
        page.get_by_label(offering, exact=True).check()
        page.get_by_label("Requested hours").fill("1")
        page.get_by_role("button", name="Start").click()
        page.wait_for_url(f"**/user/carol/{server}/lab**", timeout=120_000)
        status = page.locator("#jp-main-statusbar .jp-hybridhub-status")
        status.wait_for(timeout=90_000)
        page.wait_for_function("() => document.querySelector('#jp-main-statusbar .jp-hybridhub-status')"
                               ".textContent.includes('×')", timeout=30_000)
        assert all(word in status.text_content() for word in words), status.text_content()
    page.goto(f"{hub.url}/hub/home")
    for server, hardware in (("small", "RTX 4090 × 1"), ("big", "H100 80GB × 1")):
        assert hardware in page.locator(f'#running-servers tr[data-server="{server}"]').inner_text()
        assert f"{server} · {hardware}" in page.locator(f'tr.home-server-row[data-server-name="{server}"]').inner_text()
    for server in ("small", "big"):
        hub.stop_server("carol", server)


def test_a_user_has_at_most_three_named_servers_and_verification_is_not_limited(hub):
    ivy = hub.user_token("ivy")
    create = lambda name, token=ivy: hub.api("PUT", f"/users/ivy/servers/{name}", token=token)  # noqa: E731
    for name in ("a", "b", "c"):
        assert create(name).status_code == 201
    r = create("d")
    assert r.status_code == 400 and f"maximum of {DEMO_NAMED_SERVER_LIMIT}" in r.json()["message"], r.text
    # a service (the portal starts verify-<id> servers) has no limit; a verification deletes its server
    assert create("verify-1", token=hub.token).status_code == 201
    with ThreadPoolExecutor(1) as pool:  # off Playwright's loop (the browser test's module fixture)
        pool.submit(asyncio.run, stop_and_wait(HubApi(hub.api_url, hub.token), "ivy", "verify-1")).result()
    deadline = time.monotonic() + 10
    while hub.api("GET", "/users/ivy/servers/verify-1").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hub.api("GET", "/users/ivy/servers/verify-1").status_code == 404


BAD_PATCHES = [
    ({**RTX, "hours": 100}, "Invalid option hours"),
    ({**RTX, "group": "course-ml101"}, "Invalid option group"),
    ({**H100, "count": 16}, "Invalid option count"),
]


def test_stopping_one_releases_only_its_reservation_and_it_restarts_on_checked_options(hub, acct, dave):
    hub.stop_server("dave", "rtx")
    assert open_by_server(acct, "dave") == {"h100": ("h100", 1, 1.0)}
    assert hub.server_model("dave", "h100")["ready"]
    # the stopped server's picker preselects its saved hardware
    picker = hub.signed_in("dave").get(f"{hub.url}/hub/spawn/dave/rtx", timeout=60).text
    assert re.search(r'value="community/rtx4090"[^>]*\s+checked', picker)
    # options changed with PATCH are checked at start like any others: refused, nothing reserved
    for options, error in BAD_PATCHES:
        r = hub.api("PATCH", "/users/dave/servers/rtx", json={"user_options": options}, token=dave)
        assert r.status_code == 200, r.text
        r = hub.api("POST", "/users/dave/servers/rtx", token=dave)
        assert r.status_code == 400 and error in r.json()["message"], r.text
        assert hub.server_model("dave", "rtx") is None
        assert set(open_by_server(acct, "dave")) == {"h100"}
    # good PATCHed options: it starts on them, is warned and stopped at zero, alone
    short = {**RTX, "hours": 0.003}  # 10.8 s
    assert hub.api("PATCH", "/users/dave/servers/rtx", json={"user_options": short}).status_code == 200
    assert hub.api("POST", "/users/dave/servers/rtx", token=dave).status_code in (201, 202)
    hub.wait_ready("dave", "rtx")
    assert open_by_server(acct, "dave")["rtx"] == ("rtx4090", 1, 0.003)
    warned = False
    deadline = time.monotonic() + 60
    while hub.server_model("dave", "rtx") is not None and time.monotonic() < deadline:
        warned = warned or any(w["kind"] == "stop" for w in session_state(acct, "dave", "rtx")["warnings"])
        time.sleep(0.3)
    assert hub.server_model("dave", "rtx") is None, "the meter did not stop the server at zero"
    assert warned, "no stop warning in the server's Lab session before the stop"
    assert hub.server_model("dave", "h100")["ready"]
    assert open_by_server(acct, "dave") == {"h100": ("h100", 1, 1.0)}
    assert not [w for w in session_state(acct, "dave", "h100")["warnings"] if w["kind"] == "stop"]
