"""hybridhub as a site installs it: the wheel in a fresh venv, added to a hub that is not this checkout.

The site config is the README's "Use it in your own JupyterHub" snippet, verbatim, plus
what any test hub needs (ports, a test service token, running as root).  The hub runs
from the fresh venv with a minimal PATH, in a folder outside the checkout, so templates,
migrations and services can only come from the installed package.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from jupyterhub.utils import random_port

from tests.fixtures.env import passable, process_environments
from tests.fixtures.hub import _stop_user_processes

ROOT = Path(__file__).resolve().parents[2]
MINIMAL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def readme_site_config() -> str:
    """The Python block of the README's "Use it in your own JupyterHub" section."""
    section = (ROOT / "README.md").read_text().split("## Use it in your own JupyterHub", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "README.md: no python block under 'Use it in your own JupyterHub'"
    return block.group(1)


@pytest.fixture(scope="module")
def site_venv(tmp_path_factory, built_wheel, built_lab_wheel) -> Path:
    """A fresh virtual environment outside the checkout with the hybridhub wheel installed (and the
    hybridhub-lab wheel it requires, given beside it as a site without an index would)."""
    work = passable(tmp_path_factory.mktemp("site"))  # a root hub's users run its Python, as under /opt
    venv = work / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, env={"PATH": MINIMAL_PATH})
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(built_wheel), str(built_lab_wheel)], check=True,
                   env={"PATH": MINIMAL_PATH, "HOME": os.environ.get("HOME", "/root")})
    return venv


