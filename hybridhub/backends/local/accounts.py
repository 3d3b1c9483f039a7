"""Each user's own Unix account, for the ``local`` backend of a root hub (``LocalBackend.separate_users``).

A server then runs as its user, as with JupyterHub's ``LocalProcessSpawner``: other users' code
cannot read its home (mode 0700), its environment (``/proc/<pid>/environ`` is its owner's) or
the hub's files.  Only names that are plain Unix account names are run, and never as a system
account (a user called ``root`` from an identity provider gets a refusal, not uid 0).
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: The account names this backend runs a server as (Debian's default NAME_REGEX, at most 32).
UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Where the first uid of a regular account is set (``UID_MIN``; 1000 when it says nothing).
LOGIN_DEFS = "/etc/login.defs"


class AccountRefused(Exception):
    """This user's server cannot run as a Unix account of its own (the message says why and what to do)."""


@dataclass(frozen=True)
class Account:
    """A regular Unix account a server runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def become(self) -> None:
        """Drop every privilege of the hub for this account's (call in the new process, before user code)."""
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)
        if os.getuid() != self.uid or os.geteuid() != self.uid or os.getegid() != self.gid:
            raise OSError(f"could not become {self.name}")
        os.umask(0o022)

    def preexec(self, home: str):
        """A ``Popen`` ``preexec_fn``: become the account, then enter its home."""

        def run() -> None:
            self.become()
            os.chdir(home)

        return run

    def as_json(self) -> dict[str, object]:
        """What a process started ahead needs to become this account (``Account(**as_json())``)."""
        return {"name": self.name, "uid": self.uid, "gid": self.gid, "groups": list(self.groups)}


def uid_min(path: str = LOGIN_DEFS) -> int:
    """The first uid of a regular account on this host."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 1000
    found = re.search(r"^\s*UID_MIN\s+(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 1000


def account_for(name: str, *, create: bool, home: str) -> Account:
    """The regular Unix account named ``name``, created (``useradd``) when missing and ``create``."""
    if not UNIX_NAME.fullmatch(name):
        raise AccountRefused(
            f"the user name {name!r} is not a Unix account name this hub runs a server as (lower-case "
            "letters, digits, '_' and '-', at most 32 characters, not starting with a digit or '-'); "
            "ask your hub's administrators to map it to one")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise AccountRefused(
                f"there is no Unix account named {name!r} on the hub's host; an administrator creates it "
                "(or sets LocalBackend.create_system_users = True)") from None
        entry = _useradd(name, home)
    if entry.pw_uid < uid_min():
        raise AccountRefused(f"the Unix account {name!r} is a system account (uid {entry.pw_uid}); "
                             "hybridhub runs no server as one")
    return Account(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))


def _useradd(name: str, home: str) -> pwd.struct_passwd:
    """Create ``name`` with a group of its own, no password and ``home`` (made by :func:`private_home`)."""
    done = subprocess.run(
        ["useradd", "--user-group", "--no-create-home", "--home-dir", home, "--shell", "/bin/bash",
         "--comment", "hybridhub user", name],
        capture_output=True, text=True, timeout=30, check=False,
    )
    try:
        return pwd.getpwnam(name)  # also when another launch created it meanwhile
    except KeyError:
        why = (done.stderr or done.stdout).strip().splitlines()[:1]
        raise RuntimeError(f"useradd {name} failed: {why[0] if why else done.returncode}") from None


def unreachable(path: str | Path) -> Path | None:
    """The first folder on the way to ``path`` that other accounts cannot pass through, if any."""
    for folder in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
        if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def python_unreachable() -> Path | None:
    """The first folder that keeps other accounts from this Python (its venv, its base installation)."""
    for path in (sys.prefix, sys.base_prefix, Path(sys.executable).resolve()):
        if (blocked := unreachable(path)) is not None:
            return blocked
    return None


def private_home(home: Path, account: Account) -> None:
    """Make ``home`` the account's own folder, mode 0700 (a home made while servers ran as the hub's
    user is handed over, without following links)."""
    if not home.parent.exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        home.parent.chmod(0o711)  # passable, not listable (whatever the hub's umask)
    home.mkdir(exist_ok=True, mode=0o700)
    info = home.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise AccountRefused(f"the home {home} is not a folder")
    if info.st_uid != account.uid:
        if info.st_uid != os.geteuid():
            raise AccountRefused(f"the home {home} belongs to another account (uid {info.st_uid})")
        for path in [home, *home.rglob("*")]:  # rglob does not follow links to folders
            os.lchown(path, account.uid, account.gid)
    home.chmod(0o700)
