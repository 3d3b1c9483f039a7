"""The slurm backend behind a real hub on a real two-node Slurm cluster (scripts/slurm.sh)."""

from __future__ import annotations

import calendar
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import Reservation
from hybridhub.accounting.sessions import END_BY_SERVICE, END_FAILED_START, END_HOST_LOST, SessionLog
from tests.fixtures.hub import hub_factory, hub_prereqs  # noqa: F401  (fixtures)
from tests.fixtures.slurm import hub_slurm_config
from tests.spawner.test_trust_hub import login

pytestmark = pytest.mark.slurm


def launch(model: str, count: int) -> dict:
    return {"class": "enterprise", "model": model, "count": count, "hours": 1, "group": "lab-vision"}


@pytest.fixture
def slurm_hub(hub_factory, slurm_cluster, tmp_path, request):  # noqa: F811  (fixture imported above)
    """A hub whose enterprise class runs on Slurm; its squeue fails while ``hiccup`` exists.

    Indirect parametrisation adds config lines.
    """
    hub_id = f"t{uuid.uuid4().hex[:6]}"
    hiccup = tmp_path / "squeue-fails"
    squeue = tmp_path / "squeue"
    squeue.write_text(
        f"#!/bin/sh\n[ -e {hiccup} ] && {{ echo 'squeue: socket timed out' >&2; exit 1; }}\nexec squeue \"$@\"\n"
    )
    squeue.chmod(0o755)
    squeue_cmd = [str(squeue), "--json", "--states=all", "--me"]
    base = hub_slurm_config(tmp_path, slurm_cluster.conf, hub_id, squeue=squeue_cmd)
    hub = hub_factory(
        extra_config="\n".join([
            base,
            "c.Spawner.poll_interval = 1",
            "c.JupyterHub.allow_named_servers = True",
            "c.SlurmBackend.gone_grace = 5",
            # the hub's reconciliation runner runs in every test here (it must never cancel the hub's own servers)
            "c.ReconcileRunner.interval = 1",
            "c.SlurmBackend.reconcile_grace = 3",
            *getattr(request, "param", []),
        ])
    )
    hub.hub_id, hub.hiccup = hub_id, hiccup
    yield hub
    hub.stop()
    for job in slurm_cluster.jobs(f"hybridhub-{hub_id}-"):
        if job["job_state"] in ("RUNNING", "PENDING"):
            slurm_cluster.cmd("scancel", str(job["job_id"]))


def through_proxy(hub, user: str, token: str) -> requests.Response:
    return requests.get(f"{hub.url}/user/{user}/api/status", headers={"Authorization": f"token {token}"}, timeout=10)


def reservations(hub, user: str) -> list[tuple[str, str | None]]:
    db = Database(hub.db_url)
    try:
        with db.session() as s:
            return [(r.state, r.close_reason) for r in s.query(Reservation).filter_by(username=user)]
    finally:
        db.dispose()


def session_records(hub, user: str) -> list:
    """``user``'s provenance records, newest first."""
    db = Database(hub.db_url)
    try:
        return SessionLog(db).sessions(user)
    finally:
        db.dispose()


def follow_progress(hub, user: str, token: str, want, timeout: float = 90) -> dict:
    """Follow the spawn page's progress stream until an event satisfies ``want``; that event."""
    with requests.get(
        f"{hub.api_url}/users/{user}/server/progress", headers={"Authorization": f"token {token}"},
        stream=True, timeout=timeout,
    ) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                if want(event):
                    return event
                assert not event.get("ready") and not event.get("failed"), event
    raise AssertionError("progress ended first")


def spawn_failure(hub, user: str, token: str, timeout: float = 90) -> str:
    """Follow the spawn page's progress stream until the spawn fails; its message."""
    return follow_progress(hub, user, token, lambda e: e.get("failed"), timeout)["message"]


