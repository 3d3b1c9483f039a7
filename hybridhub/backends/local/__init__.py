"""The ``local`` backend: ``jupyterhub-singleuser`` as a process on the hub's host.

This is what the embedded demo maps every class to, so the whole portal runs on
a laptop; offerings on it are marked *simulated* in the picker.  It runs as the
hub's own Unix user (as JupyterHub's ``SimpleLocalProcessSpawner``), with a
per-user home under ``home_root``.  When the hub runs as root, each server runs as its user's
own Unix account (:mod:`hybridhub.backends.local.accounts`), as with JupyterHub's
``LocalProcessSpawner``; otherwise every server runs as the hub's own user (a *shared machine*,
which the hub logs and the picker says).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Dict, Float, Unicode, default
from traitlets.config import Config

from hybridhub.accounting.allocations import Candidate, NoCapacity, allocator_for
from hybridhub.backends.base import BackendMixin, db_url_from_config, free_counts
from hybridhub.backends.local.accounts import (
    Account,
    AccountRefused,
    account_for,
    private_home,
    python_unreachable,
    unreachable,
)
from hybridhub.backends.local.prestart import import_env
from hybridhub.errors import no_capacity_error, user_error

#: The server's command, as the local backend runs it cold (jupyterhub-singleuser, log scrubbed); ``-P``: the
#: folder it starts in is not searched for modules.
SINGLEUSER_CMD = [sys.executable, "-P", "-m", "hybridhub.backends.local.server"]


def _end(proc: subprocess.Popen) -> None:
    """End a process started ahead that will not be used (it has no launch: nothing to save)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.stdin.close()
    proc.wait(timeout=5)  # a killed process is reaped at once


def simulated_candidates(inventory: dict, offering) -> list[Candidate] | None:
    """The simulated hosts of ``offering`` (``{host: devices}``) as allocation candidates; None if untracked."""
    hosts = inventory.get(offering.key)
    if hosts is None:
        return None
    return [
        Candidate(host, tuple(f"SIM-{host}-{offering.name}-{i}" for i in range(int(n))))
        for host, n in hosts.items()
    ]


def separates_users(config: Config) -> bool:
    """Whether local servers run as their users' own accounts (``LocalBackend.separate_users``)."""
    section = config.LocalBackend if "LocalBackend" in config else {}
    return bool(section.get("separate_users", os.geteuid() == 0))


