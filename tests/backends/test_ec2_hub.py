"""The ec2 class end to end through a real JupyterHub (tests.fixtures.hub) and a moto server.

EC2 itself is played by :class:`InstanceRunner`: when moto reports an instance of
this hub running, it runs the instance's user-data here (as cloud-init would), and
ends it when the instance is terminated.  The hub reaches the server at 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from hybridhub.backends.ec2 import TAG_HUB, TAG_USER
from hybridhub.backends.ec2.userdata import extract_script
from tests.fixtures.hub import free_port, hub_factory, hub_prereqs  # noqa: F401  (fixtures)
from tests.fixtures.moto import EC2_TEST_CATALOG, REGION

AWS = {"class": "aws", "model": "trn1", "count": 1, "hours": 1, "group": "course-ml101"}


class InstanceRunner:
    """Plays EC2 for one hub id: runs each running instance's user-data, kills it on terminate."""

    def __init__(self, moto, hub_id: str, workdir: Path):
        self.moto, self.hub_id, self.workdir = moto, hub_id, workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        ec2 = self.moto.client("ec2")
        while not self._stop.wait(0.1):
            resp = ec2.describe_instances(
                Filters=[{"Name": f"tag:{TAG_HUB}", "Values": [self.hub_id]}]
            )
            for inst in (i for r in resp["Reservations"] for i in r["Instances"]):
                iid, state = inst["InstanceId"], inst["State"]["Name"]
                if state == "running" and iid not in self.procs:
                    self.procs[iid] = self._boot(ec2, iid)
                elif state in ("terminated", "shutting-down", "stopped") and iid in self.procs:
                    self._kill(self.procs[iid])

    def _boot(self, ec2, iid: str) -> subprocess.Popen:
        attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        script = self.workdir / f"{iid}.sh"
        script.write_text(extract_script(base64.b64decode(attr["UserData"]["Value"]).decode()))
        env = {"PATH": os.environ["PATH"], "HH_FOREGROUND": "1", "LANG": "C.UTF-8"}
        return subprocess.Popen(
            ["bash", str(script)],
            env=env,
            start_new_session=True,
            stdout=open(self.workdir / f"{iid}.log", "wb"),
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def _kill(proc: subprocess.Popen):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self):
        self._stop.set()
        self.thread.join(5)
        for proc in self.procs.values():
            self._kill(proc)


def ec2_hub_config(
    moto, hub_id: str, workdir: Path, *, reconcile_interval: float = 300, **traits
) -> str:
    """Extra hub config: the aws class on Ec2Backend against moto, fast timings, the hub's reconciliation
    runner every ``reconcile_interval`` seconds (its first pass when the hub starts)."""
    port = free_port()
    settings = {
        "endpoint_url": moto.url,
        "region": REGION,
        "hub_id": hub_id,
        "describe_interval": 0.1,
        "ready_poll_interval": 0.1,
        "waiter_delay": 0.1,
        "boto_max_attempts": 1,
        "boot_timeout": 30.0,
        "server_ready_timeout": 60.0,
        "connect_host": "127.0.0.1",
        "bind_ip": "127.0.0.1",
        "notebook_port": port,
        "python_path": sys.executable,
        "unix_user": "",
        "instance_home_dir": str(workdir / "home"),
        "bootstrap_state_dir": str(workdir / "state"),
        "home_storage": "none",
        **traits,
    }
    lines = [
        "c.HybridSpawner.backend_override = ''",
        f"c.HybridSpawner.catalog = {EC2_TEST_CATALOG!r}",
    ]
    lines += [f"c.Ec2Backend.{k} = {v!r}" for k, v in settings.items()]
    lines += [f"c.ReconcileRunner.interval = {reconcile_interval!r}"]
    return "\n".join(lines) + "\n"


def open_reservations(db_url: str, user: str):
    from hybridhub.accounting.db import Database
    from hybridhub.accounting.ledger import Accounting

    return Accounting(Database(db_url)).open_reservations(user)


@pytest.fixture
def ec2_hub_setup(moto, ec2_factory, tmp_path):
    """A unique hub id, the Neuron AMI parameter seeded (by ec2_factory), and a work dir."""
    return f"hub-{uuid.uuid4().hex[:8]}", tmp_path


