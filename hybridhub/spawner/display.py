"""What a named server is called on the hub's pages: the name its user gave it, then its hardware.

JupyterHub shows a named server's ``display_name`` (home page, admin page, REST model).  At each
start the spawner sets it to ``<name> · <model> × <count>`` from the validated offering, so the
home page says which server runs on what; a name the user gave (``display_name`` in the REST body)
is kept before the separator, and a previous start's hardware after it is replaced.
"""

from __future__ import annotations

from typing import Any

from hybridhub.catalog import Offering

#: Between the user's name for the server and its hardware.
SEPARATOR = " · "
#: JupyterHub's longest display name.
MAX_LENGTH = 255


def hardware_label(offering: Offering, count: int) -> str:
    """``RTX 4090 × 2``: the accelerator model and how many."""
    return f"{offering.model} × {count}"


def hardware_display_name(server_name: str, current: str | None, hardware: str) -> str:
    """The display name saying ``hardware``, keeping the user's part of ``current`` (else ``server_name``)."""
    base = " ".join((current or "").split(SEPARATOR)[0].split()) or server_name
    base = base[: max(1, MAX_LENGTH - len(SEPARATOR) - len(hardware))].rstrip()
    return f"{base}{SEPARATOR}{hardware}"[:MAX_LENGTH].rstrip()


def name_after_hardware(orm_spawner: Any, server_name: str, offering: Offering, count: int) -> None:
    """Set a named server's display name from its offering (the hub commits it with the spawn)."""
    if server_name and orm_spawner is not None:
        orm_spawner.display_name = hardware_display_name(
            server_name, orm_spawner.display_name, hardware_label(offering, count))
