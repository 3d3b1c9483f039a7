"""hybridhub: one JupyterHub over community GPUs, enterprise GPUs and AWS Trainium/Inferentia.

``from hybridhub import HybridSpawner, add_hybridhub`` is all a hub's configuration needs.  The
names are loaded on first use, so importing a lower layer (``hybridhub.accounting`` in a service,
say) does not import the spawner and the hub.
"""

from __future__ import annotations

import importlib

__all__ = ["HybridSpawner", "add_hybridhub"]

_EXPORTS = {"HybridSpawner": "hybridhub.spawner", "add_hybridhub": "hybridhub.hub"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hybridhub' has no attribute {name!r}")
