"""hybridhub inside JupyterLab: the portal's session endpoint, the server extension, the Lab UI.

The end-to-end test starts a real hub (local backend), spawns a server that loads the
installed ``hybridhub_lab`` server extension and prebuilt Lab extension, and drives
Debian's Chromium: the status item shows the hardware, pushing the group's budget past
80 % in the database brings a toast, and a used-up budget brings "stopping in N min"
before the meter stops the server.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from hybridhub.accounting.courses import CourseSchedule, reservation_key
from hybridhub.accounting.db import Database
from hybridhub.accounting.lab_session import session_state
from hybridhub.accounting.ledger import Accounting
from hybridhub.accounting.models import Budget
from hybridhub.accounting.periods import to_datetime
from hybridhub.catalog import load_catalog
from hybridhub.hub.config import DEMO_USER_PASSWORD
from hybridhub.web.app import SERVICE_NAME
from hybridhub.web.lab import may_read_session
from hybridhub_lab.upstream import PortalUnavailable, SessionSource, session_url
from tests.fixtures.browser import login
from tests.fixtures.courses import start_course_session, stop_all_servers
from tests.fixtures.docker import h100_host, hub_docker_config, remove_labelled
from tests.fixtures.env import docs_artifact, require

LABEXT = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "hybridhub-lab" / "package.json"
SERVER_CONFIG = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "hybridhub_lab.json"
H100_X2 = {"class": "enterprise", "model": "h100", "count": 2, "hours": 1, "group": "lab-vision"}
GRACE = 20.0
LAB_INTERVAL = 2.0


# ---------------------------------------------------------------- scope handling (no hub)


SERVER_TOKEN = {"kind": "user", "name": "alice",
                "scopes": ["access:servers!server=alice/", "users:activity!user=alice"]}


@pytest.mark.parametrize(("model", "user", "server", "allowed"), [
    (SERVER_TOKEN, "alice", "", True),                 # a server reads its own session
    (SERVER_TOKEN, "alice", "gpu", False),             # ...not its owner's other server
    (SERVER_TOKEN, "bob", "", False),                  # ...nor another user's
    ({**SERVER_TOKEN, "scopes": ["users:activity!user=alice"]}, "alice", "", False),
    ({"kind": "user", "name": "alice", "scopes": ["access:servers!user=alice"]}, "alice", "gpu", True),
    ({"kind": "user", "name": "alice", "scopes": ["access:servers!user=alice"]}, "bob", "", False),
    ({"kind": "user", "name": "bob", "scopes": ["access:servers"]}, "alice", "", False),
    ({"kind": "service", "name": "alice", "scopes": ["access:servers"]}, "alice", "", False),
])
def test_only_the_servers_owner_with_access_to_it_reads_its_session(model, user, server, allowed):
    assert may_read_session(model, user, server) is allowed


def test_session_url_quotes_names():
    assert session_url("http://h/services/p/", "a b", "x/y") == (
        "http://h/services/p/api/users/a%20b/session?server=x%2Fy")


async def test_one_upstream_request_per_interval_and_back_off_when_down():
    now = [1000.0]
    answers: list[object] = [{"n": 1}, OSError("down"), OSError("down"), {"n": 2}]

    async def fetch():
        await asyncio.sleep(0.01)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    src = SessionSource("http://portal", "secret", min_interval=30, max_backoff=100,
                        clock=lambda: now[0], fetch=fetch)
    assert "secret" not in repr(src)
    results = await asyncio.gather(*(src.get() for _ in range(20)))  # 20 tabs at once
    assert src.requests == 1 and all(r == ({"n": 1}, False) for r in results)
    now[0] += 29
    assert await src.get() == ({"n": 1}, False) and src.requests == 1
    now[0] += 1  # 30 s: one new request, which fails; the last answer is served as stale
    assert await src.get() == ({"n": 1}, True) and src.requests == 2
    assert src.retry_after == 60  # 30 * 2**1
    now[0] += 59
    assert await src.get() == ({"n": 1}, True) and src.requests == 2
    now[0] += 1
    assert await src.get() == ({"n": 1}, True) and src.requests == 3
    assert src.retry_after == 100  # 30 * 2**2 = 120, capped
    now[0] += 100
    assert await src.get() == ({"n": 2}, False) and src.requests == 4


async def test_nothing_cached_and_portal_down_is_unavailable():
    async def fetch():
        raise OSError("connection refused")

    src = SessionSource("http://portal", "t", min_interval=30, clock=lambda: 0.0, fetch=fetch)
    with pytest.raises(PortalUnavailable) as err:
        await src.get()
    assert err.value.retry_after == 60 and "OSError" in str(err.value)


# ---------------------------------------------------------------- the state (no hub)

COURSE = "course-ml101"


def _iso(epoch: float) -> str:
    return to_datetime(epoch).isoformat() + "Z"


def test_session_state_follows_the_meter_and_the_course_scheduler(db, clock):
    """The times the Lab shows are the ones the scheduler and the meter act on."""
    acct = Accounting(db, clock=clock, meter_interval=60, grace_seconds=300)
    acct.sync_groups({COURSE: ["s01", "ivy"]}, kinds={COURSE: "course"})
    acct.ensure_budget(COURSE, "community", 10, kind="course")
    schedule = CourseSchedule(acct, load_catalog(backend_override="local"), clock=clock)
    start = clock()
    info = schedule.create(group=COURSE, resource_class="community", model="rtx4090", count=1,
                           starts_at=start, ends_at=start + 30 * 60, title="Lab 3", created_by="ivy")
    schedule.begin(info.id, ["s01", "ivy"], {"kind": "course", "instructors": ["ivy"]})
    rid = acct.admit(username="s01", group=COURSE, resource_class="community", model="rtx4090",
                     count=1, hours=0.5, idempotency_key=reservation_key(info.id, "s01"))
    acct.mark_running(rid)

    state = session_state(acct, "s01", "")
    assert state["reservation"]["id"] == rid and state["reservation"]["model"] == "rtx4090"
    assert state["course"]["ends_at"] == state["ends_at"] == state["stop_at"] == _iso(start + 1800)
    assert state["warnings"] == []
    assert session_state(acct, "ivy", "")["reservation"] is None  # nothing running for ivy

    clock.advance(20 * 60 + 1)  # 10 min left: the scheduler warns, and so does the Lab
    assert [w.minutes for w in schedule.warnings()] == [10]
    assert [w["id"] for w in session_state(acct, "s01", "")["warnings"]] == [f"course:{info.id}:10"]
    clock.advance(8 * 60)
    assert [w.minutes for w in schedule.warnings()] == [2]
    assert [w["id"] for w in session_state(acct, "s01", "")["warnings"]] == [
        f"course:{info.id}:10", f"course:{info.id}:2"]

    acct.meter()  # charge the 28 minutes so far
    assert session_state(acct, "s01", "")["reservation"]["charged"] > 0
    left = acct.remaining(COURSE, "community")
    with db.session() as s:
        s.execute(update(Budget).where(Budget.id == left.budget_id).values(used=left.amount * 0.96))
    levels = [w["level"] for w in session_state(acct, "s01", "")["warnings"] if w["kind"] == "budget"]
    assert levels == ["80", "95"]
    with db.session() as s:
        s.execute(update(Budget).where(Budget.id == left.budget_id).values(used=left.amount))
    clock.advance(60)
    report = acct.meter()  # the meter announces the stop: grace from now
    (notice,) = [n for n in report.warnings if n.level == "stop_pending"]
    stop = next(w for w in session_state(acct, "s01", "")["warnings"] if w["kind"] == "stop")
    assert stop["stop_at"] == notice.stop_at.isoformat() + "Z"
    assert stop["message"].startswith("Stopping in 5 min: save your work.")
    # the course ends before the meter's stop: that is when the server goes
    assert session_state(acct, "s01", "")["stop_at"] == _iso(start + 1800)


# ---------------------------------------------------------------- through a real hub


def server_token(workdir: Path, user: str) -> str:
    """The ``JUPYTERHUB_API_TOKEN`` of ``user``'s running server, read from its process."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
            )
        except OSError:
            continue
        if env.get(b"JUPYTERHUB_USER") == user.encode() and str(workdir).encode() in env.get(b"HOME", b""):
            return env[b"JUPYTERHUB_API_TOKEN"].decode()
    raise AssertionError(f"no server process of {user} found")