def test_spawn_on_a_node_then_stop(slurm_hub, slurm_cluster):
    hub, user = slurm_hub, "carol"
    token = hub.user_token(user)
    r = hub.spawn(user, launch("h100", 2), token=token)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)

    (job,) = slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-{user}")
    assert job["job_state"] == "RUNNING" and job["nodes"] == "hhn1" and job["partition"] == "h100"
    assert job["gres_detail"] == ["gpu:h100:2(IDX:0-1)"]
    assert job["comment"] == f"hybridhub:{hub.hub_id}:{user}:"
    assert slurm_cluster.node("hhn1")["gres_used"].startswith("gpu:h100:2")
    # the proxy reaches the server, which only listens inside node hhn1's namespace
    assert through_proxy(hub, user, token).status_code == 200
    assert reservations(hub, user) == [("running", None)]
    # provenance: node, job id, the GRES with the GPU indices Slurm allocated, partition
    (rec,) = session_records(hub, user)
    assert (rec.host, rec.backend, rec.stopped_at) == ("hhn1", "slurm", None)
    assert rec.details["job_id"] == job["job_id"] and rec.details["partition"] == "h100"
    assert rec.details["gres"] == ["gpu:h100:2(IDX:0-1)"]
    # the job's environment is the one the hub built: no login shell (`su -`, whose profile
    # can stall a launch past BatchStartTimeout) and nothing of the hub's own environment
    env = slurm_cluster.server_env("hhn1", user)
    assert not {"SLURM_GET_USER_ENV", "LOGNAME", "MAIL", "SHELL"} & env.keys(), sorted(env)
    assert "HYBRIDHUB_DEMO_INVENTORY" not in env and "CONFIGPROXY_AUTH_TOKEN" not in env
    assert env["HOME"].endswith(f"/homes/{user}") and env["JUPYTERHUB_API_TOKEN"]

    hub.stop_server(user)
    done = slurm_cluster.wait_job(f"hybridhub-{hub.hub_id}-{user}", {"CANCELLED", "COMPLETED"}, timeout=30)
    assert done["job_id"] == job["job_id"]
    assert slurm_cluster.node("hhn1")["gres_used"].startswith("gpu:h100:0")
    assert [s for s, _ in reservations(hub, user)] == ["closed"]
    assert session_records(hub, user)[0].end_reason == END_BY_SERVICE  # hub.stop_server: the test-admin service


def test_capacity_is_429_with_retry_after(slurm_hub):
    hub = slurm_hub
    r = hub.spawn("dave", launch("a100", 2))
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("dave")
    token = hub.user_token("carol")
    r = hub.spawn("carol", launch("a100", 1), token=token)
    assert r.status_code == 429, r.text
    assert r.headers.get("Retry-After") == "60"
    assert "No capacity for 1 x A100 80GB" in r.json()["message"]
    hub.stop_server("dave")


QUEUED = ["c.SlurmBackend.fail_fast = False", "c.SlurmBackend.pending_timeout = 120", "c.Spawner.start_timeout = 150"]


def progress_until(hub, user: str, token: str, want, timeout: float = 60) -> dict:
    """Once the spawn is pending, the first progress event that satisfies ``want``."""
    deadline = time.monotonic() + timeout
    while (hub.server_model(user) or {}).get("pending") != "spawn":
        assert time.monotonic() < deadline, "the spawn never became pending"
        time.sleep(0.05)
    return follow_progress(hub, user, token, want, timeout)


