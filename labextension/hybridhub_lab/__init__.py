"""hybridhub inside JupyterLab: a server extension and the prebuilt Lab extension.

The server extension (loaded by ``etc/jupyter/jupyter_server_config.d/hybridhub_lab.json``
from the hybridhub-lab wheel) answers ``GET <base_url>hybridhub/session`` for the Lab front end with
this server's session, read from the hybridhub portal with the server's own
``JUPYTERHUB_API_TOKEN`` (:mod:`hybridhub_lab.upstream`).  It imports nothing of the hub
side (the distribution requires none of it), so a notebook image needs only this wheel.
"""

from __future__ import annotations

from typing import Any

from .handlers import load


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hybridhub_lab"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "hybridhub-lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    load(serverapp)