LAB_ARGS = f"c.Spawner.args = ['--allow-root', '--HybridhubLab.min_interval={LAB_INTERVAL}']\n"


@pytest.fixture
def lab_hub(hub_factory):
    require(LABEXT.exists() and SERVER_CONFIG.exists(),
            f"the built Lab extension in {sys.prefix} (run scripts/setup.sh)")
    hub = hub_factory(
        env={"HYBRIDHUB_METER_INTERVAL": "2", "HYBRIDHUB_GRACE_SECONDS": str(GRACE)},
        extra_config=LAB_ARGS,
    )
    r = hub.spawn("carol", H100_X2)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("carol")
    return hub


def set_budget_share(hub, group: str, resource_class: str, share: float) -> None:
    """Put the group's budget at ``share`` of its amount used, directly in the database."""
    db = Database(hub.db_url)
    try:
        left = Accounting(db).remaining(group, resource_class)
        with db.session() as s:
            s.execute(update(Budget).where(Budget.id == left.budget_id).values(used=left.amount * share))
    finally:
        db.dispose()


def test_session_endpoints_answer_only_the_servers_owner(lab_hub):
    hub = lab_hub
    portal = f"{hub.url}/services/{SERVICE_NAME}/api/users"
    token = server_token(hub.workdir, "carol")
    # the server's own token: its own session, nothing else
    r = requests.get(f"{portal}/carol/session", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["reservation"]["model"], body["reservation"]["count"]) == ("h100", 2)
    assert body["reservation"]["group"] == "lab-vision" and body["session"]["resource_class"] == "enterprise"
    for path in ("dave/session", "carol/session?server=other"):
        r = requests.get(f"{portal}/{path}", headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 403, (path, r.text)
        assert "read the session" in r.json()["message"]
    # a student's personal token cannot read another user's session
    bob = hub.user_token("bob")
    r = requests.get(f"{portal}/carol/session", headers={"Authorization": f"token {bob}"}, timeout=30)
    assert r.status_code == 403 and r.json()["field"] is None
    assert requests.get(f"{portal}/carol/session", timeout=30).status_code == 403
    # the server extension answers its owner, and refuses everyone else
    own = hub.user_token("carol")
    r = requests.get(f"{hub.url}/user/carol/hybridhub/session",
                     headers={"Authorization": f"token {own}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["reservation"]["count"] == 2 and r.json()["stale"] is False
    r = requests.get(f"{hub.url}/user/carol/hybridhub/session",
                     headers={"Authorization": f"token {bob}"}, timeout=30, allow_redirects=False)
    assert r.status_code == 403, r.text


@pytest.mark.browser
def test_lab_shows_the_session_and_warns_before_the_stop(lab_hub, page, tmp_path):
    hub = lab_hub
    login(page, hub.url, "carol", DEMO_USER_PASSWORD)
    page.goto(f"{hub.url}/user/carol/lab")
    item = page.locator("#jp-main-statusbar .jp-hybridhub-status")
    item.wait_for(timeout=90_000)
    page.wait_for_function(
        "() => document.querySelector('#jp-main-statusbar .jp-hybridhub-status')"
        ".textContent.includes('left')", timeout=30_000)
    text = item.text_content()
    assert text.startswith("H100 × 2 · enterprise · "), text
    assert "min left" in text and "charged" in text, text
    # the panel: the full session record
    item.click()
    panel = page.locator(".jp-hybridhub-panel")
    panel.wait_for()
    assert "lab-vision" in panel.text_content() and "enterprise" in panel.text_content()

    set_budget_share(hub, "lab-vision", "enterprise", 0.85)
    toast = page.locator(".Toastify__toast", has_text="80% used")
    toast.wait_for(timeout=60_000)
    page.screenshot(path=str(docs_artifact("lab-session.png", tmp_path)))  # docs/lab.md, README

    set_budget_share(hub, "lab-vision", "enterprise", 1.0)  # used up: the meter gives GRACE s
    stopping = page.locator(".Toastify__toast", has_text="Stopping in")
    stopping.wait_for(timeout=60_000)
    warned = time.monotonic()
    assert stopping.get_by_role("button", name="Save all").count() == 1
    hub.wait_stopped("carol", timeout=GRACE + 60)
    lead = time.monotonic() - warned
    print(f"\n'stopping soon' shown {lead:.1f} s before the stop (grace {GRACE:g} s)")
    # the Lab learns of the notice within one polling interval (and one meter tick)
    assert lead >= GRACE - 2 * LAB_INTERVAL - 2 - 2


@pytest.mark.browser
def test_lab_warns_ten_minutes_before_the_course_session_ends(hub_factory, chromium, request):
    """A student in a course session sees the scheduler's 10-minute warning inside JupyterLab."""
    require(LABEXT.exists(), f"the built Lab extension in {sys.prefix} (run scripts/setup.sh)")
    hub = hub_factory(env={"HYBRIDHUB_COURSE_INTERVAL": "0.5"}, extra_config=LAB_ARGS)
    request.addfinalizer(lambda: stop_all_servers(hub))
    start_course_session(hub, "Quiz 3", ends_in=10 * 60 + 30)
    student = chromium.new_context(viewport={"width": 1400, "height": 1000})
    student.set_default_timeout(120_000)
    try:
        alice = student.new_page()
        login(alice, hub.url, "alice", DEMO_USER_PASSWORD)
        alice.wait_for_url("**/user/alice/lab**", timeout=180_000)
        toast = alice.locator(".Toastify__toast", has_text="Course session")
        toast.wait_for(timeout=120_000)  # due 30 s after the start, shown within one poll
        text = toast.text_content()
        assert "Quiz 3" in text and "in 10 min or less" in text and "save your work" in text, text
        status = alice.locator("#jp-main-statusbar .jp-hybridhub-status").text_content()
        assert "× 1 · community" in status and "min left" in status, status
    finally:
        student.close()


@pytest.mark.browser
@pytest.mark.docker
def test_lab_in_a_container_on_a_gpu_host_shows_its_gpus(hub_factory, docker_engines, page):
    """The same extension in a server the docker backend runs on a GPU host: the status item
    names the class and count, the panel the host and the GPUs it holds."""
    require(LABEXT.exists(), f"the built Lab extension in {sys.prefix} (run scripts/setup.sh)")
    label = f"labtest-{uuid.uuid4().hex[:6]}"
    hub = hub_factory(extra_config=hub_docker_config([h100_host(docker_engines.urls["h1"])], hub_label=label)
                      + LAB_ARGS.replace("c.Spawner.args", "c.DockerBackend.args"))
    try:
        r = hub.spawn("carol", H100_X2)
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("carol", timeout=180)
        login(page, hub.url, "carol", DEMO_USER_PASSWORD)
        page.goto(f"{hub.url}/user/carol/lab")
        item = page.locator("#jp-main-statusbar .jp-hybridhub-status")
        item.wait_for(timeout=120_000)
        page.wait_for_function(
            "() => document.querySelector('#jp-main-statusbar .jp-hybridhub-status')"
            ".textContent.includes('left')", timeout=60_000)
        assert item.text_content().startswith("H100 × 2 · enterprise · "), item.text_content()
        item.click()
        panel = page.locator(".jp-hybridhub-panel")
        panel.wait_for()
        assert "h1" in panel.text_content() and "GPU-" in panel.text_content(), panel.text_content()
    finally:
        hub.stop()
        remove_labelled(docker_engines, label)


# ---------------------------------------------------------------- how images get it


def test_user_data_installs_the_lab_extension_only_when_asked():
    from hybridhub.backends.ec2.userdata import BootstrapSpec, render_script

    wheel = "/opt/wheels/hybridhub_lab-0.1.0-py3-none-any.whl"
    with_lab = render_script(BootstrapSpec(env={}, home_storage="none", lab_spec=wheel))
    assert f"HH_LAB_SPEC={wheel}" in with_lab
    assert 'pip install --quiet "$HH_LAB_SPEC"' in with_lab
    subprocess.run(["bash", "-n"], input=with_lab, text=True, check=True)
    assert "HH_LAB_SPEC=''" in render_script(BootstrapSpec(env={}, home_storage="none"))


def test_ec2_instances_get_the_lab_distribution_never_the_hubs_wheel():
    from traitlets import TraitError

    from hybridhub.backends.ec2 import Ec2Backend

    with pytest.raises(TraitError, match="hybridhub-lab"):
        Ec2Backend(lab_extension_pip_spec="https://example.org/hybridhub-0.1.0-py3-none-any.whl")
    assert Ec2Backend(lab_extension_pip_spec="hybridhub-lab==0.1.0").lab_extension_pip_spec


def test_the_lab_wheel_alone_gives_a_notebook_python_the_extension(tmp_path, built_lab_wheel):
    """What an image recipe does: ``pip install hybridhub_lab-*.whl`` into its Python (the
    image's Jupyter stack is this venv's, so ``--no-deps`` only saves the look-up)."""
    image = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(image)], check=True)
    subprocess.run([str(image / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(built_lab_wheel)],
                   check=True)
    assert (image / "share/jupyter/labextensions/hybridhub-lab/package.json").exists()
    assert (image / "etc/jupyter/jupyter_server_config.d/hybridhub_lab.json").exists()
    import jupyter_server  # the image's own Jupyter stack: this venv's, on its path

    site = str(Path(jupyter_server.__file__).parents[1])
    env = {"PATH": f"{image / 'bin'}:/usr/bin:/bin", "PYTHONPATH": site, "HOME": str(tmp_path),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([str(image / "bin/python"), "-m", "jupyter_server.extension.serverextension", "list"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)  # no colours
    image_part = listing.split(f"Config dir: {image / 'etc/jupyter'}", 1)[1]
    assert "hybridhub_lab enabled" in image_part and "hybridhub_lab  OK" in image_part, listing
    hub_side = subprocess.run([str(image / "bin/python"), "-c", "import hybridhub"], capture_output=True,
                              env=env, cwd=tmp_path)
    assert hub_side.returncode != 0, "the image got the hub side"
