"""The theta class end to end: a real JupyterHub (tests.fixtures.hub) configured only with the local Theta
controller's URL, key and project, a student picking "RTX 4090 (Theta community)" in Chromium and getting
JupyterLab on an emulated GPU Node (a container with a real sshd), then stopping it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hybridhub.accounting.db import Database
from hybridhub.accounting.reports import UsageFilter, usage_report
from hybridhub.accounting.sessions import SessionLog
from hybridhub.backends.theta import ThetaClient, deployment_body
from hybridhub.backends.theta.offering import launch_name
from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.docker import TEST_IMAGE
from tests.fixtures.hub import VENV_BIN, hub_factory, hub_prereqs  # noqa: F401  (fixtures)
from tests.fixtures.theta import (  # noqa: F401  (fixture)
    TEMPLATE,
    backend_traits,
    check_recorded,
    hub_theta_config,
    theta_controller,
)
from tests.fixtures.trust import run_async

RTX = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def open_reservations(db_url: str, user: str):
    from hybridhub.accounting.db import Database
    from hybridhub.accounting.ledger import Accounting

    return Accounting(Database(db_url)).open_reservations(user)


@pytest.mark.browser
def test_student_picks_a_theta_community_node_gets_jupyterlab_and_stop_deletes_it(theta_controller, hub_factory, page):  # noqa: F811
    ctl = theta_controller
    hub = hub_factory(extra_config=hub_theta_config(ctl) + "c.ProviderBillsRunner.interval = 0.5\n")
    login(page, hub.url, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/hub/spawn")
    assert page.get_by_role("group", name="Theta community").is_visible()
    row = page.locator("tr[data-offering='community/rtx4090']")
    # Theta's live quote and free nodes, not the catalog's $0.35
    assert row.locator(".price").inner_text() == "$0.29" and row.locator(".free-now").inner_text().strip() == "2"
    assert "Theta community node, at most $0.40/h" in row.inner_text()
    page.get_by_label("RTX 4090", exact=True).check()
    page.get_by_label("Requested hours").fill("1")
    page.get_by_label("Charge to group").select_option("course-ml101")
    assert "(≈ $0.29)" in page.locator("#reserve-summary").inner_text()  # 1 x 1 h at Theta's quote
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/alice/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)  # JupyterLab, served from the node
    assert hub.server_model("alice")["user_options"]["model"] == "rtx4090"
    token = hub.user_token("alice", scopes=["access:servers!user=alice"])
    api = requests.get(f"{hub.url}/user/alice/api", headers={"Authorization": f"token {token}"}, timeout=10)
    assert api.status_code == 200 and "version" in api.json()
    [node] = ctl.nodes.values()
    assert node.status == "running" and node.request["max_price_per_hour_usd"] == 0.40
    [reservation] = open_reservations(hub.db_url, "alice")
    assert admitted_price(hub, reservation.id) == 0.29  # Theta's quote, not the catalog's $0.35
    # the admin dashboard warns when Theta's balance will not pay for the running nodes for 24 h
    admin = {"Authorization": f"token {hub.user_token('admin')}"}
    portal = f"{hub.url}/services/hybridhub-portal/"
    ctl.balance_usd = 5.0  # 24 h of the running node at $0.29/h is $6.96
    wait_for(lambda: not portal_bills(portal, admin)["balance"]["covers_next_day"])
    dashboard = requests.get(portal, headers=admin, timeout=30).text
    assert "Theta balance" in dashboard and "It will not cover the running nodes for the next 24 hours" in dashboard
    ctl.balance_usd = 100.0
    # the server's token reached the node over SSH only: not through Theta's API, a command line or a log
    environ = ctl._docker("exec", node.container, "sh", "-c",
                          "cat /proc/$(pgrep -f jupyterhub-singleuser | head -1)/environ")
    server_token = next(v.split("=", 1)[1] for v in environ.split("\0") if v.startswith("JUPYTERHUB_API_TOKEN="))
    assert server_token not in str(ctl.requests)
    assert server_token not in ctl._docker("exec", node.container, "sh", "-c", "ps -eo args")
    assert server_token not in hub.log() and "PRIVATE KEY" not in hub.log()
    hub_db = Path(hub.db_url.removeprefix("sqlite:///"))
    assert b"PRIVATE KEY" not in hub_db.read_bytes() and b"OPENSSH" not in hub_db.read_bytes()
    page.goto(f"{hub.url}/hub/home")
    page.click("#stop")
    hub.wait_stopped("alice")
    assert node.status == "deleted" and ctl.live_containers() == []
    assert open_reservations(hub.db_url, "alice") == []
    # the billing reconciliation: what hybridhub charged course-ml101 today against Theta's usage
    today = time.strftime("%Y-%m-%d", time.gmtime())
    report = theta_billing(hub, ctl, today)
    [theta_usd] = ctl.usage.values()
    rows = usage_report(Database(hub.db_url), UsageFilter(resource_class="community"))
    charged = sum(r.cost for r in rows if r.group == "course-ml101")
    assert charged > 0 and theta_usd > 0  # the launch was charged, and billed by Theta
    lines = {line.split()[1]: line.split()[2:] for line in report.splitlines() if line.startswith(today)}
    assert lines["course-ml101"] == [f"{charged:.4f}"], report
    assert lines["(day)"] == [f"{charged:.4f}", f"{theta_usd:.4f}", f"{theta_usd - charged:.4f}"], report
    assert "balance $100.00; running nodes $0.00/h" in report and "WARNING" not in report
    # ...and the same on the portal's page, from what the hub recorded of Theta's bill
    wait_for(lambda: any(abs((d["provider_usd"] or 0) - theta_usd) < 1e-5 for d in portal_bills(portal, admin)["days"]))
    [day] = portal_bills(portal, admin)["days"]
    assert day["day"] == today and day["charged"] == {"course-ml101": pytest.approx(charged)}
    assert day["difference_usd"] == pytest.approx(theta_usd - charged, abs=1e-5)
    page = requests.get(f"{portal}provider-bills", headers=admin, timeout=30).text
    assert 'data-group="course-ml101"' in page and f"{theta_usd:.4f}" in page
    student = {"Authorization": f"token {hub.user_token('alice')}"}
    assert requests.get(f"{portal}api/provider-bills", headers=student, timeout=30).status_code == 403
    # the hub's calls, replayed from the controller's log, field by field against Theta's contract
    calls = set(check_recorded(ctl))
    assert {"GET gpu-resources", "GET gpu-resources/{id}", "POST gpu-deployments", "GET gpu-deployments/{id}",
            "DELETE gpu-deployments/{id}"} <= calls, calls


def admitted_price(hub, reservation_id: int) -> float:
    from hybridhub.accounting.models import Reservation

    with Database(hub.db_url).session() as s:
        return s.get(Reservation, reservation_id).price_per_hour


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def portal_bills(portal: str, headers: dict) -> dict:
    r = requests.get(f"{portal}api/provider-bills", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def theta_billing(hub, ctl, day: str) -> str:
    """``hybridhub-quota theta-billing`` for ``day`` against the hub's portal and ``ctl``."""
    env = {**os.environ, "THETA_CONTROLLER_BASE_URL": ctl.url, "THETA_PROJECT_ID": ctl.project,
           "THETA_API_KEY": ctl.key}
    out = subprocess.run(
        [str(VENV_BIN / "hybridhub-quota"), "--url", f"{hub.url}/services/hybridhub-portal/", "--token",
         hub.user_token("admin"), "theta-billing", "--class", "community", "--since", day, "--until", day],
        capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_quote_above_ceiling_and_refused_key_through_the_hub(theta_controller, hub_factory):  # noqa: F811
    ctl = theta_controller
    hub = hub_factory(extra_config=hub_theta_config(ctl, cap=0.20))
    picker = hub.signed_in("alice").get(f"{hub.url}/hub/spawn", timeout=30).text  # says so before a launch
    assert "Theta quotes $0.29/h for RTX 4090, above this offering&#39;s ceiling of $0.20/h" in picker
    r = hub.spawn("alice", RTX)
    assert r.status_code == 409 and "$0.29/h" in r.text and "$0.20/h" in r.text, r.text
    assert not ctl.nodes and open_reservations(hub.db_url, "alice") == []
    bad = hub_factory(extra_config=hub_theta_config(ctl, api_key="revoked-key-000"))
    deadline = time.monotonic() + 15  # the first reconciliation pass, when the hub starts, tells the admins
    while "Theta refused this hub's API key (HTTP 403)" not in bad.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Theta refused this hub's API key (HTTP 403)" in bad.log()
    r = bad.spawn("bob", RTX)
    assert r.status_code == 503 and "This hardware is unavailable" in r.text, r.text
    assert "revoked-key-000" not in bad.log() and not ctl.nodes


def test_the_hub_waits_for_jupyter_through_the_ingress_warm_up(theta_controller, hub_factory):  # noqa: F811
    ctl = theta_controller
    ctl.ingress_warmup = [404, 503, 401]  # Theta's ingress, once the node's port listens, before it forwards
    hub = hub_factory(extra_config=hub_theta_config(ctl))
    r = hub.spawn("alice", RTX)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice", timeout=90)
    token = hub.user_token("alice", scopes=["access:servers!user=alice"])
    api = requests.get(f"{hub.url}/user/alice/api", headers={"Authorization": f"token {token}"}, timeout=10)
    assert api.status_code == 200, api.status_code  # ready only once Jupyter itself answered, not the ingress
    [ingress] = ctl.ingresses.values()
    assert {404, 503, 401} <= set(ingress.served) and ingress.served[-1] == 200
    hub.stop_server("alice")


def test_a_hub_restart_between_start_and_stop_loses_nothing_of_the_home(theta_controller, hub_factory, tmp_path):  # noqa: F811
    ctl = theta_controller
    homes = tmp_path / "homes"
    (homes / "alice").mkdir(parents=True)
    (homes / "alice" / "notes.txt").write_text("before")
    hub = hub_factory(extra_config=hub_theta_config(ctl, home_dir=str(homes / "{username}"), node_home="/home/alice"))
    assert hub.spawn("alice", RTX).status_code in (201, 202)
    hub.wait_ready("alice", timeout=90)
    [node] = ctl.nodes.values()
    ctl._docker("exec", node.container, "sh", "-c", "echo written on the node > /home/alice/notes.txt")
    hub.restart()  # the hub's memory is gone; the server runs on
    assert hub.server_model("alice")["ready"]
    hub.stop_server("alice")
    assert (homes / "alice" / "notes.txt").read_text() == "written on the node\n"
    assert node.status == "deleted" and not any((hub.workdir / "hybridhub-theta-keys").iterdir())
    assert "PRIVATE KEY" not in hub.log() and "cannot be copied back" not in hub.log()


def test_orphans_deleted_at_start_and_a_deployment_deleted_outside_ends_the_server(theta_controller, hub_factory):  # noqa: F811
    ctl = theta_controller
    config = hub_theta_config(ctl) + "c.Spawner.poll_interval = 1\n"
    hub_id = backend_traits(ctl)["hub_id"]
    client = ThetaClient(ctl.url, ctl.project, ctl.key)
    made = {}
    for who, name in (("orphan", launch_name(hub_id)), ("foreign", "someoneelse1")):
        request = deployment_body(template_id=TEMPLATE, resource_id="community_node/1", image=TEST_IMAGE, name=name,
                                  ssh_public_key="ssh-ed25519 AAAA x", display_name="x", max_price=1.0)
        made[who] = run_async(client.create_gpu_deployment(request))["id"]  # Chromium's loop runs here
    ctl.resources[0]["capacity"] = 3
    hub = hub_factory(extra_config=config)
    deadline = time.monotonic() + 20  # the runner's first pass, when the hub starts
    while ctl.nodes[made["orphan"]].status != "deleted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ctl.nodes[made["orphan"]].status == "deleted" and ctl.nodes[made["foreign"]].status == "running"
    assert hub.spawn("alice", RTX).status_code in (201, 202)
    hub.wait_ready("alice", timeout=90)
    [mine] = [i for i in ctl.nodes if i not in made.values()]
    ctl.lose_node(mine, "NodeLost: the community node went offline")
    hub.wait_stopped("alice", timeout=30)  # the hub's poll found the deployment gone
    [record] = SessionLog(Database(hub.db_url)).sessions("alice", limit=5)
    assert record.end_reason == "host lost" and "went offline" in record.end_detail, record.end_detail
    assert open_reservations(hub.db_url, "alice") == [] and ctl.nodes[made["foreign"]].status == "running"


def test_the_portal_puts_thetas_bill_beside_the_charges_and_the_dashboard_warns(theta_controller, hub_factory):  # noqa: F811
    from datetime import UTC, date, datetime

    from hybridhub.accounting.provider_bills import record

    ctl = theta_controller
    hub = hub_factory(extra_config=hub_theta_config(ctl) + "c.ProviderBillsRunner.interval = 0\n")  # we record
    assert hub.spawn("alice", RTX).status_code in (201, 202)
    hub.wait_ready("alice", timeout=90)
    hub.stop_server("alice")
    rows = usage_report(Database(hub.db_url), UsageFilter(resource_class="community"))
    charged = sum(r.cost for r in rows if r.group == "course-ml101")
    today = datetime.now(UTC).date()
    # what the hub's provider-bills runner records of Theta's billing/usage and balance
    record(Database(hub.db_url), "theta", {today: 0.75, date(2026, 1, 2): 9.0}, 5.0, 0.29,
           datetime.now(UTC).replace(tzinfo=None), ["community", "enterprise"])
    portal = f"{hub.url}/services/hybridhub-portal/"
    admin = {"Authorization": f"token {hub.user_token('admin')}"}
    r = requests.get(f"{portal}api/provider-bills", headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    [day] = r.json()["days"]  # the 2026-01-02 bill is outside the last 31 days
    assert day["day"] == today.isoformat() and day["charged"] == {"course-ml101": pytest.approx(charged, abs=1e-6)}
    assert day["provider_usd"] == 0.75 and day["difference_usd"] == pytest.approx(0.75 - charged, abs=1e-6)
    assert r.json()["balance"]["covers_next_day"] is False  # $5 < 24 h x $0.29
    page = requests.get(f"{portal}provider-bills", headers=admin, timeout=30).text
    assert 'data-group="course-ml101"' in page and "0.7500" in page and "will not cover them" in page
    dashboard = requests.get(portal, headers=admin, timeout=30).text
    assert "Theta balance" in dashboard and "It will not cover the running nodes for the next 24 hours" in dashboard
    student = {"Authorization": f"token {hub.user_token('alice')}"}
    assert requests.get(f"{portal}api/provider-bills", headers=student, timeout=30).status_code == 403
    assert "Theta balance" not in requests.get(portal, headers=student, timeout=30).text
