"""The demo's simulated hardware: real "Free now" numbers, devices held until stop, 429 beyond capacity."""

import re

import pytest
import requests

from hybridhub.accounting.allocations import allocator_for
from hybridhub.hub.config import DEMO_INVENTORY, DEMO_USER_PASSWORD

pytestmark = pytest.mark.usefixtures("hub_prereqs")

RTX4090 = {"class": "community", "model": "rtx4090", "hours": 1}

#: Extra hub config (read after jupyterhub_config.py): every ``asyncio.to_thread`` call in the
#: hub notes its function in a file, and the objects then frozen out of garbage collection are logged.
HOPS = """
import gc as _gc
print("hybridhub-test: frozen objects:", _gc.get_freeze_count(), flush=True)
import asyncio as _aio
_hh_to_thread = _aio.to_thread
async def _hh_noted(func, /, *args, **kwargs):
    with open({path!r}, "a") as out:
        out.write(getattr(func, "__qualname__", repr(func)) + "\\n")
    return await _hh_to_thread(func, *args, **kwargs)
_aio.to_thread = _hh_noted
"""


@pytest.fixture(scope="module")
def hub(hub_prereqs, hub_db_url, tmp_path_factory):
    from tests.fixtures.hub import Hub, _stop_user_processes

    workdir = tmp_path_factory.mktemp("hub")
    hub = Hub(workdir, db_url=hub_db_url, env={"HYBRIDHUB_DEMO_INVENTORY": "1"},
              extra_config=HOPS.format(path=str(workdir / "hops.log"))).start()
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


def logged_in(hub, user: str) -> requests.Session:
    s = requests.Session()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', s.get(f"{hub.url}/hub/login", timeout=30).text).group(1)
    s.post(f"{hub.url}/hub/login", data={"username": user, "password": DEMO_USER_PASSWORD, "_xsrf": xsrf}, timeout=30)
    return s


def free_now_in_picker(hub, user: str, offering: str) -> str:
    page = logged_in(hub, user).get(f"{hub.url}/hub/spawn", timeout=60).text
    row = re.search(rf'data-offering="{re.escape(offering)}".*?<td class="free-now">\s*(.*?)\s*</td>', page, re.S)
    return row.group(1)


def test_launches_hold_simulated_devices_and_the_one_beyond_gets_429(hub):
    total = sum(DEMO_INVENTORY["community/rtx4090"].values())
    assert total == 4
    assert free_now_in_picker(hub, "alice", "community/rtx4090") == "4"
    assert free_now_in_picker(hub, "alice", "enterprise/h100") == "16"

    assert hub.spawn("alice", {**RTX4090, "count": 2, "group": "course-ml101"}).status_code in (201, 202)
    hub.wait_ready("alice")
    assert free_now_in_picker(hub, "bob", "community/rtx4090") == "2"
    assert hub.spawn("carol", {**RTX4090, "count": 2, "group": "lab-vision"}).status_code in (201, 202)
    hub.wait_ready("carol")

    refused = hub.spawn("bob", {**RTX4090, "count": 1, "group": "course-ml101"})
    assert refused.status_code == 429, refused.text
    assert refused.headers.get("Retry-After") == "60"
    assert "No capacity for 1 x RTX 4090" in refused.json()["message"]
    assert hub.server_model("bob") is None

    held = allocator_for(hub.db_url).active()
    assert {a.username for a in held} == {"alice", "carol"} and len(held) == 4
    assert all(a.gpu_uuid.startswith("SIM-") for a in held)

    hub.stop_server("alice")
    assert free_now_in_picker(hub, "bob", "community/rtx4090") == "2"
    assert hub.spawn("bob", {**RTX4090, "count": 2, "group": "course-ml101"}).status_code in (201, 202)
    hub.wait_ready("bob")
    for user in ("bob", "carol"):
        hub.stop_server(user)
    assert free_now_in_picker(hub, "alice", "community/rtx4090") == "4"


def test_the_picker_page_reads_in_two_worker_thread_calls_whatever_the_offerings(hub):
    """Under a lecture hall's load every thread hop queues: the spawn page makes two, one for
    the free counts of all offerings and one for the picker's and the page's reads (banners),
    not two per offering plus one per page variable."""
    session = logged_in(hub, "alice")
    hops = hub.workdir / "hops.log"
    hops.write_text("")
    page = session.get(f"{hub.url}/hub/spawn", timeout=60)
    assert page.status_code == 200 and page.text.count('<td class="free-now">') >= 6
    assert sorted(hops.read_text().split()) == sorted(
        ["free_counts.<locals>.<lambda>", "HybridSpawner._picker_reads"])


def test_the_hub_starts_with_its_startup_objects_out_of_garbage_collection(hub):
    """A full collection walks every tracked object while the loop waits (130 ms here, in the
    middle of a lecture hall's logins); the hub's config freezes what start-up made."""
    frozen = re.search(r"hybridhub-test: frozen objects: (\d+)", hub.log())
    assert frozen and int(frozen.group(1)) > 50_000


def test_a_later_launch_runs_in_the_process_started_ahead_and_answers(hub):
    """LocalBackend.prestart: after one launch a server process waits, imported; the next
    launch is handed to it, and it serves through the hub like a cold one."""
    for _ in range(2):
        assert hub.spawn("dave", {**RTX4090, "count": 1, "group": "lab-vision"}).status_code in (201, 202)
        hub.wait_ready("dave")
        hub.stop_server("dave")
    assert "started ahead" in hub.log()