@contextmanager
def running_site_hub(venv: Path, tmp_path: Path, site_lines: str, catalog: str | None = None) -> Iterator[dict]:
    """A hub started from the site's own config and ``venv`` (nothing from this checkout):
    ``site_lines`` of the site's own, then the README's snippet with ``catalog`` (YAML) as its catalog file."""
    etc = tmp_path / "etc"
    etc.mkdir()
    token = secrets.token_hex(16)
    port = random_port()
    db_url = f"sqlite:///{tmp_path / 'hybridhub.sqlite'}"
    config = readme_site_config().replace("postgresql+psycopg://hub@db.example.edu/hybridhub", db_url)
    if catalog is None:
        config = config.replace('catalog_file="/etc/hybridhub/catalog.yaml", ', "")
    else:
        (etc / "catalog.yaml").write_text(catalog)
        config = config.replace("/etc/hybridhub/catalog.yaml", str(etc / "catalog.yaml"))
    (etc / "jupyterhub_config.py").write_text(
        f"c.JupyterHub.hub_port = {random_port()}\n"
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{random_port()}'\n"
        + site_lines +
        "c.Spawner.args = ['--allow-root']\n"
        "c.JupyterHub.authenticator_class = 'dummy'  # the site's own SSO in real life\n"
        "c.Authenticator.allow_all = True\n"
        + config
        + f"\nc.JupyterHub.bind_url = 'http://127.0.0.1:{port}'  # set after add_hybridhub, as a site may\n"
        + f"\nc.JupyterHub.services.append({{'name': 'site-admin', 'api_token': {token!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'site-admin', 'services': ['site-admin'], "
        "'scopes': ['admin:users', 'admin:servers', 'admin:groups', 'tokens', 'custom:quota:admin', "
        "'access:services', 'access:servers']})\n"
    )
    log_path = tmp_path / "hub.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "jupyterhub"), "-f", str(etc / "jupyterhub_config.py")],
            cwd=tmp_path, env={"PATH": MINIMAL_PATH, "HOME": str(tmp_path)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"site hub exited:\n{log_path.read_text()[-4000:]}"
            try:
                if requests.get(f"{url}/hub/api/", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        yield {"url": url, "token": token, "log": log_path, "venv": venv, "workdir": tmp_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        _stop_user_processes(tmp_path)


@pytest.fixture
def site_hub(site_venv, hub_prereqs, tmp_path) -> Iterator[dict]:
    """The README's site hub, every offering on the local backend (no GPU hosts in a test)."""
    site_lines = ("c.HybridSpawner.backend_override = 'local'  # no GPU hosts in a test\n"
                  f"c.LocalBackend.home_root = {str(passable(tmp_path) / 'homes')!r}\n"
                  "c.LocalBackend.create_system_users = True  # the site's accounts, as its IdP names them\n")
    with running_site_hub(site_venv, tmp_path, site_lines) as hub:
        yield hub


def site_admin(hub: dict) -> requests.Session:
    """A REST session with the site's admin service token."""
    api = requests.Session()
    api.headers["Authorization"] = f"token {hub['token']}"
    return api


def add_lab_group(hub: dict, api: requests.Session, user: str, budget: str = "5") -> None:
    """``user`` in group lab-site (kind lab) with a community budget, set through the installed CLI."""
    url = hub["url"]
    assert api.post(f"{url}/hub/api/users/{user}").status_code == 201
    assert api.post(f"{url}/hub/api/groups/lab-site", json={"users": [user]}).status_code == 201
    assert api.put(f"{url}/hub/api/groups/lab-site/properties", json={"kind": "lab"}).ok
    cli = subprocess.run(
        [str(hub["venv"] / "bin" / "hybridhub-quota"), "--url", f"{url}/services/hybridhub-portal/",
         "--token", hub["token"], "set", "lab-site", "community", budget],
        capture_output=True, text=True, env={"PATH": MINIMAL_PATH},
    )
    assert cli.returncode == 0, cli.stderr


def wait_ready(hub: dict, api: requests.Session, user: str) -> None:
    """Until the user's default server is ready (two minutes at most)."""
    deadline = time.monotonic() + 120
    while not api.get(f"{hub['url']}/hub/api/users/{user}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, hub["log"].read_text()[-4000:]
        time.sleep(0.2)


def test_wheel_installed_hub_spawns_through_rest(site_hub):
    url, venv = site_hub["url"], site_hub["venv"]
    api = site_admin(site_hub)
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import hybridhub; print(hybridhub.__file__)"],
                           capture_output=True, text=True, check=True, env={"PATH": MINIMAL_PATH}, cwd=venv)
    assert str(ROOT) not in found.stdout and str(venv) in found.stdout, found.stdout
    for name in ("spawner", "portal"):  # names of other PyPI packages: we must not install them
        other = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {name}"],
                               capture_output=True, env={"PATH": MINIMAL_PATH}, cwd=venv)
        assert other.returncode != 0, name

    add_lab_group(site_hub, api, "rosa")

    body = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-site"}
    r = api.post(f"{url}/hub/api/users/rosa/server", json=body)
    assert r.status_code in (201, 202), r.text
    wait_ready(site_hub, api, "rosa")
    status = api.get(f"{url}/user/rosa/api/status")
    assert status.status_code == 200, status.text
    (server_env,) = [e for cmd, e in process_environments()  # this hub's server of rosa, not its children
                     if b"hybridhub.backends.local.server" in cmd and e.get("JUPYTERHUB_USER") == "rosa"
                     and e.get("HOME", "").startswith(str(site_hub["workdir"]))]
    home = Path(server_env["HOME"])  # the root hub runs rosa's server as rosa, in a home of her own
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (pwd.getpwnam("rosa").pw_uid, 0o700)
    assert server_env["HYBRIDHUB_PORTAL_URL"] == f"{url}/services/hybridhub-portal/"  # the final bind_url
    named = api.post(f"{url}/hub/api/users/rosa/servers/second", json=body)
    assert named.status_code == 400 and "named servers" in named.text.lower(), named.text  # the site's choice

    page = api.get(f"{url}/services/hybridhub-portal/groups")  # the portal's templates, from the wheel
    assert page.status_code == 200 and "lab-site" in page.text, page.text[:500]
    assert api.delete(f"{url}/hub/api/users/rosa/server").status_code in (202, 204)


#: A site's catalog naming its own backend (tests/data/site_backend) for one class.
SITE_CATALOG = """
community:
  display_name: Lab racks
  backend: lab-rack
  offerings:
    rtx4090:
      {model: RTX 4090, memory_gb: 24, counts: [1], price_per_hour: 0.35, max_hours: 4, extra: {rack: b7}}
"""


def test_a_site_backend_installed_beside_the_wheel_serves_a_launch(site_venv, hub_prereqs, tmp_path):
    """A site adds hardware without touching hybridhub: its own package registers a backend (entry
    point ``hybridhub.backends``), its catalog names it, and a launch through the hub runs on it."""
    pip = [str(site_venv / "bin" / "pip"), "install", "-q", "--no-deps"]
    env = {"PATH": MINIMAL_PATH, "HOME": os.environ.get("HOME", "/root")}
    package = shutil.copytree(ROOT / "tests" / "data" / "site_backend", tmp_path / "site_backend")  # builds there
    subprocess.run([*pip, str(package)], check=True, env=env)
    try:
        bad = SITE_CATALOG.replace("extra: {rack: b7}", "extra: {}")  # the backend checks its own field
        check = subprocess.run(
            [str(site_venv / "bin" / "python"), "-c",
             "import sys, yaml; from hybridhub.backends import check_catalog; from hybridhub.catalog import "
             "load_catalog, CatalogError\ntry: check_catalog(load_catalog(yaml.safe_load(sys.stdin.read())))\n"
             "except CatalogError as e: print(e)"],
            input=bad, capture_output=True, text=True, env={"PATH": MINIMAL_PATH}, cwd=tmp_path)
        assert "community.offerings.rtx4090.extra.rack" in check.stdout, check.stdout + check.stderr

        site_lines = (f"c.SimpleLocalProcessSpawner.home_dir_template = {str(tmp_path / 'homes' / '{username}')!r}\n"
                      f"c.RackBackend.cmd = [{str(site_venv / 'bin' / 'jupyterhub-singleuser')!r}]\n")
        with running_site_hub(site_venv, tmp_path, site_lines, catalog=SITE_CATALOG) as hub:
            api = site_admin(hub)
            add_lab_group(hub, api, "rosa")
            body = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-site"}
            r = api.post(f"{hub['url']}/hub/api/users/rosa/server", json=body)
            assert r.status_code in (201, 202), r.text
            wait_ready(hub, api, "rosa")
            kernel_env = api.get(f"{hub['url']}/user/rosa/api/status")
            assert kernel_env.status_code == 200, kernel_env.text
            sessions = api.get(f"{hub['url']}/services/hybridhub-portal/api/sessions?user=rosa").json()["sessions"]
            assert sessions and sessions[0]["host"] == "rack b7", sessions
            assert api.delete(f"{hub['url']}/hub/api/users/rosa/server").status_code in (202, 204)
    finally:
        subprocess.run([str(site_venv / "bin" / "pip"), "uninstall", "-q", "-y", "site-backend"], env=env)


def test_site_hub_logs_no_cookie_and_one_line_per_refusal(site_hub):
    """The plugin path has the demo's log hygiene: a browser session on a user's server leaves no
    session id or xsrf value in the hub's log (the server's own output included), and a refused
    launch is one WARNING line, no ERROR and no traceback."""
    url, api = site_hub["url"], site_admin(site_hub)
    add_lab_group(site_hub, api, "rosa")
    assert api.post(f"{url}/hub/api/users/sam").status_code == 201  # in no group: refused
    before = site_hub["log"].read_text()
    refused = api.post(f"{url}/hub/api/users/sam/server",
                       json={"class": "community", "model": "rtx4090", "count": 1, "hours": 1})
    assert 400 <= refused.status_code < 500, refused.text
    time.sleep(1)
    refusal_log = site_hub["log"].read_text()[len(before):]
    assert "Traceback" not in refusal_log and "[E " not in refusal_log, refusal_log[-3000:]

    browser = requests.Session()  # rosa in a browser: the dummy authenticator's login form
    browser.get(f"{url}/hub/login", timeout=30)
    r = browser.post(f"{url}/hub/login", timeout=60, data={
        "username": "rosa", "password": "any", "_xsrf": browser.cookies.get("_xsrf")})
    assert r.ok and "/hub/login" not in r.url, (r.status_code, r.url)
    body = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-site"}
    assert api.post(f"{url}/hub/api/users/rosa/server", json=body).status_code in (201, 202)
    wait_ready(site_hub, api, "rosa")
    for path in ("/user/rosa/lab", "/user/rosa/api/contents", "/hub/home"):
        assert browser.get(f"{url}{path}", timeout=60).status_code == 200, path
    api.delete(f"{url}/hub/api/users/rosa/server")
    time.sleep(1)
    log = site_hub["log"].read_text()
    secrets_seen = {name: value for name, value in browser.cookies.items() if len(value) >= 16}
    assert any(n.startswith("jupyterhub-session-id") for n in secrets_seen), browser.cookies.keys()
    for name, value in secrets_seen.items():
        for part in {value, *value.split("|")}:
            if len(part) >= 16:
                assert part not in log, f"the value of cookie {name} is in the hub's log"
