"""hybridhub as a site installs it: the wheel in a fresh venv, added to a hub that is not this checkout.

The site config is the README's "Use it in your own JupyterHub" snippet, verbatim, plus
what any test hub needs (ports, a test service token, running as root).  The hub runs
from the fresh venv with a minimal PATH, in a folder outside the checkout, so templates,
migrations and services can only come from the installed package.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from jupyterhub.utils import random_port

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
def wheel(tmp_path_factory) -> Path:
    """The hybridhub wheel, built from this checkout as a site would build it."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True)
    (built,) = dist.glob("hybridhub-*.whl")
    return built


def top_level_names(wheel: Path) -> set[str]:
    """The import names a wheel installs: its top-level packages and modules."""
    names = set()
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            first = name.split("/", 1)[0]
            if first.endswith((".dist-info", ".data")):
                continue
            names.add(first.removesuffix(".py"))
    return names


def test_wheel_installs_one_package_and_the_lab_extension(wheel):
    assert top_level_names(wheel) == {"hybridhub", "hybridhub_lab"}
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
    for data in ("hybridhub/spawner/templates/picker.html", "hybridhub/web/templates/base.html",
                 "hybridhub/web/static/vega-lite.min.js", "hybridhub/accounting/alembic.ini"):
        assert data in files, data


@pytest.fixture(scope="module")
def site_venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtual environment outside the checkout with the hybridhub wheel installed."""
    work = tmp_path_factory.mktemp("site")
    venv = work / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, env={"PATH": MINIMAL_PATH})
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   env={"PATH": MINIMAL_PATH, "HOME": os.environ.get("HOME", "/root")})
    return venv


@pytest.fixture
def site_hub(site_venv, hub_prereqs, tmp_path) -> Iterator[dict]:
    """A hub started from the site's own config and venv (nothing from this checkout)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    token = secrets.token_hex(16)
    port = random_port()
    db_url = f"sqlite:///{tmp_path / 'hybridhub.sqlite'}"
    config = readme_site_config().replace("postgresql+psycopg://hub@db.example.edu/hybridhub", db_url)
    config = config.replace('catalog_file="/etc/hybridhub/catalog.yaml", ', "")
    (etc / "jupyterhub_config.py").write_text(
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{port}'\n"
        f"c.JupyterHub.hub_port = {random_port()}\n"
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{random_port()}'\n"
        "c.HybridSpawner.backend_override = 'local'  # no GPU hosts in a test\n"
        f"c.LocalBackend.home_root = {str(tmp_path / 'homes')!r}\n"
        "c.Spawner.args = ['--allow-root']\n"
        "c.JupyterHub.authenticator_class = 'dummy'  # the site's own SSO in real life\n"
        "c.Authenticator.allow_all = True\n"
        + config
        + f"\nc.JupyterHub.services.append({{'name': 'site-admin', 'api_token': {token!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'site-admin', 'services': ['site-admin'], "
        "'scopes': ['admin:users', 'admin:servers', 'admin:groups', 'tokens', 'custom:quota:admin', "
        "'access:services', 'access:servers']})\n"
    )
    log_path = tmp_path / "hub.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(site_venv / "bin" / "jupyterhub"), "-f", str(etc / "jupyterhub_config.py")],
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
        yield {"url": url, "token": token, "log": log_path, "venv": site_venv}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        _stop_user_processes(tmp_path)


def test_wheel_installed_hub_spawns_through_rest(site_hub):
    url, venv = site_hub["url"], site_hub["venv"]
    api = requests.Session()
    api.headers["Authorization"] = f"token {site_hub['token']}"
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import hybridhub; print(hybridhub.__file__)"],
                           capture_output=True, text=True, check=True, env={"PATH": MINIMAL_PATH}, cwd=venv)
    assert str(ROOT) not in found.stdout and str(venv) in found.stdout, found.stdout
    for name in ("spawner", "portal"):  # names of other PyPI packages: we must not install them
        other = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {name}"],
                               capture_output=True, env={"PATH": MINIMAL_PATH}, cwd=venv)
        assert other.returncode != 0, name

    assert api.post(f"{url}/hub/api/users/rosa").status_code == 201
    assert api.post(f"{url}/hub/api/groups/lab-site", json={"users": ["rosa"]}).status_code == 201
    assert api.put(f"{url}/hub/api/groups/lab-site/properties", json={"kind": "lab"}).ok
    cli = subprocess.run(
        [str(venv / "bin" / "hybridhub-quota"), "--url", f"{url}/services/hybridhub-portal/",
         "--token", site_hub["token"], "set", "lab-site", "community", "5"],
        capture_output=True, text=True, env={"PATH": MINIMAL_PATH},
    )
    assert cli.returncode == 0, cli.stderr

    body = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "lab-site"}
    r = api.post(f"{url}/hub/api/users/rosa/server", json=body)
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 120
    while not api.get(f"{url}/hub/api/users/rosa").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, site_hub["log"].read_text()[-4000:]
        time.sleep(0.2)
    status = api.get(f"{url}/user/rosa/api/status")
    assert status.status_code == 200, status.text

    page = api.get(f"{url}/services/hybridhub-portal/groups")  # the portal's templates, from the wheel
    assert page.status_code == 200 and "lab-site" in page.text, page.text[:500]
    assert api.delete(f"{url}/hub/api/users/rosa/server").status_code in (202, 204)