@pytest.mark.parametrize("slurm_hub", [QUEUED], indirect=True)
def test_queued_launch_shows_position_and_estimated_start_then_runs(slurm_hub, slurm_cluster):
    hub = slurm_hub
    assert hub.spawn("dave", launch("a100", 2)).status_code in (201, 202)  # hhn2's two A100s
    hub.wait_ready("dave")
    token = hub.user_token("carol")
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(hub.spawn, "carol", launch("a100", 1), token=token)  # queued, not 429
        event = progress_until(hub, "carol", token, lambda e: "estimates the start" in e.get("message", ""))
        message = event["message"]
        assert message.startswith("Queued in partition a100: position 1, Slurm estimates the start at ")
        assert message.endswith(")") and "(PENDING" in message, message  # Slurm's reason, once it has one
        # Slurm's estimate: when dave's job reaches its time limit (his reserved hour)
        stamp = re.search(r"at (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", message).group(1)
        eta = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M"))
        assert 50 * 60 < eta - time.time() < 61 * 60, message
        (queued,) = [j for j in slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-carol") if j["job_state"] == "PENDING"]
        hub.stop_server("dave")  # frees the GPUs: the queued job starts
        assert posted.result().status_code in (201, 202)
    hub.wait_ready("carol", timeout=120)
    (running,) = [j for j in slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-carol") if j["job_state"] == "RUNNING"]
    assert running["job_id"] == queued["job_id"] and running["nodes"] == "hhn2"
    hub.stop_server("carol")


def test_status_hiccup_keeps_the_server(slurm_hub):
    hub, user = slurm_hub, "dave"
    token = hub.user_token(user)
    assert hub.spawn(user, launch("a100", 1), token=token).status_code in (201, 202)
    hub.wait_ready(user)
    hub.hiccup.touch()  # squeue now fails on every call
    deadline = time.monotonic() + 8  # > gone_grace, several hub polls
    while time.monotonic() < deadline:
        assert hub.server_model(user) is not None, hub.log()[-3000:]
        time.sleep(0.5)
    assert hub.log().count("assuming it still runs") >= 2
    hub.hiccup.unlink()
    assert hub.server_model(user)["ready"]
    assert through_proxy(hub, user, token).status_code == 200
    hub.stop_server(user)


def test_restarted_hub_readopts_the_job(slurm_hub, slurm_cluster):
    hub, user = slurm_hub, "carol"
    token = hub.user_token(user)
    assert hub.spawn(user, launch("h100", 1), token=token).status_code in (201, 202)
    hub.wait_ready(user)
    (before,) = slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-{user}")
    hub.restart()
    assert hub.server_model(user)["ready"], hub.log()[-3000:]
    assert through_proxy(hub, user, token).status_code == 200
    (after,) = slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-{user}")
    assert after["job_id"] == before["job_id"] and after["job_state"] == "RUNNING"
    hub.stop_server(user)
    assert slurm_cluster.wait_job(f"hybridhub-{hub.hub_id}-{user}", {"CANCELLED", "COMPLETED"})


def test_picker_shows_free_gpus_from_slurm(slurm_hub):
    hub = slurm_hub
    assert hub.spawn("dave", launch("a100", 1)).status_code in (201, 202)
    hub.wait_ready("dave")
    session, _ = login(hub, "carol")
    page = session.get(f"{hub.url}/hub/spawn", timeout=60)
    assert page.status_code == 200, page.text[:500]
    free = dict(re.findall(r'name="offering" value="enterprise/(\w+)".*?class="free-now">\s*(\S+)', page.text, re.S))
    assert free == {"h100": "4", "a100": "1"}, free  # h100: 4 on hhn1; a100: 2 on hhn2 minus dave's
    hub.stop_server("dave")


def submit_tagged(slurm_cluster, hub_id: str, user: str, partition: str) -> int:
    """A job carrying hub ``hub_id``'s tags for ``user``, submitted by hand (no hub knows it)."""
    out = slurm_cluster.cmd(
        "sbatch", "--parsable", f"--job-name=hybridhub-{hub_id}-{user}", f"--comment=hybridhub:{hub_id}:{user}:",
        f"--partition={partition}", "--time=5", "--output=/dev/null", "--wrap=sleep 300",
    )
    return int(out.strip().split(";")[0])


def job_states(slurm_cluster, *job_ids: int) -> dict[int, str]:
    return {j["job_id"]: j["job_state"] for j in slurm_cluster.jobs() if j["job_id"] in job_ids}


def test_reconciler_cancels_this_hubs_orphans_only(slurm_hub, slurm_cluster):
    """The runner hands SlurmBackend.reconcile the hub's servers: it cancels this hub's unknown jobs only."""
    hub, user = slurm_hub, "carol"
    other_hub = f"o{uuid.uuid4().hex[:6]}"
    token = hub.user_token(user)
    assert hub.spawn(user, launch("h100", 1), token=token).status_code in (201, 202)
    hub.wait_ready(user)
    (server_job,) = slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-{user}")
    orphan = submit_tagged(slurm_cluster, hub.hub_id, "ghost", "h100")  # this hub's tag, no such server
    twin = submit_tagged(slurm_cluster, hub.hub_id, user, "a100")  # carol's tag, but not her server's job
    foreign = submit_tagged(slurm_cluster, other_hub, "ghost", "a100")
    try:
        deadline = time.monotonic() + 30  # grace 3 s + passes every 1 s
        while time.monotonic() < deadline:
            states = job_states(slurm_cluster, orphan, twin, foreign, server_job["job_id"])
            if states[orphan] == "CANCELLED" and states[twin] == "CANCELLED":
                break
            time.sleep(0.5)
        assert states[orphan] == states[twin] == "CANCELLED", (states, hub.log()[-3000:])
        assert hub.log().count("Cancelled orphaned Slurm job") == 2
        assert "Reconcile: SlurmBackend with 1 known server(s)" in hub.log()
        time.sleep(3)  # more passes: the other hub's job and the hub's own server stay
        states = job_states(slurm_cluster, foreign, server_job["job_id"])
        assert states == {foreign: "RUNNING", server_job["job_id"]: "RUNNING"}, states
        assert hub.server_model(user)["ready"]
        assert through_proxy(hub, user, token).status_code == 200
        hub.stop_server(user)
    finally:
        slurm_cluster.cmd("scancel", str(foreign), str(orphan), str(twin))
    assert job_states(slurm_cluster, foreign)[foreign] in ("CANCELLED", "COMPLETING")


# Last on purpose: it kills a node, and a revived node may still fail the next jobs for a few seconds.
def test_node_crash_during_spawn_gives_node_fail_and_other_node_survives(slurm_hub, slurm_cluster):
    hub = slurm_hub
    try:
        assert hub.spawn("dave", launch("a100", 1)).status_code in (201, 202)
        hub.wait_ready("dave")
        # carol's named server "lab" runs on hhn1 when it dies
        assert hub.spawn("carol", launch("h100", 1), server="lab").status_code in (201, 202)
        hub.wait_ready("carol", "lab")
        (lab_job,) = slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-carol-lab")
        assert lab_job["comment"] == f"hybridhub:{hub.hub_id}:carol:lab" and lab_job["nodes"] == "hhn1"
        token = hub.user_token("carol")
        with ThreadPoolExecutor(1) as pool:  # the POST waits up to slow_spawn_timeout: crash meanwhile
            posted = pool.submit(hub.spawn, "carol", launch("h100", 1), token=token)
            slurm_cluster.wait_job(f"hybridhub-{hub.hub_id}-carol", {"RUNNING"}, timeout=60)
            # launched (a kill while slurmd still launches it makes Slurm requeue it instead of NODE_FAIL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    slurm_cluster.server_env("hhn1", "carol", server="")
                    break
                except LookupError:
                    time.sleep(0.05)
            t0 = time.monotonic()
            slurm_cluster.kill_node("hhn1")  # before its server can answer
            r = posted.result()
        # the failure reaches the user either in the POST's answer or on the spawn page
        message = r.json()["message"] if r.status_code == 503 else spawn_failure(hub, "carol", token)
        lost_after = time.monotonic() - t0
        assert "NODE_FAIL" in message, message
        assert hub.server_model("carol") is None
        print(f"node kill -> NODE_FAIL on the spawn page: {lost_after:.1f} s")
        # the running server on the lost node: the hub finds it gone, its record says host lost
        hub.wait_stopped("carol", "lab", timeout=60)
        print(f"node kill -> the running server on it reported lost, its reservation released: "
              f"{time.monotonic() - t0:.1f} s")
        records = {r.server_name: r for r in session_records(hub, "carol")}
        failed, lost = records[""], records["lab"]
        assert failed.end_reason == END_FAILED_START and "NODE_FAIL" in failed.end_detail, failed
        assert (lost.end_reason, lost.host, lost.details["job_id"]) == (END_HOST_LOST, "hhn1", lab_job["job_id"])
        assert "hhn1 lost: NODE_FAIL" in lost.end_detail and lost.stopped_at is not None, lost
        assert [s for s, _ in reservations(hub, "carol")] == ["closed", "closed"]
        # the server on the other node keeps running
        assert hub.server_model("dave")["ready"]
        assert through_proxy(hub, "dave", hub.user_token("dave")).status_code == 200
        hub.stop_server("dave")
    finally:
        slurm_cluster.revive()


@pytest.mark.parametrize("name", ["eve --partition=admin", "eve$(id)--qos=urgent"])
def test_a_hostile_user_name_never_reaches_sbatch(slurm_hub, slurm_cluster, tmp_path, name):
    """A name an identity provider chose: refused with a clear error, no job, no folder made."""
    from urllib.parse import quote

    hub = slurm_hub
    assert hub.api("POST", f"/users/{quote(name)}").status_code == 201
    assert hub.api("POST", "/groups/lab-vision/users", json={"users": [name]}).ok
    r = hub.spawn(quote(name), launch("h100", 1))
    assert 400 <= r.status_code < 500, r.text
    assert "cannot be used on the Slurm cluster" in r.json()["message"], r.text
    assert not [j for j in slurm_cluster.jobs(f"hybridhub-{hub.hub_id}-") if "eve" in j["name"]]
    assert not [p for p in tmp_path.rglob("eve*")], "a folder was made for a refused name"
    assert [s for s, _ in reservations(hub, name)] == ["closed"]  # released at once