def test_spawn_through_hub_runs_user_data_and_stops(moto, ec2_hub_setup, hub_factory):  # noqa: F811  (fixture imported above)
    hub_id, work = ec2_hub_setup
    runner = InstanceRunner(moto, hub_id, work)
    try:
        hub = hub_factory(extra_config=ec2_hub_config(moto, hub_id, work, reconcile_interval=0.5))
        token = hub.user_token(
            "alice", scopes=["access:servers!user=alice", "read:servers!user=alice"]
        )
        events: list[dict] = []

        def follow_progress():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with requests.get(
                        f"{hub.api_url}/users/alice/server/progress",
                        stream=True,
                        headers={"Authorization": f"token {token}"},
                        timeout=60,
                    ) as r:
                        for line in r.iter_lines():
                            if line.startswith(b"data:"):
                                events.append(json.loads(line[5:]))
                        if events:
                            return
                except requests.RequestException:
                    pass
                time.sleep(0.05)

        spawned: list = []
        poster = threading.Thread(
            target=lambda: spawned.append(hub.spawn("alice", AWS)), daemon=True
        )
        poster.start()
        follow_progress()  # the spawn page's event stream, while the launch runs
        poster.join(60)
        assert spawned[0].status_code in (201, 202), spawned[0].text
        hub.wait_ready("alice", timeout=90)
        # the hub's proxy routes to the single-user server the user-data started
        r = requests.get(
            f"{hub.url}/user/alice/api", headers={"Authorization": f"token {token}"}, timeout=10
        )
        assert r.status_code == 200 and "version" in r.json()
        [inst] = moto.instances(tags={TAG_HUB: hub_id, TAG_USER: "alice"})
        assert inst["InstanceType"] == "trn1.2xlarge"
        assert len(open_reservations(hub.db_url, "alice")) == 1
        # the runner hands the EC2 hook the hub's server with its instance: it stays
        seen = hub.log().count("Reconcile: Ec2Backend with 1 known server")
        deadline = time.monotonic() + 10
        while hub.log().count("Reconcile: Ec2Backend with 1 known server") < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hub.log().count("Reconcile: Ec2Backend with 1 known server") >= seen + 2, hub.log()[-3000:]
        assert [i["InstanceId"] for i in moto.instances("running", tags={TAG_HUB: hub_id})] == [inst["InstanceId"]]
        assert "Terminating" not in hub.log()
        hub.stop_server("alice")
        assert moto.instances(tags={TAG_HUB: hub_id}) == []
        assert open_reservations(hub.db_url, "alice") == []
        assert inst["InstanceId"] in hub.log()
        assert token not in hub.log()
        messages = [e.get("message", "") for e in events]
        assert any("Requesting a trn1.2xlarge" in m for m in messages), messages
        assert any("waiting for Jupyter" in m for m in messages), messages
    finally:
        runner.close()


def test_capacity_failure_through_hub_releases_reservation(moto, ec2_hub_setup, hub_factory):  # noqa: F811  (fixture imported above)
    hub_id, work = ec2_hub_setup
    hub = hub_factory(extra_config=ec2_hub_config(moto, hub_id, work))
    moto.fail(
        "RunInstances",
        "InsufficientInstanceCapacity",
        "no trn1 capacity in us-east-1a",
        status=500,
        times=5,
    )
    r = hub.spawn("alice", AWS)
    assert r.status_code == 429, r.text
    assert "no trn1.2xlarge capacity" in r.json()["message"]
    assert r.headers.get("Retry-After") == "300"
    assert hub.server_model("alice") is None
    assert moto.instances(tags={TAG_HUB: hub_id}) == []
    assert open_reservations(hub.db_url, "alice") == []


def test_hub_killed_mid_launch_leaks_nothing(moto, ec2_hub_setup, hub_factory):  # noqa: F811  (fixture imported above)
    """Kill -9 the hub while it waits for the instance, start it again: the hub's reconciliation runner
    terminates the orphan and closes the reservation; it spared the launch while in flight."""
    hub_id, work = ec2_hub_setup
    hub = hub_factory(start=False)
    hub_db = hub.db_url
    extra = ec2_hub_config(
        moto, hub_id, work, reconcile_interval=0.5, server_ready_timeout=300.0
    )  # nothing runs the user-data: never ready
    (hub.workdir / "extra_config.py").write_text(
        (hub.workdir / "extra_config.py").read_text() + extra
    )
    hub.start()
    threading.Thread(target=lambda: hub.spawn("alice", AWS), daemon=True).start()
    deadline = time.monotonic() + 30
    while not moto.instances("running", tags={TAG_HUB: hub_id}) and time.monotonic() < deadline:
        time.sleep(0.1)
    [inst] = moto.instances("running", tags={TAG_HUB: hub_id})
    time.sleep(2.0)  # several runner passes while the launch is in flight
    assert [i["InstanceId"] for i in moto.instances(tags={TAG_HUB: hub_id})] == [inst["InstanceId"]]
    assert "Terminating" not in hub.log()
    assert len(open_reservations(hub_db, "alice")) == 1

    os.killpg(hub.proc.pid, signal.SIGKILL)  # the hub dies mid-launch
    hub.proc.wait(10)
    hub.proc = None
    assert moto.instances("running", tags={TAG_HUB: hub_id})  # leaked, for now

    hub.start()
    deadline = time.monotonic() + 30
    while moto.instances(tags={TAG_HUB: hub_id}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert moto.instances(tags={TAG_HUB: hub_id}) == [], hub.log()[-3000:]
    while open_reservations(hub_db, "alice") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_reservations(hub_db, "alice") == []
    assert hub.server_model("alice") is None
    assert "Closing reservation" in hub.log() and "Terminating 1 instance(s)" in hub.log()
