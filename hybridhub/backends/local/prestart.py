"""A single-user server process started ahead of its launch (``LocalBackend.prestart``).

The interpreter is up and the server's modules are imported (about 1.5 s of a cold start
on a 2-core machine); the process then waits on stdin for one JSON line from the hub::

    {"argv": ["jupyterhub-singleuser", ...], "env": {...}, "cwd": "...", "account": {...}}

becomes the user's own account first when the line names one (a root hub's
``LocalBackend.separate_users``: until then it has run nothing but the imports below, from the
hub's own installation), takes that environment, folder and command line, and runs
``jupyterhub-singleuser`` in place, with the log hygiene of a cold start (:func:`hybridhub.backends.local.server.run`).
End of input before that line (the hub went away) ends it.  Only what is read at import
time must match the launch (see :data:`IMPORT_ENV_PREFIXES`); the hub checks that before it
hands a launch over, and starts the server cold otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

#: Environment read while the modules below are imported: the process started ahead and
#: the launch it takes must agree on these (names equal to or starting with one).
IMPORT_ENV_PREFIXES = ("PATH", "PYTHON", "LANG", "LC_", "TZ", "JUPYTER_",
                       "JUPYTERHUB_SINGLEUSER_EXTENSION", "JUPYTERHUB_SINGLEUSER_APP")

#: Imported ahead: the single-user server and the server extensions a Lab image enables.
PRELOAD = ("jupyterhub.singleuser", "jupyter_server.serverapp", "jupyterlab.labapp",
           "jupyter_lsp", "jupyter_server_terminals", "notebook_shim", "hybridhub_lab")


def import_env(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` that a process started ahead already used (see the module doc)."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_ENV_PREFIXES)}


def home_options() -> list[str]:
    """Command-line settings for what JupyterLab fixed from ``HOME`` when it was imported ahead.

    ``LabApp.user_settings_dir`` and ``workspaces_dir`` are class defaults evaluated at import,
    in this process's account and ``HOME`` as it waited: without these options a launch taken
    by it keeps its Lab settings and workspaces in that home (and cannot write them), not its
    user's.  The values are the ones a cold start computes for the launch's ``HOME``.
    """
    labapp = sys.modules.get("jupyterlab.labapp")
    if labapp is None:
        return []
    return [f"--LabApp.user_settings_dir={labapp.get_user_settings_dir()}",
            f"--LabApp.workspaces_dir={labapp.get_workspaces_dir()}"]


def main() -> int:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed here: imported (or not) at launch, as a cold start would
    line = sys.stdin.readline()
    if not line:
        return 0
    launch = json.loads(line)
    if "account" in launch:
        from hybridhub.backends.local.accounts import Account

        Account(**{**launch["account"], "groups": tuple(launch["account"]["groups"])}).become()
    os.environ.clear()
    os.environ.update(launch["env"])
    os.chdir(launch["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = [*launch["argv"], *home_options()]
    from hybridhub.backends.local.server import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
