"""Start a command with some folders of the home not mounted (``python -m hybridhub.backends.local.confine``).

The ``local`` backend runs a server on untrusted hardware through this launcher when the
user's groups mark folders of the home confidential::

    python -m hybridhub.backends.local.confine --hide /homes/alice/secret -- jupyterhub-singleuser ...

It enters a private mount namespace (as root, or in a new user namespace otherwise),
mounts an empty read-only ``tmpfs`` over each folder, then ``exec``s the command: the
server and everything it starts see an empty folder where the confidential one is, while
the rest of the home is the real, shared one.  If the namespace cannot be made, it
refuses to start (exit status 78) rather than run with the folders visible.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 0x40000
#: sysexits.h EX_CONFIG: the server could not be confined, so it was not started.
EXIT_CANNOT_CONFINE = 78

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_private_mount_namespace() -> None:
    """A mount namespace of our own: as root directly, otherwise inside a user namespace."""
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        uid, gid = os.geteuid(), os.getegid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    # nothing we mount may leak back to the host's namespace
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def hide(path: str) -> None:
    """Mount an empty, read-only tmpfs over ``path`` (which must be a directory)."""
    target = os.fsencode(path)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _check(_libc.mount(b"tmpfs", target, b"tmpfs", flags, b"size=16k,mode=0555"), f"mount {path}")
    _check(
        _libc.mount(b"tmpfs", target, None, MS_REMOUNT | MS_RDONLY | flags, None),
        f"remount {path} read-only",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``--hide PATH ... -- COMMAND ...``, confine, exec (only returns on failure)."""
    parser = argparse.ArgumentParser(prog="python -m hybridhub.backends.local.confine", description=__doc__)
    parser.add_argument("--hide", action="append", default=[], help="folder to leave out")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    hidden = [p for p in args.hide if os.path.isdir(p)]
    try:
        if hidden:
            enter_private_mount_namespace()
            for path in hidden:
                hide(path)
    except OSError as e:
        print(
            f"hybridhub: cannot leave confidential folders out of this server ({e}); "
            "refusing to start it with them visible.",
            file=sys.stderr,
        )
        return EXIT_CANNOT_CONFINE
    os.execvp(command[0], command)
    return EXIT_CANNOT_CONFINE  # pragma: no cover (execvp does not return)


if __name__ == "__main__":
    sys.exit(main())
