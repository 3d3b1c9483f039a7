"""The wheel builds the JupyterLab extension from source, or fails: ``pip wheel`` on a clean checkout.

A clean checkout is the files git knows (tracked, and new ones it does not ignore) copied to a
temporary folder, so neither the prebuilt ``hybridhub_lab/labextension/`` nor ``node_modules/``
of this working tree is there.  Each build runs hatch-jupyter-builder (``jlpm install``,
``jlpm build:prod``) in pip's isolated build environment, as a site's ``pip wheel .`` does.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tests.fixtures.wheel import clean_checkout, pip_wheel

ROOT = Path(__file__).resolve().parents[2]
DATA = "hybridhub-0.1.0.data/data/"
LABEXTENSION = DATA + "share/jupyter/labextensions/hybridhub-lab/"
SERVER_CONFIG = DATA + "etc/jupyter/jupyter_server_config.d/hybridhub_lab.json"


def test_wheel_from_a_clean_checkout_holds_the_built_lab_extension(built_wheel):
    src = ROOT
    with zipfile.ZipFile(built_wheel) as z:
        files = set(z.namelist())
        lab_package = json.loads(z.read(LABEXTENSION + "package.json"))
        server_config = json.loads(z.read(SERVER_CONFIG))
        entry_points = z.read("hybridhub-0.1.0.dist-info/entry_points.txt").decode()

    # the Lab extension, built here, and the server extension's config
    assert lab_package["name"] == "hybridhub-lab"
    assert LABEXTENSION + "static/style.js" in files
    assert LABEXTENSION + lab_package["jupyterlab"]["_build"]["load"] in files  # static/remoteEntry.<hash>.js
    assert server_config == json.loads((ROOT / "labextension/jupyter-config/hybridhub_lab.json").read_text())
    assert not any(name.startswith("hybridhub_lab/labextension/") for name in files), "shipped twice"

    # exactly the two import packages, with every data file hybridhub reads at run time
    top_level = {name.split("/", 1)[0] for name in files} - {DATA.split("/", 1)[0], "hybridhub-0.1.0.dist-info"}
    assert top_level == {"hybridhub", "hybridhub_lab"}
    package_data = ["hybridhub/accounting/alembic.ini", "hybridhub/accounting/migrations/env.py",
                    "hybridhub/accounting/migrations/script.py.mako"]
    for pattern in ("accounting/migrations/versions/*.py", "web/static/*", "web/templates/*.html",
                    "spawner/templates/*.html"):
        found = sorted(p.relative_to(src).as_posix() for p in (src / "hybridhub").glob(pattern))
        assert found, pattern
        package_data += found
    assert sorted(set(package_data) - files) == []
    assert not any("__pycache__" in name or "node_modules" in name for name in files)

    # [project]'s entry points and console script, as hatch writes them
    for line in ("[jupyterhub.spawners]", "hybrid = hybridhub.spawner:HybridSpawner", "[console_scripts]",
                 "hybridhub-quota = hybridhub.cli:main"):
        assert line in entry_points, line


def test_wheel_build_fails_loudly_when_the_extension_does_not_build(tmp_path, build_env):
    src = clean_checkout(tmp_path / "src")
    index_ts = src / "labextension" / "src" / "index.ts"
    index_ts.write_text(index_ts.read_text() + "\nconst broken: = ;\n")
    dist = tmp_path / "dist"
    built = pip_wheel(src, dist, build_env)
    output = built.stdout + built.stderr
    assert built.returncode != 0, output[-4000:]
    assert "index.ts" in output and "error TS" in output, output[-4000:]  # tsc says what is wrong
    assert not list(dist.glob("*.whl"))