class LocalBackend(BackendMixin, LocalProcessSpawner):
    """Run the single-user server as a local process, as its user's own Unix account on a root hub."""

    simulated = True

    separate_users = Bool(
        help="Run each user's server as that user's own Unix account, in a private home (mode 0700): "
        "other users' code cannot read it, the server's environment or the hub's files. Needs a root hub, "
        "and on one by default. Off (and on a non-root hub) every server runs as the hub's own user: "
        "users can read each other's files, which the hub logs and the picker says.",
    ).tag(config=True)

    create_system_users = Bool(
        False,
        help="With separate_users: create a user's missing Unix account (useradd, a group of its own, no "
        "password) at their first launch, as JupyterHub's LocalAuthenticator.create_system_users does. "
        "Names that are not Unix account names and system accounts (uid below UID_MIN, e.g. root) are "
        "refused either way. The demo turns it on.",
    ).tag(config=True)

    @default("separate_users")
    def _default_separate_users(self) -> bool:
        return os.geteuid() == 0

    @classmethod
    def shares_machine(cls, config: Config) -> bool:
        """A shared machine unless servers run as their users' own accounts."""
        return not separates_users(config)

    home_root = Unicode(
        "/tmp/hybridhub-homes",
        help="Directory holding one home directory per user ({home_root}/{username}).",
    ).tag(config=True)

    simulated_inventory = Dict(
        help="Simulated hardware: offering key ('class/name') -> {host name: number of devices}. A tracked "
        "offering shows real 'Free now' numbers from the allocation table, holds its devices until stop, "
        "and a launch beyond them is refused with 429 and Retry-After. Offerings not listed are not tracked.",
    ).tag(config=True)

    ready_poll_interval = Float(
        0.01,
        help="Seconds between readiness probes of the new server before start() returns "
        "(answering fast here saves the hub's slower back-off poll).",
    ).tag(config=True)

    prestart = Bool(
        True,
        help="Keep one server process started ahead, its modules imported, for the next launch "
        "(hybridhub.backends.local.prestart): a launch then skips the interpreter start and imports. The first launch "
        "after the hub starts, a custom cmd, a confined launch (hide_paths) and a launch whose "
        "import-time environment differs from the waiting process's start cold.",
    ).tag(config=True)

    #: The process started ahead in this hub, with the import-time environment it started with.
    _ahead: ClassVar[tuple[dict[str, str], subprocess.Popen] | None] = None

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        """The hub's own interpreter runs the server: no dependence on the caller's PATH."""
        return list(SINGLEUSER_CMD)

    @property
    def home_dir(self) -> str:
        """The user's home directory, created on demand."""
        return str(Path(self.home_root) / self.user.name)

    def get_args(self) -> list[str]:
        """JupyterHub's arguments, plus ``--allow-root`` when the hub, and so the server, runs as root
        (else jupyter-server refuses to start: "Running as root is not recommended")."""
        args = super().get_args()
        if os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        return args

    _account: Account | None = None

    def make_preexec_fn(self, name):
        """Become the user's own account (separate_users), else stay the hub's user."""
        return self._account.preexec(self.home_dir) if self._account else None

    def _prepare_account(self) -> None:
        """The user's own account and private home, or a refusal saying why (separate_users)."""
        if not self.separate_users:
            return
        if os.geteuid() != 0:
            raise user_error(503, "LocalBackend.separate_users needs a hub that runs as root; tell your "
                             "hub's administrators")
        try:
            self._account = account_for(self.user.name, create=self.create_system_users, home=self.home_dir)
            private_home(Path(self.home_dir), self._account)
        except AccountRefused as e:
            raise user_error(403, f"Your server cannot start: {e}.") from None
        for what, blocked in (("their home", unreachable(self.home_root)), ("Python", python_unreachable())):
            if blocked is not None:
                raise user_error(503, f"{blocked} (mode {blocked.stat().st_mode & 0o777:o}) lets no user's "
                                 f"account through to {what}; tell your hub's administrators")

    def user_env(self, env):
        """Point HOME and USER at the per-user home, not the hub's."""
        env["USER"] = self.user.name
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH") or os.defpath])
        return env

    def get_env(self):
        """Hub environment plus the description of the assigned (simulated) hardware, whose
        utilisation the server's extension reads from a file (``hybridhub_lab.sampler``)."""
        env = super().get_env()
        env.update(self.accelerator_env())
        env["HYBRIDHUB_UTILISATION_SOURCE"] = "simulated"
        return env

    # --- simulated capacity -------------------------------------------------------------

    @classmethod
    async def free_now(cls, offering, config: Config) -> int | None:
        """Free simulated devices of ``offering`` (None: not in :attr:`simulated_inventory`)."""
        return (await cls.free_now_many([offering], config))[0]

    @classmethod
    async def free_now_many(cls, offerings, config: Config) -> list[int | None]:
        """Free simulated devices of each offering, in one database read."""
        inventory = config.LocalBackend.get("simulated_inventory", {}) if "LocalBackend" in config else {}
        lists = [simulated_candidates(inventory, o) for o in offerings]
        return await free_counts(db_url_from_config(config, "LocalBackend"), lists)

    @property
    def owner(self) -> str:
        """The allocation owner key of this server."""
        return f"local/{self.user.name}/{self.name}"

    @property
    def allocator(self):
        """The allocator on the hub's accounting database."""
        return allocator_for(db_url_from_config(self.config, "LocalBackend"))

    async def _allocate(self) -> None:
        cands = simulated_candidates(self.simulated_inventory, self.offering) if self.offering else None
        if cands is None:
            return
        count = self.request.count if self.request is not None else 1
        allocator = await asyncio.to_thread(lambda: self.allocator)  # first use: schema check
        try:
            placement = await asyncio.to_thread(
                allocator.allocate, cands, count, owner=self.owner,
                what=f"{self.offering.model} ({self.offering.resource_class})", model=self.offering.model,
                username=self.user.name, server_name=self.name, offering=self.offering.key,
            )
        except NoCapacity as e:
            raise no_capacity_error(str(e)) from None
        self.host_name, self.devices = placement.host, list(placement.gpus)

    async def _release(self, reason: str) -> None:
        if self.devices:
            await asyncio.to_thread(self.allocator.release, owner=self.owner, reason=reason)
            self.devices = []

    host_name: str = ""
    devices: list[str] = []

    def get_state(self):
        """Process state plus the simulated host and devices held."""
        state = super().get_state()
        if self.devices:
            state.update(host_name=self.host_name, devices=self.devices)
        return state

    def load_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().load_state(state)
        self.host_name = state.get("host_name", "")
        self.devices = list(state.get("devices", []))

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self):
        """Hold the simulated devices, start the process and return once it answers HTTP (or has died)."""
        await asyncio.to_thread(self._prepare_account)
        await self._allocate()
        try:
            Path(self.home_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.notebook_dir = self.notebook_dir or self.home_dir
            if not self.port:
                self.port = random_port()
            ahead = self.prestart and self.cmd == SINGLEUSER_CMD and not (self.shell_cmd or self.popen_kwargs)
            env = self.get_env() if ahead else {}  # a cold start builds its own (LocalProcessSpawner.start)
            if not (ahead and self._take_ahead(env)):
                await super().start()
        except BaseException:
            await self._release("failed to start")
            raise
        ip, port = self.ip or "127.0.0.1", self.port
        await self.wait_until_answering(ip, port)
        if ahead:  # once this one answers: it does not share the CPU with the next one's imports
            self._start_ahead(import_env(env))
        return ip, port

    def _take_ahead(self, env: dict[str, str]) -> bool:
        """Hand this launch to the process started ahead, if it is alive and started alike."""
        slot, LocalBackend._ahead = LocalBackend._ahead, None
        if slot is None:
            return False
        started_with, proc = slot
        if started_with != import_env(env) or proc.poll() is not None:
            _end(proc)
            return False
        launch = {"argv": ["jupyterhub-singleuser", *self.get_args()], "env": env, "cwd": os.getcwd()}
        if self._account:
            launch.update(account=self._account.as_json(), cwd=self.home_dir)
        try:
            proc.stdin.write((json.dumps(launch) + "\n").encode())
            proc.stdin.close()
        except OSError:  # it died meanwhile
            _end(proc)
            return False
        self.proc, self.pid = proc, proc.pid
        self.log.info("Spawning %s in process %d, started ahead", shlex.join(SINGLEUSER_CMD + launch["argv"][1:]),
                      proc.pid)
        return True

    def _start_ahead(self, started_with: dict[str, str]) -> None:
        """Start the process for the next launch (it imports, then waits on stdin)."""
        if LocalBackend._ahead is not None:
            return
        # home_root names the hub in ps
        cmd = [sys.executable, "-P", "-m", "hybridhub.backends.local.prestart", self.home_root]
        try:  # it imports as the hub's user: from the installation only, never from a folder users may write
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=started_with, start_new_session=True, cwd="/")
        except OSError as e:
            self.log.warning("could not start a server process ahead: %s", e)
            return
        LocalBackend._ahead = (started_with, proc)

    async def poll(self):
        """The process's status; a dead server gives its devices back."""
        status = await super().poll()
        if status is not None:
            await self._release("exited")
        return status

    async def stop(self, now=False):
        """Stop the process and give its devices back."""
        await super().stop(now=now)
        await self._release("stopped")

    def hide_paths(self, paths: list[str]) -> None:
        """Start the server through :mod:`hybridhub.backends.local.confine`: a private mount namespace with an
        empty read-only tmpfs over each folder."""
        home = Path(self.home_dir)
        hide = [a for p in paths for a in ("--hide", str(home / p))]
        self.cmd = [sys.executable, "-P", "-m", "hybridhub.backends.local.confine", *hide, "--", *self.cmd]

    def provenance(self) -> dict[str, object]:
        """A local process: the host is this machine (or its simulated host and devices)."""
        facts: dict[str, object] = {"host": self.host_name or os.uname().nodename, "pid": self.pid,
                                    "image": "local-process"}
        if self.devices:
            facts["gpu_uuids"] = list(self.devices)
        return facts
