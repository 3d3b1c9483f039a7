"""A root hub's local servers run as their users' own Unix accounts (issue #29, finding 4).

Tried the way an attacker tries it: code run in bob's kernel, on the demo hub running as root,
goes after alice's home, her server's token (in her processes' environments), the hub's cookie
secret and databases.  Identity providers choose names: ``root`` must not become uid 0.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

import pytest
import requests

from tests.fixtures.env import require
from tests.fixtures.metrics import refused
from tests.fixtures.trust import run_in_server

OPTS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}



@pytest.fixture(autouse=True)
def root_hub() -> None:
    """Accounts of their own need a root hub (the suite runs as root; under CI anything else fails)."""
    require(os.geteuid() == 0, "root (a hub that runs servers as their users' own accounts)")

#: Run in bob's kernel: everything it can get at of alice's and of the hub's.
ATTACK = """
import json, os, pathlib
data, alice_home, alice_token = {data!r}, {home!r}, {token!r}
def attempt(f):
    try:
        f()
        return "read"
    except OSError as e:
        return type(e).__name__
found = {{"uid": os.getuid(), "euid": os.geteuid()}}
found["alice_home_list"] = attempt(lambda: os.listdir(alice_home))
found["alice_file"] = attempt(lambda: open(os.path.join(alice_home, "diary.txt")).read())
found["hub_dir_list"] = attempt(lambda: os.listdir(data))
for name in ("jupyterhub_cookie_secret", "jupyterhub.sqlite", "hybridhub.sqlite", "extra_config.py"):
    if os.path.exists(os.path.join(data, name)):
        found[name] = attempt(lambda: open(os.path.join(data, name), "rb").read())
leaks, readable = [], 0
for proc in pathlib.Path("/proc").iterdir():
    for part in ("environ", "cmdline"):
        try:
            raw = (proc / part).read_bytes()
        except OSError:
            continue
        readable += part == "environ"
        if alice_token.encode() in raw:
            leaks.append(f"{{proc.name}}/{{part}}")
found["token_leaks"], found["environs_read"] = leaks, readable
print(json.dumps(found))
"""


def uid_of(pid: int) -> int:
    """The real uid of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def server_processes(hub) -> list[tuple[int, bytes]]:
    """(uid, command line) of every local server process of ``hub``, the one started ahead included."""
    marker, found = str(hub.workdir).encode(), []
    for proc in Path("/proc").iterdir():
        try:
            environ, cmdline = (proc / "environ").read_bytes(), (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"hybridhub.backends.local" in cmdline and marker in cmdline + environ:
            found.append((uid_of(int(proc.name)), cmdline))
    return found


def test_code_in_bobs_kernel_cannot_read_alices_home_token_or_the_hubs_secrets(demo_hub):
    hub = demo_hub
    for user in ("alice", "bob"):
        assert hub.spawn(user, OPTS).status_code in (201, 202)
        hub.wait_ready(user)
    alice, bob = hub.server_model("alice"), hub.server_model("bob")
    token = json.loads(run_in_server(hub, alice, (
        "import json, os\nopen(os.path.expanduser('~/diary.txt'), 'w').write('private')\n"
        "print(json.dumps(os.environ['JUPYTERHUB_API_TOKEN']))")).strip().splitlines()[-1])

    home = hub.workdir / "homes" / "alice"
    found = json.loads(run_in_server(hub, bob, ATTACK.format(data=str(hub.workdir), home=str(home), token=token))
                       .strip().splitlines()[-1])

    bob_uid, alice_uid = pwd.getpwnam("bob").pw_uid, pwd.getpwnam("alice").pw_uid
    assert found["uid"] == found["euid"] == bob_uid != 0
    processes = server_processes(hub)  # alice's cold start, bob's taken by the process started ahead
    assert {uid for uid, _ in processes} - {0} == {alice_uid, bob_uid}, processes
    assert all(b"prestart" in cmd for uid, cmd in processes if uid == 0)  # root only while waiting
    assert found["alice_home_list"] == found["alice_file"] == "PermissionError"
    assert found["hub_dir_list"] == "PermissionError"
    assert found["jupyterhub_cookie_secret"] == found["jupyterhub.sqlite"] == "PermissionError"
    assert found.get("hybridhub.sqlite", "PermissionError") == "PermissionError"
    assert found["extra_config.py"] == "PermissionError"  # the test's admin token
    assert found["token_leaks"] == [] and found["environs_read"] > 0  # bob's own processes only
    info = home.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice_uid, 0o700)
    assert "started ahead" in hub.log()  # the second launch was taken by the process started ahead
    for user, model in (("alice", alice), ("bob", bob)):  # Lab keeps its workspace in its user's own home
        saved = requests.put(f"{hub.url}{model['url']}lab/api/workspaces/default", timeout=30,
                             json={"data": {}, "metadata": {"id": "default"}},
                             headers={"Authorization": f"token {hub.token}"})
        assert saved.status_code == 204, (user, saved.status_code, saved.text[:300])
        assert (hub.workdir / "homes" / user / ".jupyter" / "lab" / "workspaces").is_dir()
    page = hub.signed_in("alice").get(f"{hub.url}/hub/spawn", timeout=60)
    assert "shared machine" not in page.text


@pytest.mark.parametrize("name", ["root", "daemon", "ada.lovelace"])
def test_a_name_from_an_identity_provider_never_runs_as_a_system_account(demo_hub, name):
    """``root`` and ``daemon`` exist on every Debian host; a dot is not a Unix account name here."""
    assert demo_hub.api("POST", f"/users/{name}").status_code in (201, 409)
    assert demo_hub.api("POST", "/groups/course-ml101/users", json={"users": [name]}).status_code == 200
    words = "system account" if name != "ada.lovelace" else "not a Unix account name"
    refused(demo_hub, name, OPTS, 403, words, "account")  # counted on /hub/metrics with its reason
    with pytest.raises(KeyError):
        pwd.getpwnam("ada.lovelace")
