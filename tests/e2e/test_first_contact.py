"""The README's demo command, run as a newcomer runs it: a fresh clone and a bare shell.

Nothing from the test's own environment reaches the hub: the command runs under
``env -i`` with the minimal PATH of a root shell, from a ``git clone`` of this
checkout, and builds its own virtual environment there (as ``scripts/demo.sh`` does).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hybridhub.hub.config import DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.env import passable, require

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEMO_URL = "http://127.0.0.1:8000"
MINIMAL_ENV = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def readme_demo_command() -> str:
    """The demo line of the README's "The two commands" block, verbatim (its comment dropped)."""
    section = README.read_text().split("## The two commands", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "README.md: no command block under 'The two commands'"
    line = next(ln for ln in block.group(1).splitlines() if "demo" in ln)
    return line.split("#", 1)[0].strip()


@pytest.fixture(scope="module")
def readme_hub(tmp_path_factory) -> Iterator[dict]:
    """The README's demo command, started in a fresh clone under a minimal environment."""
    require(shutil.which("git") is not None, "git")
    clone = passable(tmp_path_factory.mktemp("newcomer")) / "hybridhub"  # as under /opt: users may pass
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    command = readme_demo_command()
    log_path = clone.parent / "demo.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in MINIMAL_ENV.items()), "/bin/bash", "-c", command],
            cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    info = {"clone": clone, "log": log_path, "proc": proc}
    try:
        deadline = started + 600  # includes the fresh venv's pip install
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{command!r} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{DEMO_URL}/hub/login", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"no login page at {DEMO_URL} after 600 s:\n{log_path.read_text()[-4000:]}")
        info["seconds_to_login"] = time.monotonic() - started
        print(f"README demo command to login page: {info['seconds_to_login']:.1f} s")
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for p in Path("/proc").iterdir():  # servers outlive the hub (cleanup_servers=False)
            try:
                if p.name.isdigit() and str(clone).encode() in (p / "environ").read_bytes():
                    os.kill(int(p.name), signal.SIGTERM)
            except OSError:
                pass


def test_readme_demo_reaches_jupyterlab_from_a_bare_shell(readme_hub, page):
    login(page, DEMO_URL, "alice", DEMO_USER_PASSWORD)
    page.goto(f"{DEMO_URL}/hub/spawn")
    page.get_by_label("RTX 4090", exact=True).check()
    started = time.monotonic()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/alice/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    print(f"Start to JupyterLab: {time.monotonic() - started:.1f} s")
    assert "Unhandled error" not in readme_hub["log"].read_text()
    home = readme_hub["clone"] / "var" / "homes" / "alice"  # a root demo runs alice's server as alice
    owner = pwd.getpwnam("alice").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (owner, 0o700)
    assert "lets no other account through" not in readme_hub["log"].read_text()

    page.goto(f"{DEMO_URL}/hub/home")
    page.click("#stop")
    page.wait_for_selector("#start", timeout=60_000)
    assert page.locator("#start").is_visible()
