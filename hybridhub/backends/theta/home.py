"""The home follows the user to a Theta node: copied over the launch's SSH connection at start, and back at
stop, with the confidential folders left out (never sent to the node, never taken back from it).

Archives are plain tar, made and read with :mod:`tarfile` on the hub's side in a worker thread; what comes
back from a node (untrusted) is extracted with tarfile's ``data`` filter (no absolute paths, no ``..``, no
links leaving the home, no device files) and without the node's own ``.hybridhub`` folder.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: The node's own folder (the server's log, the environment file): never part of the home.
NODE_DIR = ".hybridhub"


def relative(path: str) -> str:
    """A home-relative folder, normalised (ValueError for an absolute path or one leaving the home)."""
    norm = posixpath.normpath(path.strip("/"))
    if path.startswith("/") or norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"not a folder inside the home: {path!r}")
    return norm


def _left_out(name: str, hidden: Sequence[str]) -> bool:
    name = posixpath.normpath(name)
    return any(name == p or name.startswith(p + "/") for p in (NODE_DIR, *hidden))


def pack(home: Path, hidden: Sequence[str], archive: Path) -> None:
    """Write ``home`` without the ``hidden`` folders into ``archive``."""
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(home.iterdir()):
            tar.add(entry, arcname=entry.name,
                    filter=lambda info: None if _left_out(info.name, hidden) else info)


def unpack(archive: Path, home: Path, hidden: Sequence[str]) -> int:
    """Extract a node's ``archive`` into ``home``, skipping the ``hidden`` folders; the members extracted."""
    home.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if not _left_out(m.name, hidden)]
        tar.extractall(home, members=members, filter="data")
    return len(members)


def where(node_home: str) -> str:
    """The node's home as a shell word: ``node_home`` quoted, or the login's ``"$HOME"``."""
    return shlex.quote(node_home) if node_home else '"$HOME"'


def upload_command(hidden: Sequence[str], node_home: str = "") -> str:
    """Unpack stdin into the node's home, then leave each hidden folder empty and read-only there."""
    home = where(node_home)
    empty = "".join(f" && mkdir -p {home}/{shlex.quote(p)} && chmod 0555 {home}/{shlex.quote(p)}" for p in hidden)
    return f"mkdir -p {home} && tar x -C {home} -f -{empty}"


def download_command(hidden: Sequence[str], node_home: str = "") -> str:
    """Write the node's home to stdout as tar, without the hidden folders and the node's own folder."""
    excludes = " ".join(f"--exclude={shlex.quote('./' + p)}" for p in (NODE_DIR, *hidden))
    return f"tar c -C {where(node_home)} {excludes} -f - ."


async def send_home(conn, home: Path, hidden: Sequence[str], node_home: str = "") -> None:
    """Copy ``home`` (if it exists) to the node over ``conn``, the hidden folders left out."""
    with tempfile.TemporaryDirectory(prefix="hh-theta-home-") as tmp:
        archive = Path(tmp) / "home.tar"
        if home.is_dir():
            await asyncio.to_thread(pack, home, hidden, archive)
        else:
            await asyncio.to_thread(lambda: tarfile.open(archive, "w").close())
        result = await conn.run(upload_command(hidden, node_home), stdin=str(archive), encoding=None)
        if result.exit_status != 0:
            raise RuntimeError(f"copying the home to the node failed (exit status {result.exit_status})")


async def fetch_home(conn, home: Path, hidden: Sequence[str], node_home: str = "") -> int:
    """Copy the node's home back into ``home`` over ``conn``; the members extracted."""
    with tempfile.TemporaryDirectory(prefix="hh-theta-home-") as tmp:
        archive = Path(tmp) / "home.tar"
        result = await conn.run(download_command(hidden, node_home), stdout=str(archive), encoding=None)
        if result.exit_status not in (0, 1):  # GNU tar: 1 means a file changed while it was read
            raise RuntimeError(f"copying the home back from the node failed (exit status {result.exit_status})")
        return await asyncio.to_thread(unpack, archive, home, hidden)
