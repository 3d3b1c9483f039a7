"""Culling on idle accelerators through a real hub, the real jupyterhub-idle-culler and the
simulated source, in Chromium; and who stopped a server, as the session record says.

One hub for the module (local backend, the culler every 3 s with an ordinary timeout of 30 s,
idle minutes of 0.75 for every offering and a warning 0.5 min before).  Each server's
extension reports every second what ``~/.hybridhub/utilisation.json`` says (the simulated
source the local backend selects); bob's says 80 %, alice's nothing (her two H100 idle).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import requests
import yaml

from hybridhub.accounting.db import Database
from hybridhub.accounting.sessions import END_BY_ADMIN, END_IDLE, SessionLog
from hybridhub.catalog import DEFAULT_CATALOG
from hybridhub.web.app import SERVICE_NAME
from tests.fixtures.browser import login
from tests.fixtures.courses import stop_all_servers
from tests.fixtures.env import require
from tests.fixtures.hub import Hub, _stop_user_processes
from tests.fixtures.metrics import sample, scrape
from tests.lab.test_lab import LABEXT, SERVER_CONFIG, server_token

IDLE_MINUTES = 0.75
TIMEOUT = 30  # the culler's ordinary rule (s)
H100_X2 = {"class": "enterprise", "model": "h100", "count": 2, "hours": 1, "group": "course-ml101"}
RTX4090 = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
ARGS = ("c.Spawner.args = ['--allow-root', '--HybridhubLab.min_interval=2', "
        "'--HybridhubLab.utilisation_interval=1']\n")


@pytest.fixture(scope="module")
def culling_hub(hub_prereqs, tmp_path_factory) -> Iterator[Hub]:
    require(LABEXT.exists() and SERVER_CONFIG.exists(), f"the built Lab extension in {sys.prefix}")
    require(importlib.util.find_spec("jupyterhub_idle_culler") is not None,
            "jupyterhub-idle-culler (hybridhub[culler])")
    workdir = tmp_path_factory.mktemp("hub")
    catalog = copy.deepcopy(DEFAULT_CATALOG)
    for cls in catalog.values():
        cls["idle_minutes"] = IDLE_MINUTES
    catalog_file = workdir / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog))
    hub = Hub(workdir, extra_config=ARGS, env={
        "HYBRIDHUB_CATALOG": str(catalog_file), "HYBRIDHUB_IDLE_CULLER": "1", "HYBRIDHUB_IDLE_CULL_EVERY": "3",
        "HYBRIDHUB_IDLE_TIMEOUT": str(TIMEOUT), "HYBRIDHUB_IDLE_WARN_MINUTES": "0.5",
        "HYBRIDHUB_UTILISATION_MIN_INTERVAL": "0.5", "HYBRIDHUB_UTILISATION_STALE_SECONDS": "20",
    }).start()
    yield hub
    stop_all_servers(hub)
    hub.stop()
    _stop_user_processes(hub.workdir)


def simulate(hub: Hub, user: str, utilisation: float) -> None:
    """Write the simulated source's file in ``user``'s home, owned by them."""
    home = hub.workdir / "homes" / user
    folder = home / ".hybridhub"
    folder.mkdir(exist_ok=True)
    path = folder / "utilisation.json"
    path.write_text(json.dumps({"utilisation": utilisation}))
    owner = home.stat()
    for p in (folder, path):
        os.chown(p, owner.st_uid, owner.st_gid)


def start(hub: Hub, user: str, options: dict) -> None:
    r = hub.spawn(user, options)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=120)


def records(hub: Hub, user: str) -> list:
    db = Database(hub.db_url)
    try:
        return SessionLog(db).sessions(user)
    finally:
        db.dispose()


def utilisation_url(hub: Hub, user: str, server: str = "") -> str:
    return f"{hub.url}/services/{SERVICE_NAME}/api/users/{user}/utilisation?server={server}"


def test_reports_are_checked_rate_limited_and_only_a_servers_own(culling_hub):
    hub = culling_hub
    start(hub, "bob", RTX4090)
    simulate(hub, "bob", 80)
    token = {"Authorization": f"token {server_token(hub.workdir, 'bob')}"}
    device = {"index": 0, "utilisation": 80, "memory_used_mb": 1, "memory_total_mb": 24576}
    for body, field in (({"source": "simulated", "devices": [device, {**device, "index": 1}]}, "devices"),
                        ({"source": "simulated", "devices": [{**device, "utilisation": 140}]}, "utilisation"),
                        ({"source": "cuda", "devices": []}, "source")):
        r = requests.post(utilisation_url(hub, "bob"), json=body, headers=token, timeout=30)
        assert r.status_code == 400 and field in r.json()["field"], r.text
    # another user's or another server's: 403; a personal token of another user: 403
    for url in (utilisation_url(hub, "alice"), utilisation_url(hub, "bob", "other")):
        r = requests.post(url, json={"source": "simulated", "devices": []}, headers=token, timeout=30)
        assert r.status_code == 403, r.text
    alice = {"Authorization": f"token {hub.user_token('alice')}"}
    assert requests.post(utilisation_url(hub, "bob"), json={}, headers=alice, timeout=30).status_code == 403
    # the extension itself reports every second; two reports in a row from here: the second is early
    answers = [requests.post(utilisation_url(hub, "bob"), json={"source": "simulated", "devices": [device]},
                             headers=token, timeout=30) for _ in range(3)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1, [r.status_code for r in answers]
    # the culler's question needs its scope
    r = requests.post(f"{hub.url}/services/{SERVICE_NAME}/api/users/bob/idle-verdict", headers=alice, timeout=30)
    assert r.status_code == 403, r.text


def _session(hub: Hub, user: str) -> dict:
    r = requests.get(f"{hub.url}/services/{SERVICE_NAME}/api/users/{user}/session",
                     headers={"Authorization": f"token {server_token(hub.workdir, user)}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.browser
def test_idle_accelerators_are_warned_in_lab_then_stopped_busy_ones_keep_running(culling_hub, page):
    hub = culling_hub
    if hub.server_model("bob") is None:
        start(hub, "bob", RTX4090)
    simulate(hub, "bob", 80)
    start(hub, "alice", H100_X2)
    login(page, hub.url, "alice", "hybridhub-demo")
    page.goto(f"{hub.url}/user/alice/lab")
    toast = page.locator(".Toastify__toast", has_text="have been idle")
    toast.wait_for(timeout=120_000)
    warned = time.monotonic()
    assert "Your 2 × H100 80GB have been idle" in toast.text_content()
    assert "unless they are used" in toast.text_content()
    home = hub.signed_in("alice").get(f"{hub.url}/hub/home", timeout=30).text
    assert "have been idle" in home and "unless they are used" in home
    hub.wait_stopped("alice", timeout=120)
    lead = time.monotonic() - warned
    print(f"\nidle warning shown {lead:.1f} s before the stop")
    (record, *_) = records(hub, "alice")
    assert record.end_reason == END_IDLE, record
    assert record.end_detail.endswith("stopped by service idle-culler"), record.end_detail
    assert record.end_detail.startswith("2 × H100 80GB idle"), record.end_detail
    # bob's kernels have been idle longer than the culler's own timeout, his GPU busy: still running
    model = hub.server_model("bob")
    assert model is not None and model["ready"], model
    inactive = (datetime.now().astimezone() - datetime.fromisoformat(model["last_activity"])).total_seconds()
    assert inactive > TIMEOUT, model["last_activity"]
    assert _session(hub, "bob")["utilisation"]["state"] == "busy"
    assert "idle-culler" not in (records(hub, "bob")[0].end_detail or "")
    # admins see it: the sessions CSV carries the stop reason, the dashboard the hours given back
    admin = {"Authorization": f"token {hub.user_token('admin')}"}
    csv = requests.get(f"{hub.url}/services/{SERVICE_NAME}/api/sessions.csv", headers=admin, timeout=30).text
    assert "stopped: accelerators idle" in csv and "stopped by service idle-culler" in csv
    board = requests.get(f"{hub.url}/services/{SERVICE_NAME}/api/dashboard", headers=admin, timeout=30).json()
    (culled,) = [t for t in board["idle_culled"] if t["resource_class"] == "enterprise"]
    assert culled["servers"] == 1 and 1.9 < culled["accelerator_hours"] <= 2, culled
    assert culled["value"] == pytest.approx(culled["accelerator_hours"] * 2.50)
    # operators see it: the portal's metrics count the cull, by class and group (never by user)
    portal_metrics = scrape(hub, f"/services/{SERVICE_NAME}/metrics").text
    culls = {cls: sample(portal_metrics, "hybridhub_idle_culls_total", **{"class": cls})
             for cls in ("enterprise", "community")}
    assert culls == {"enterprise": 1, "community": 0}, culls
    assert "alice" not in portal_metrics


def test_an_admins_rest_stop_is_recorded_as_by_that_admin(culling_hub):
    hub = culling_hub
    if hub.server_model("bob") is None:
        start(hub, "bob", RTX4090)
    admin = hub.user_token("admin")
    r = hub.api("DELETE", "/users/bob/server", token=admin)
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("bob")
    record = records(hub, "bob")[0]
    assert (record.end_reason, record.end_detail) == (END_BY_ADMIN, "stopped by admin admin"), record
    # the owner's own stop stays "stopped by user", with nobody named
    start(hub, "bob", RTX4090)
    r = hub.api("DELETE", "/users/bob/server", token=hub.user_token("bob"))
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("bob")
    record = records(hub, "bob")[0]
    assert (record.end_reason, record.end_detail) == ("stopped by user", None), record


