"""The ``local`` backend: ``jupyterhub-singleuser`` as a process on the hub's host.

This is what the embedded demo maps every class to, so the whole portal runs on
a laptop; offerings on it are marked *simulated* in the picker.  It runs as the
hub's own Unix user (as JupyterHub's ``SimpleLocalProcessSpawner``), with a
per-user home under ``home_root``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Float, Unicode, default

from .base import BackendMixin


class LocalBackend(BackendMixin, LocalProcessSpawner):
    """Run the single-user server as a local process owned by the hub's user."""

    simulated = True

    home_root = Unicode(
        "/tmp/hybridhub-homes",
        help="Directory holding one home directory per user ({home_root}/{username}).",
    ).tag(config=True)

    ready_poll_interval = Float(
        0.02,
        help="Seconds between readiness probes of the new server before start() returns "
        "(answering fast here saves the hub's slower back-off poll).",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        """The hub's own interpreter runs the server: no dependence on the caller's PATH."""
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    @property
    def home_dir(self) -> str:
        """The user's home directory, created on demand."""
        return str(Path(self.home_root) / self.user.name)

    def make_preexec_fn(self, name):
        """Run as the hub's user: no setuid."""
        return None

    def user_env(self, env):
        """Point HOME and USER at the per-user home, not the hub's."""
        env["USER"] = self.user.name
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH") or os.defpath])
        return env

    def get_env(self):
        """Hub environment plus the description of the assigned hardware."""
        env = super().get_env()
        env.update(self.accelerator_env())
        return env

    async def start(self):
        """Start the process and return once it answers HTTP (or has died)."""
        Path(self.home_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.notebook_dir = self.notebook_dir or self.home_dir
        if not self.port:
            self.port = random_port()
        ip, port = await super().start()
        await self._wait_until_answering(ip or "127.0.0.1", port)
        return ip, port

    def provenance(self) -> dict[str, object]:
        """A local process: the host is this machine."""
        return {"host": os.uname().nodename, "pid": self.pid, "image": "local-process"}
