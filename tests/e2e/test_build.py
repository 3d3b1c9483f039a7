"""The two wheels as a site builds them: ``pip wheel`` on a clean checkout (tests/fixtures/wheel.py).

``hybridhub`` (the top folder) is the hub, pure Python; ``hybridhub-lab`` (``labextension/``) is
the JupyterLab extension, its own small distribution that images and EC2 instances install: its
wheel builds the Lab extension from source, or fails.  A clean checkout is the files git knows
copied to a temporary folder, so neither the prebuilt ``labextension/hybridhub_lab/labextension/``
nor ``node_modules/`` of this working tree is there.  The Lab wheel's build runs
hatch-jupyter-builder (``jlpm install``, ``jlpm build:prod``) in pip's isolated build
environment, as a site's ``pip wheel`` does.
"""

from __future__ import annotations

import json
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures.wheel import clean_checkout, pip_wheel

ROOT = Path(__file__).resolve().parents[2]
LAB_DATA = "hybridhub_lab-0.1.0.data/data/"
LABEXTENSION = LAB_DATA + "share/jupyter/labextensions/hybridhub-lab/"
SERVER_CONFIG = LAB_DATA + "etc/jupyter/jupyter_server_config.d/hybridhub_lab.json"


def top_level_names(files: set[str]) -> set[str]:
    """The wheel's top-level import names: its first path parts, less its .data and .dist-info."""
    tops = {name.split("/", 1)[0] for name in files}
    return {top for top in tops if not top.endswith((".data", ".dist-info"))}


def metadata(z: zipfile.ZipFile) -> tuple[str, dict[str, Requirement]]:
    """The wheel's version and its Requires-Dist, by canonical distribution name."""
    (name,) = (n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(z.read(name).decode())
    requires = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    return meta["Version"], {canonicalize_name(r.name): r for r in requires}


def test_hub_wheel_holds_hybridhub_only_and_requires_the_lab_wheel_of_its_version(built_wheels):
    src = ROOT
    with zipfile.ZipFile(built_wheels["hybridhub"]) as z:
        files = set(z.namelist())
        entry_points = z.read("hybridhub-0.1.0.dist-info/entry_points.txt").decode()
        hub_version, requires = metadata(z)
    with zipfile.ZipFile(built_wheels["hybridhub-lab"]) as z:
        lab_version, _ = metadata(z)

    # exactly one import package, with every data file hybridhub reads at run time; no Lab extension
    assert top_level_names(files) == {"hybridhub"}
    assert not any(".data/" in name or "labextension" in name for name in files), "the Lab's, shipped twice"
    package_data = ["hybridhub/accounting/alembic.ini", "hybridhub/accounting/migrations/env.py",
                    "hybridhub/accounting/migrations/script.py.mako"]
    for pattern in ("accounting/migrations/versions/*.py", "web/static/*", "web/templates/*.html",
                    "spawner/templates/*.html"):
        found = sorted(p.relative_to(src).as_posix() for p in (src / "hybridhub").glob(pattern))
        assert found, pattern
        package_data += found
    assert sorted(set(package_data) - files) == []
    assert not any("__pycache__" in name or "node_modules" in name for name in files)

    # the local backend's servers run JupyterLab with the extension: the Lab wheel of this very build
    assert str(requires["hybridhub-lab"].specifier) == f"=={lab_version}"
    assert lab_version == hub_version == json.loads((ROOT / "labextension/package.json").read_text())["version"]

    # [project]'s entry points and console script, as hatch writes them
    for line in ("[jupyterhub.spawners]", "hybrid = hybridhub.spawner:HybridSpawner", "[console_scripts]",
                 "hybridhub-quota = hybridhub.cli:main"):
        assert line in entry_points, line


def test_lab_wheel_holds_the_built_extension_and_nothing_of_the_hub_side(built_wheels):
    with zipfile.ZipFile(built_wheels["hybridhub-lab"]) as z:
        files = set(z.namelist())
        lab_package = json.loads(z.read(LABEXTENSION + "package.json"))
        server_config = json.loads(z.read(SERVER_CONFIG))
        _, lab_requires = metadata(z)
    with zipfile.ZipFile(built_wheels["hybridhub"]) as z:
        _, hub_requires = metadata(z)

    # the Lab extension, built here, and the server extension's config
    assert lab_package["name"] == "hybridhub-lab"
    assert LABEXTENSION + "static/style.js" in files
    assert LABEXTENSION + lab_package["jupyterlab"]["_build"]["load"] in files  # static/remoteEntry.<hash>.js
    assert server_config == json.loads((ROOT / "labextension/jupyter-config/hybridhub_lab.json").read_text())
    assert not any(name.startswith("hybridhub_lab/labextension/") for name in files), "shipped twice"
    assert top_level_names(files) == {"hybridhub_lab"}
    assert not any("__pycache__" in name or "node_modules" in name for name in files)

    # what the server extension imports, and nothing the hub needs: not hybridhub, not jupyterhub
    hub_side = {"hybridhub", *hub_requires} - {"hybridhub-lab", "tornado", "traitlets"}
    assert "jupyter-server" in lab_requires
    assert not hub_side & set(lab_requires), sorted(hub_side & set(lab_requires))


def test_lab_wheel_build_fails_loudly_when_the_extension_does_not_build(tmp_path, build_env):
    src = clean_checkout(tmp_path / "src") / "labextension"
    index_ts = src / "src" / "index.ts"
    index_ts.write_text(index_ts.read_text() + "\nconst broken: = ;\n")
    dist = tmp_path / "dist"
    built = pip_wheel(src, dist, build_env)
    output = built.stdout + built.stderr
    assert built.returncode != 0, output[-4000:]
    assert "index.ts" in output and "error TS" in output, output[-4000:]  # tsc says what is wrong
    assert not list(dist.glob("*.whl"))
