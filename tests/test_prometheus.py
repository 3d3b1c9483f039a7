"""A real Prometheus (Debian's) scrapes the hub and the meter and portal services with a hub token,
after a launch, a refusal and meter ticks; every ``hybridhub_*`` family, the shipped alerts and every
query of the shipped Grafana dashboard return data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from importlib.resources import files
from pathlib import Path

import pytest
import requests

from tests.fixtures.env import require
from tests.fixtures.hub import Hub, _stop_user_processes, free_port

pytestmark = pytest.mark.usefixtures("hub_prereqs")

SHARE = files("hybridhub") / "share"
ALERTS = Path(str(SHARE / "prometheus" / "alerts.yml"))
DASHBOARD = Path(str(SHARE / "grafana" / "hybridhub.json"))
RTX4090 = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}
TRN = {"class": "aws", "model": "trn1.32xlarge", "count": 1, "hours": 1, "group": "course-ml101"}
#: Every family hybridhub exports once a server ran, one launch was refused and the meter charged.
FAMILIES = {
    "hybridhub_admissions_total", "hybridhub_refusals_total", "hybridhub_spawn_duration_seconds_count",
    "hybridhub_running_servers", "hybridhub_running_accelerators", "hybridhub_picker_render_seconds_count",
    "hybridhub_meter_tick_seconds_count", "hybridhub_meter_last_tick_timestamp_seconds",
    "hybridhub_accelerator_hours_total", "hybridhub_money_charged_total", "hybridhub_mails_sent_total",
    "hybridhub_budget_used_ratio",
}


def tools() -> None:
    require(shutil.which("prometheus") is not None and shutil.which("promtool") is not None,
            "Debian's prometheus and promtool (scripts/setup.sh --test)")


def test_promtool_accepts_the_shipped_alerts():
    tools()
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 4 rules found" in out.stdout, out.stdout + out.stderr


def scrape_config(hub: Hub, token_file: Path) -> dict:
    target = hub.url.removeprefix("http://")
    jobs = {"hub": "/hub/metrics", "meter": "/services/hybridhub-meter/metrics",
            "portal": "/services/hybridhub-portal/metrics"}
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}],
             "authorization": {"credentials_file": str(token_file)}}
            for job, path in jobs.items()
        ],
    }


@pytest.fixture
def prometheus(hub_factory, tmp_path):
    """A hub metering every second and a Prometheus scraping it; yields (hub, query)."""
    tools()
    hub = hub_factory(env={"HYBRIDHUB_METER_INTERVAL": "1", "HYBRIDHUB_COURSE_SCHEDULER": "0"})
    token_file = tmp_path / "token"
    token_file.write_text(hub.token)
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(hub, token_file)))  # JSON is YAML
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)

    def query(expr: str) -> list:
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]["result"]

    try:
        yield hub, query
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        _stop_user_processes(hub.workdir)


def eventually(query, expr: str, timeout: float = 40) -> list:
    """The result of ``expr`` once it is not empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(expr)
        except requests.ConnectionError:  # Prometheus still starting
            result = []
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no data for {expr}")


def test_services_metrics_need_a_token_with_read_metrics(prometheus):
    hub, _query = prometheus
    for service in ("hybridhub-meter", "hybridhub-portal"):
        url = f"{hub.url}/services/{service}/metrics"
        assert requests.get(url, timeout=30).status_code == 403
        weak = hub.user_token("alice", scopes=["read:users!user"])
        assert requests.get(url, headers={"Authorization": f"token {weak}"}, timeout=30).status_code == 403
        ok = requests.get(url, headers={"Authorization": f"Bearer {hub.token}"}, timeout=30)
        assert ok.status_code == 200 and "hybridhub_" in ok.text, ok.text


def test_prometheus_scrapes_every_series_and_every_dashboard_query_has_data(prometheus):
    hub, query = prometheus
    for job in ("hub", "meter", "portal"):
        assert eventually(query, f'up{{job="{job}"}} == 1'), job
    assert hub.signed_in("alice").get(f"{hub.url}/hub/spawn", timeout=60).status_code == 200  # the picker
    assert hub.spawn("alice", RTX4090).status_code in (201, 202)
    hub.wait_ready("alice")
    assert hub.spawn("bob", TRN).status_code == 403  # over budget
    eventually(query, 'jupyterhub_server_spawn_duration_seconds_count{status="failure", reason="budget"}')
    eventually(query, 'hybridhub_refusals_total{reason="budget", offering="aws/trn1.32xlarge"}')
    eventually(query, 'hybridhub_running_accelerators{class="community", offering="community/rtx4090"} == 1')
    eventually(query, 'hybridhub_money_charged_total{class="community", group="course-ml101"} > 0')
    for family in sorted(FAMILIES):
        eventually(query, family)
    names = set(requests.get(f"{hub.url}/hub/metrics", timeout=30,
                             headers={"Authorization": f"token {hub.token}"}).text.split())
    assert not any("alice" in n or "bob" in n for n in names if n.startswith("hybridhub_"))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    for expr in exprs:
        eventually(query, expr, timeout=20)
    hub.stop_server("alice")
