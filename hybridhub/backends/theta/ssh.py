"""The per-launch SSH key pair, and starting the single-user server on a node over SSH (asyncssh).

The private key is made for one launch and lives in the hub's memory (:class:`LaunchKey`), and, with
``c.ThetaBackend.key_dir``, in a 0600 file of the hub's own account until the deployment is deleted
(:mod:`hybridhub.backends.theta.keys`): it is never in the spawner's state, a log line, a page or an
error, and Theta only ever sees the public half.  The server's environment (its API token among it)
travels inside the SSH connection, on the remote shell's standard input, into a file only the node's
user can read that the start command sources and deletes at once: never on a command line, through
Theta's API or in the node's logs.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
import warnings
from collections.abc import Mapping, Sequence

with warnings.catch_warnings():  # asyncssh's import warns that cryptography deprecates DSA (unused here)
    warnings.simplefilter("ignore")
    import asyncssh

#: What a failed SSH login or command raises.
SSH_ERRORS = (OSError, asyncssh.Error, TimeoutError)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: The remote start: read the environment from stdin into a private file, source and delete it, then
#: start the server detached from the SSH session (it outlives the connection and a hub restart).
START_SCRIPT = (
    'umask 077; d="$HOME/.hybridhub"; mkdir -p "$d" && cat > "$d/env" && set -a && . "$d/env" && set +a'
    ' && rm -f "$d/env" && mkdir -p "$HOME" && cd "$HOME"'
    ' && {{ nohup setsid {cmd} > "$d/server.log" 2>&1 < /dev/null & }} && echo started'
)


class LaunchKey:
    """An Ed25519 key pair for one launch; ``repr`` and ``str`` show only the public fingerprint."""

    def __init__(self, key: asyncssh.SSHKey | None = None) -> None:
        self._key = key or asyncssh.generate_private_key("ssh-ed25519", comment="hybridhub")

    @classmethod
    def from_private(cls, data: bytes) -> LaunchKey:
        """A key read back from :meth:`export_private`'s bytes."""
        return cls(asyncssh.import_private_key(data))

    def export_private(self) -> bytes:
        """The private key in OpenSSH's format, for the hub's own key store only."""
        return self._key.export_private_key("openssh")

    @property
    def public_openssh(self) -> str:
        """The public key in OpenSSH's one-line format (what Theta installs on the node)."""
        return self._key.export_public_key("openssh").decode().strip()

    @property
    def fingerprint(self) -> str:
        return self._key.get_fingerprint()

    def __repr__(self) -> str:
        return f"LaunchKey({self.fingerprint})"

    __str__ = __repr__

    def client_keys(self) -> list:
        """For asyncssh's ``client_keys`` (the key object, never its text)."""
        return [self._key]


def env_script(env: Mapping[str, str]) -> str:
    """``NAME='value'`` lines for the remote shell to source (names checked, values quoted)."""
    lines = []
    for name, value in sorted(env.items()):
        if not ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"{name}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def start_command(cmd: Sequence[str]) -> str:
    """The remote shell command starting ``cmd`` (each word quoted) detached, its environment on stdin."""
    return START_SCRIPT.format(cmd=" ".join(shlex.quote(word) for word in cmd))


def known_hosts(host_key: str | None):
    """asyncssh's ``known_hosts`` pinning the node's host key; None (no check) only when none is known."""
    if not host_key:
        return None
    return ([asyncssh.import_public_key(host_key)], [], [])


async def connect(host: str, port: int, user: str, key: LaunchKey, host_key: str | None, *,
                  timeout: float, interval: float = 0.5, clock=time.monotonic) -> asyncssh.SSHClientConnection:
    """Connect, retrying while the node's sshd does not accept yet (until ``timeout`` seconds)."""
    deadline = clock() + timeout
    while True:
        try:
            return await asyncssh.connect(
                host, port=port, username=user, client_keys=key.client_keys(), known_hosts=known_hosts(host_key),
                agent_path=None, config=None, connect_timeout=max(1.0, min(10.0, timeout)),
            )
        except SSH_ERRORS as e:
            if clock() + interval >= deadline or isinstance(e, asyncssh.HostKeyNotVerifiable):
                raise
            await asyncio.sleep(interval)


async def start_server(conn: asyncssh.SSHClientConnection, cmd: Sequence[str], env: Mapping[str, str],
                       timeout: float = 30) -> None:
    """Start ``cmd`` on the node with ``env`` (over the connection's stdin); RuntimeError if it failed."""
    result = await conn.run(start_command(cmd), input=env_script(env), timeout=timeout)
    if result.exit_status != 0 or "started" not in str(result.stdout):
        detail = str(result.stderr or "").strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
        raise RuntimeError(f"the server could not be started over SSH: {detail[0][:200]}")
