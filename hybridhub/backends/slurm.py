"""The ``slurm`` backend: the notebook server as a batch job on the university's GPU cluster.

An offering names a Slurm ``partition`` and a GRES ``name:type`` (``gpu:h100``); the
launch's count becomes ``--gres=gpu:h100:<count>``.  :func:`sbatch_script` (a pure
function, tested without Slurm) builds the job script: ``#SBATCH`` directives (job name
and comment tagged with the hub id and user, ``--time`` from the reserved hours,
``--no-requeue``) and an ``exec`` of the hub's own ``jupyterhub-singleuser`` on a port
chosen before submitting.  Values of the server's environment (its API token among them)
never appear in the script: ``sbatch`` runs with exactly that environment (nothing of the
hub's own) and exports all of it.  Naming variables in ``--export`` instead would make
slurmd run the user's login shell first (``su - user``, implied by ``--export=<names>`` in
Slurm 22.05), whose profile can stall the launch past ``BatchStartTimeout`` (NODE_FAIL);
``login_environment`` opts into it.

Every Slurm command runs as an asyncio subprocess with a timeout, never blocking the hub's
loop.  Job states come from one ``squeue --json`` call shared by all servers of the hub
(Slurm 22.05's ``scontrol`` has no ``--json``).  A failing or slow status command means
"unknown", never "gone": only Slurm saying the job ended, or the job missing from
``squeue`` for longer than ``gone_grace`` on two checks, ends a server.  A job that ends
before its server answers fails the spawn with Slurm's own reason; a job that Slurm ends with
``NODE_FAIL`` gives ``poll`` a text status, which the session record keeps as ``host lost``.

A reconciliation loop in the hub (``reconcile_interval``) cancels live jobs carrying this hub's
tag that the hub's database has no server for (:func:`orphan_jobs`); other hubs' jobs and
untagged jobs are never touched.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from traitlets import Bool, Dict, Float, Int, List, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from hybridhub.backends.base import BackendMixin
from hybridhub.catalog import CatalogError
from hybridhub.errors import no_capacity_error, user_error

#: A Slurm GRES name and type, e.g. ``gpu:h100`` (the count comes from the launch).
GRES_PATTERN = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9_.-]+$")

#: Job states in which the job still holds (or waits for) its node.
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "RESIZING", "REQUEUED"}
#: Slurm shows an ending job as COMPLETING until its node has cleaned up, hiding the final state
#: (NODE_FAIL, FAILED...): wait for that rather than end the server with "COMPLETING".
ENDING_STATES = {"COMPLETING"}
#: Job states that mean the node went away under the job (poll() then gives a text status: host lost).
HOST_LOST_STATES = {"NODE_FAIL", "BOOT_FAIL"}
#: Node states and flags that take a node's GPUs out of "free now".
UNAVAILABLE_NODE = {
    "DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING", "MAINTENANCE",
    "POWERED_DOWN", "POWERING_DOWN", "FUTURE", "UNKNOWN", "INVAL", "REBOOT_REQUESTED",
}

_GRES_ITEM = re.compile(r"([a-z][a-z0-9_]*):(?:([^:,()]+):)?(\d+)")


class SlurmCommandError(RuntimeError):
    """A Slurm command failed, timed out or answered something unreadable: state unknown."""


# --- the job script: a pure function -----------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything :func:`sbatch_script` needs; plain data, no Slurm."""

    job_name: str
    comment: str
    gres: str
    count: int
    hours: float
    command: list[str]
    env_names: tuple[str, ...]
    workdir: str
    output: str
    partition: str | None = None
    cpus: int | None = None
    mem: str | None = None
    extra_directives: tuple[str, ...] = field(default_factory=tuple)
    login_environment: bool = False
    #: The hub user and server names the paths and tags were built from (checked when given).
    user: str | None = None
    server: str = ""


def slurm_time(hours: float) -> str:
    """``--time`` as ``D-HH:MM:SS``, rounded up to the whole minute."""
    minutes = max(1, math.ceil(round(hours * 60, 6)))
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def safe_tag(value: str) -> str:
    """``value`` with everything but letters, digits and ``._@-`` replaced (names, comments)."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", value)[:100]


#: A user or server name that may go into the job's paths and tags as it is.
SLURM_NAME = re.compile(r"[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,63}")
#: sbatch starts a heterogeneous job's next component at an ``#SBATCH`` line holding either word.
_HETJOB = re.compile("packjob|hetjob", re.IGNORECASE)
#: One ``#SBATCH`` argument: an option, and its value in printable ASCII without a space.
_DIRECTIVE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[!-~]*)?")
#: Characters sbatch's parser reads specially (quotes, escapes, comments).
_SPECIAL = frozenset("\"'\\#")
_PATH = re.compile(r"/[A-Za-z0-9._@+/%-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_HETJOB_WHY = "Slurm reads 'hetjob' and 'packjob' in a job script as job separators"


def _refusal(what: str, name: str, why: str):
    shown = name if len(name) <= 80 else name[:80] + "..."
    return user_error(400, f"{what} {shown!r} cannot be used on the Slurm cluster: {why}.")


def check_slurm_name(what: str, name: str) -> None:
    """Refuse (400, shown to the user) a user name the job's paths cannot carry as it is."""
    if not SLURM_NAME.fullmatch(name):
        raise _refusal(what, name, "only 1 to 64 letters, digits and . _ @ + - are allowed, "
                                   "not starting with . or -")
    if _HETJOB.search(name):
        raise _refusal(what, name, _HETJOB_WHY)


def _check_directive(directive: str) -> None:
    if not _DIRECTIVE.fullmatch(directive) or _SPECIAL & set(directive) or _HETJOB.search(directive):
        raise ValueError(
            f"#SBATCH {directive!r} cannot be used: one option in printable ASCII without spaces, "
            "quotes, '\\', '#', 'hetjob' or 'packjob'"
        )


def _check_path(option: str, path: str) -> None:
    parts = path.split("/")
    if (
        not _PATH.fullmatch(path)
        or "." in parts
        or ".." in parts
        or option != "output" and "%" in path
        or _HETJOB.search(path)
    ):
        raise ValueError(
            f"--{option} path {path!r} cannot be used: it must be absolute, of letters, digits and "
            f"._@+-/{'%' if option == 'output' else ''} only, without . or .. parts"
        )


def sbatch_script(spec: JobSpec) -> str:
    """The batch script for ``spec`` (the server's environment values are not in it).

    No value can change which options sbatch reads.  sbatch splits an ``#SBATCH`` line's rest at
    whitespace, takes quotes and ``\\`` specially, ends it at a ``#`` and starts a heterogeneous job's
    next component at a line holding ``hetjob`` or ``packjob``; so nothing is quoted there, every
    value is checked instead:

    * the user name (``spec.user``; the paths and tags are built from it) must match
      :data:`SLURM_NAME` (letters, digits, ``._@+-``, not starting with ``.`` or ``-``, at most 64)
      and hold neither word, the server name (``spec.server``, in the tags through :func:`safe_tag`)
      neither word; otherwise a 400 naming the field reaches the user;
    * ``--chdir`` and ``--output`` must be absolute paths of those characters and ``/`` (``%`` for
      sbatch's patterns in ``--output`` only, which user names cannot hold), without ``.``/``..`` parts;
    * every directive (the site's ``extra_directives`` too) must be one option in printable ASCII
      without spaces, quotes, ``\\`` or ``#``; ``--export`` names must be variable names;
    * the command is the only script text after the directives: each word ``shlex.quote``-d, none
      holding a newline (a line of its own) or NUL.

    A value failing the last three comes from the site's configuration: :class:`ValueError`.
    """
    if spec.user is not None:
        check_slurm_name("user name", spec.user)
    if _HETJOB.search(spec.server):  # the server name reaches the tags only, through safe_tag
        raise _refusal("server name", spec.server, _HETJOB_WHY)
    if spec.count < 1:
        raise ValueError(f"GRES count must be >= 1, got {spec.count}")
    _check_path("chdir", spec.workdir)
    _check_path("output", spec.output)
    directives = [
        f"--job-name={spec.job_name}",
        f"--comment={spec.comment}",
        f"--gres={spec.gres}:{spec.count}",
        f"--time={slurm_time(spec.hours)}",
        "--nodes=1",
        "--ntasks=1",
        "--no-requeue",
        f"--chdir={spec.workdir}",
        f"--output={spec.output}",
    ]
    if spec.login_environment:  # slurmd loads the login env, then sbatch's named variables
        for name in spec.env_names:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"variable name {name!r} cannot be used in --export")
        directives += [f"--export={','.join(spec.env_names) or 'NONE'}", "--get-user-env"]
    else:  # sbatch's own (clean) environment is the job's, exactly
        directives.append("--export=ALL")
    if spec.partition:
        directives.append(f"--partition={spec.partition}")
    if spec.cpus:
        directives.append(f"--cpus-per-task={spec.cpus}")
    if spec.mem:
        directives.append(f"--mem={spec.mem}")
    directives.extend(spec.extra_directives)
    for d in directives:
        _check_directive(d)
    for word in spec.command:
        if "\n" in word or "\0" in word:
            raise ValueError(f"command word {word!r} cannot be used in the job script: a newline or NUL")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -eu"]
    lines.append("exec " + " ".join(shlex.quote(a) for a in spec.command))
    return "\n".join(lines) + "\n"


# --- reading Slurm's JSON: pure functions ------------------------------------------------------


def parse_gres(text: str) -> dict[str, int]:
    """``gpu:h100:4(S:0),gpu:a100:2`` -> ``{"gpu:h100": 4, "gpu:a100": 2}`` (untyped: ``gpu``)."""
    out: dict[str, int] = {}
    for name, gtype, n in _GRES_ITEM.findall(re.sub(r"\([^)]*\)", "", text or "")):
        key = f"{name}:{gtype}" if gtype else name
        out[key] = out.get(key, 0) + int(n)
    return out


def node_available(node: Mapping[str, Any]) -> bool:
    """Whether a ``sinfo --json`` node may take new jobs (not down, drained, failing...)."""
    state = node.get("state", "")
    states = {s.upper() for s in (state if isinstance(state, list) else [state])}
    states |= {s.upper() for s in node.get("state_flags") or []}
    return not states & UNAVAILABLE_NODE


def free_gres(nodes: Iterable[Mapping[str, Any]], gres: str, partition: str | None = None) -> int:
    """Free units of ``gres`` (configured minus used) over available nodes (of ``partition``)."""
    total = 0
    for node in nodes:
        if partition and partition not in (node.get("partitions") or []):
            continue
        if not node_available(node):
            continue
        have = parse_gres(node.get("gres", "")).get(gres, 0)
        used = parse_gres(node.get("gres_used", "")).get(gres, 0)
        total += max(0, have - used)
    return total


def job_state(job: Mapping[str, Any]) -> str:
    """The job's base state (22.05 gives a string, later versions a list)."""
    state = job.get("job_state", "")
    if isinstance(state, list):
        state = state[0] if state else ""
    return str(state).upper()


def job_reason(job: Mapping[str, Any]) -> str:
    """Slurm's account of the job's state for a person: ``PENDING (Resources)``, ``NODE_FAIL``."""
    state = job_state(job)
    reason = job.get("state_reason") or ""
    if reason and reason != "None":
        return f"{state} ({reason})"
    return state


def exit_status(job: Mapping[str, Any]) -> int:
    """A non-zero status for an ended job (its exit code where Slurm gives one)."""
    code = job.get("exit_code")
    if isinstance(code, dict):
        code = code.get("return_code")
    if isinstance(code, int) and code > 0:
        return code
    return 1 if job_state(job) != "COMPLETED" else 0


def job_tag(job: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``(hub_id, user, server)`` from a ``hybridhub:<hub_id>:<user>:<server>`` comment; None if untagged."""
    parts = str(job.get("comment") or "").split(":")
    if len(parts) != 4 or parts[0] != "hybridhub" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2], parts[3]


def _epoch(job: Mapping[str, Any], field: str) -> float | None:
    """A time field of a job (epoch seconds; 22.05 gives a number, later versions ``{"number": ...}``)."""
    t = job.get(field)
    if isinstance(t, dict):
        t = t.get("number") if t.get("set", True) else None
    return float(t) if isinstance(t, (int, float)) and t > 0 else None


def submit_time(job: Mapping[str, Any]) -> float | None:
    """The job's submit time (epoch seconds)."""
    return _epoch(job, "submit_time")


def _number(value: Any) -> float:
    if isinstance(value, dict):
        value = value.get("number", 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def queue_position(jobs: Iterable[Mapping[str, Any]], job: Mapping[str, Any]) -> int:
    """1 + the PENDING jobs of the same partition that Slurm will consider before ``job``.

    Slurm schedules a partition's pending jobs by priority, then job id (among the jobs
    squeue shows the hub).
    """
    part, prio, jid = job.get("partition"), _number(job.get("priority")), int(job.get("job_id", 0))
    ahead = sum(
        1
        for other in jobs
        if job_state(other) == "PENDING"
        and other.get("partition") == part
        and int(other.get("job_id", 0)) != jid
        and (_number(other.get("priority")), -int(other.get("job_id", 0))) > (prio, -jid)
    )
    return ahead + 1


def queue_message(jobs: Iterable[Mapping[str, Any]], job: Mapping[str, Any]) -> str:
    """What the spawn page says of a queued job: position, Slurm's estimated start, its reason."""
    where = f" in partition {job['partition']}" if job.get("partition") else ""
    start = _epoch(job, "start_time")
    when = (
        "Slurm estimates the start at " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start))
        if start
        else "no start estimate from Slurm yet"
    )
    return f"Queued{where}: position {queue_position(jobs, job)}, {when} ({job_reason(job)})"


def orphan_jobs(
    jobs: Mapping[int, Mapping[str, Any]], hub_id: str, known: set[tuple[str, str, int]], now: float, grace: float
) -> list[int]:
    """Live jobs tagged with ``hub_id`` whose ``(user, server, job id)`` is not in ``known``.

    Jobs of other hubs, untagged jobs, ended jobs and jobs submitted less than ``grace`` seconds ago
    (a spawn whose state the hub has not saved yet) are never orphans.
    """
    out = []
    for job_id, job in jobs.items():
        tag = job_tag(job)
        if tag is None or tag[0] != safe_tag(hub_id) or job_state(job) not in LIVE_STATES:
            continue
        if (tag[1], tag[2], int(job_id)) in known:
            continue
        submitted = submit_time(job)
        if submitted is not None and now - submitted < grace:
            continue
        out.append(int(job_id))
    return sorted(out)


def known_jobs_from_hub_db(db) -> set[tuple[str, str, int]]:
    """``(user tag, server tag, job id)`` of every server the hub's database has (running or pending).

    Reads each ``orm.Spawner.state`` (HybridSpawner keeps the backend's state under ``backend_state``;
    a bare SlurmBackend keeps it at the top level).
    """
    from jupyterhub import orm

    known = set()
    for sp in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)):
        state = sp.state or {}
        if isinstance(state, str):
            state = json.loads(state)
        inner = state.get("backend_state") or state
        if inner.get("job_id"):
            server = safe_tag(sp.name) if sp.name else ""
            known.add((safe_tag(sp.user.name), server, int(inner["job_id"])))
    return known


# --- running Slurm commands --------------------------------------------------------------------


class SlurmCommands(LoggingConfigurable):
    """How the hub runs Slurm's client commands (asyncio subprocesses with a timeout)."""

    sbatch = List(Unicode(), ["sbatch"], help="The sbatch command (argv prefix).").tag(config=True)
    squeue = List(
        Unicode(),
        ["squeue", "--json", "--states=all", "--me"],
        help="Command printing the hub's jobs as JSON (one call serves every server's poll).",
    ).tag(config=True)
    scancel = List(Unicode(), ["scancel"], help="The scancel command (argv prefix).").tag(config=True)
    sinfo = List(
        Unicode(), ["sinfo", "--json"], help="Command printing the nodes as JSON (free GRES)."
    ).tag(config=True)
    env = Dict(
        help="Extra environment for Slurm commands, e.g. {'SLURM_CONF': '/etc/slurm/slurm.conf'}."
    ).tag(config=True)
    timeout = Float(
        10.0, help="Seconds one Slurm command may take; a slower one counts as failed (state unknown)."
    ).tag(config=True)
    cache_seconds = Float(
        1.0,
        help="Seconds one squeue/sinfo answer is reused by every server's poll (one call, not one "
        "per server).",
    ).tag(config=True)

    async def run(
        self, argv: list[str], *, stdin: str = "", env: Mapping[str, str] | None = None, clean: bool = False
    ) -> str:
        """Run ``argv``; its stdout, or :class:`SlurmCommandError` (failure or timeout).

        ``clean``: the command gets ``env`` and :attr:`env` only, plus the hub's ``PATH`` and
        ``SLURM_CONF`` to find Slurm, none of the hub's other variables (its secrets).
        """
        base = os.environ
        if clean:
            base = {k: v for k, v in os.environ.items() if k == "SLURM_CONF"}
            base["PATH"] = os.environ.get("PATH", os.defpath)
        full_env = {**base, **self.env, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
            )
        except OSError as e:
            raise SlurmCommandError(f"{argv[0]}: {e}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmCommandError(f"{argv[0]} did not answer within {self.timeout:g} s") from None
        if proc.returncode != 0:
            raise SlurmCommandError(
                f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
            )
        return out.decode(errors="replace")

    async def json(self, argv: list[str]) -> dict:
        """Run ``argv`` and parse its JSON (unreadable output is a :class:`SlurmCommandError`)."""
        out = await self.run(argv)
        try:
            return json.loads(out)
        except ValueError:
            raise SlurmCommandError(f"{argv[0]} printed no JSON") from None

    _cache: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def cached_json(self, argv: list[str]) -> dict:
        """:meth:`json`, shared by concurrent callers and reused for ``cache_seconds``."""
        key = (tuple(argv), tuple(sorted(self.env.items())))
        now = time.monotonic()
        hit = SlurmCommands._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return await asyncio.shield(hit[1])
        fut = asyncio.ensure_future(self.json(argv))
        SlurmCommands._cache[key] = (now, fut)
        try:
            return await asyncio.shield(fut)
        except SlurmCommandError:
            SlurmCommands._cache.pop(key, None)  # do not reuse a failure
            raise

    async def jobs(self) -> dict[int, dict]:
        """Job id -> ``squeue --json`` record, for the hub's jobs."""
        data = await self.cached_json(list(self.squeue))
        return {int(j["job_id"]): j for j in data.get("jobs", [])}

    async def nodes(self) -> list[dict]:
        """The ``sinfo --json`` node records."""
        return list((await self.cached_json(list(self.sinfo))).get("nodes", []))

    async def submit(self, script: str, env: Mapping[str, str]) -> int:
        """``sbatch --parsable`` the script (on stdin) with exactly ``env``; the new job id."""
        out = await self.run([*self.sbatch, "--parsable"], stdin=script, env=env, clean=True)
        try:
            return int(out.strip().split(";")[0])
        except ValueError:
            raise SlurmCommandError(f"sbatch printed no job id: {out[:100]!r}") from None

    async def cancel(self, job_id: int) -> None:
        """``scancel`` the job."""
        await self.run([*self.scancel, str(job_id)])


def _commands(config: Config) -> SlurmCommands:
    return SlurmCommands(config=config)


# --- the backend -------------------------------------------------------------------------------


class SlurmBackend(BackendMixin, Spawner):
    """Run the server as a Slurm batch job holding the offering's GRES on one node."""

    @classmethod
    def check_offering(cls, offering) -> None:
        """A Slurm offering names its GRES as ``name:type`` (the count comes from the launch)."""
        if not GRES_PATTERN.match(offering.gres or ""):
            raise CatalogError(offering.config_key("gres"),
                               f"must be a Slurm GRES name:type like 'gpu:h100' for the slurm backend, "
                               f"got {offering.gres!r}")

    died_check_every = 4  # while the new server boots, ask squeue (via poll) every 4 probes

    hub_id = Unicode(
        "hybridhub",
        help="This hub's tag in job names and comments (`hybridhub-<hub_id>-<user>`): only jobs "
        "carrying it are this hub's. Give each hub its own.",
    ).tag(config=True)

    singleuser_command = List(
        Unicode(),
        help="The command the job runs. Default: the hub's own venv `jupyterhub-singleuser` "
        "(next to sys.executable, on the shared filesystem), or an `apptainer exec` of the "
        "site's image (docs/slurm.md).",
    ).tag(config=True)

    home_dir_template = Unicode(
        "/home/{username}",
        help="The user's home on the cluster's shared filesystem; the job starts there.",
    ).tag(config=True)

    create_home = Bool(
        True,
        help="Create the home from the hub if missing (the hub host mounts the shared filesystem).",
    ).tag(config=True)

    output_template = Unicode(
        "{home}/.hybridhub/slurm-%j.log",
        help="The job's output file ({home}: the home; %j: the job id). Absolute.",
    ).tag(config=True)

    extra_directives = List(
        Unicode(),
        help="More #SBATCH options for every job, e.g. ['--account=hpc-jupyter', '--qos=interactive'].",
    ).tag(config=True)

    login_environment = Bool(
        False,
        help="Load the user's login environment on the node before the server's (sbatch "
        "--get-user-env: slurmd runs `su - <user>`). Off: the job's environment is exactly the "
        "one the hub builds, as on every other class.",
    ).tag(config=True)

    fail_fast = Bool(
        True,
        help="Refuse a launch with 429 and Retry-After when Slurm shows too few free GRES of the "
        "offering right now. False: submit it anyway and let it queue; the spawn page shows its "
        "queue position and Slurm's estimated start until it runs (raise pending_timeout and the "
        "hub's Spawner.start_timeout to how long a user may wait).",
    ).tag(config=True)

    retry_after = Int(60, help="Seconds in the Retry-After header of a refused launch.").tag(config=True)

    pending_timeout = Float(
        30.0,
        help="Seconds a submitted job may stay PENDING before it is cancelled and the spawn fails "
        "with Slurm's pending reason (the hub's start_timeout also applies).",
    ).tag(config=True)

    gone_grace = Float(
        60.0,
        help="Seconds a running job may be missing from squeue before the server counts as gone "
        "(checked twice). A failing or slow squeue never ends a server.",
    ).tag(config=True)

    check_interval = Float(
        0.2, help="Seconds between job-state checks while a new job starts."
    ).tag(config=True)

    ready_poll_interval = Float(
        0.05, help="Seconds between readiness probes of the new server before start() returns."
    ).tag(config=True)

    reconcile_interval = Float(
        300.0,
        help="Seconds between reconciliation passes in the hub: cancel live jobs tagged with this "
        "hub's hub_id whose server the hub's database does not have (orphans of a crashed hub or a "
        "failed scancel). Jobs of other hubs and untagged jobs are never touched. 0 turns the loop off.",
    ).tag(config=True)

    reconcile_grace = Float(
        120.0,
        help="Seconds after its submission a job is left alone by the reconciler (its spawn may not "
        "have saved the job id yet).",
    ).tag(config=True)

    job_id = Int(0, help="The Slurm job id (state).")
    node = Unicode("", help="The node the job runs on (state).")
    node_ip = Unicode("", help="The node's address the hub reaches the server at (state).")

    #: Slurm's account of how the job ended (``NODE_FAIL``, ``CANCELLED``...), for messages.
    slurm_reason: str = ""
    _missing_since: float | None = None
    _missing_checks: int = 0
    _gres_detail: list[str] = []
    _partition: str = ""

    #: The reconciliation loop (one per hub process) and the jobs this process is starting right now.
    _reconciler_task: ClassVar[asyncio.Task | None] = None
    _starting: ClassVar[set[tuple[str, str, int]]] = set()

    @default("singleuser_command")
    def _default_singleuser_command(self):
        return [str(Path(sys.executable).parent / "jupyterhub-singleuser")]

    @property
    def commands(self) -> SlurmCommands:
        """How Slurm commands are run (``c.SlurmCommands``)."""
        return _commands(self.config)

    @property
    def _job_key(self) -> tuple[str, str, int]:
        """``(user tag, server tag, job id)``, as :func:`known_jobs_from_hub_db` lists it."""
        return safe_tag(self.user.name), safe_tag(self.name) if self.name else "", self.job_id

    @property
    def _label(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    # --- capacity -------------------------------------------------------------------------

    @classmethod
    async def free_now(cls, offering, config: Config) -> int | None:
        """Free GRES of ``offering`` in its partition, from ``sinfo --json`` (None: unknown)."""
        if not offering.gres:
            return None
        try:
            nodes = await _commands(config).nodes()
        except SlurmCommandError:
            return None
        return free_gres(nodes, offering.gres, offering.partition)

    # --- the job --------------------------------------------------------------------------

    @property
    def home(self) -> str:
        """The user's home on the shared filesystem."""
        return self.home_dir_template.format(username=self.user.name)

    def job_env(self) -> dict[str, str]:
        """The server's environment: sbatch's whole environment, and so the job's."""
        env = self.get_env()
        env.update(self.accelerator_env())
        env["HOME"] = self.home
        env["USER"] = self.user.name
        env.setdefault("PATH", f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin")
        return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_"))}

    def job_spec(self, env: Mapping[str, str]) -> JobSpec:
        """This launch's :class:`JobSpec`."""
        off, req = self.offering, self.request
        tag = safe_tag(self.user.name)
        server = safe_tag(self.name) if self.name else ""
        cpus = int(off.cpu_limit) if off is not None and off.cpu_limit else None
        mem = None
        if off is not None and off.mem_limit:
            mem = str(off.mem_limit).upper().rstrip("B")
        return JobSpec(
            job_name=f"hybridhub-{safe_tag(self.hub_id)}-{tag}" + (f"-{server}" if server else ""),
            comment=f"hybridhub:{safe_tag(self.hub_id)}:{tag}:{server}",
            gres=off.gres,
            count=req.count if req is not None else 1,
            hours=req.hours if req is not None else off.max_hours,
            command=[*self.singleuser_command, *self.get_args()],
            env_names=tuple(sorted(env)),
            workdir=self.home,
            output=self.output_template.format(home=self.home),
            partition=off.partition,
            cpus=cpus,
            mem=mem,
            extra_directives=tuple(self.extra_directives),
            login_environment=self.login_environment,
            user=self.user.name,
            server=self.name or "",
        )

    async def _job(self) -> dict | None:
        """This job's squeue record, None if squeue does not list it (SlurmCommandError: unknown)."""
        return (await self.commands.jobs()).get(self.job_id)

    async def _node_address(self, node: str) -> str:
        for n in await self.commands.nodes():
            if n.get("name") == node:
                return n.get("address") or node
        return node

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self):
        """Submit the job, wait for it to run on a node, return once the server answers."""
        feed = self._open_feed()
        try:
            return await self._start()
        finally:
            feed.finish()

    async def _start(self):
        self._ensure_reconciler()
        off, req = self.offering, self.request
        if off is None or not off.gres:
            raise user_error(500, "This offering has no Slurm GRES configured.")
        count = req.count if req is not None else 1
        if self.fail_fast:
            free = await self.free_now(off, self.config)
            if free is not None and free < count:
                raise no_capacity_error(
                    f"No capacity for {count} x {off.model} on the Slurm cluster right now "
                    f"({free} free); please try again later."
                )
        self.slurm_reason = ""
        self.port = random_port()
        self.ip = "0.0.0.0"
        if self.create_home:
            Path(self.output_template.format(home=self.home)).parent.mkdir(parents=True, exist_ok=True)
        env = self.job_env()
        script = sbatch_script(self.job_spec(env))
        try:
            self.job_id = await self.commands.submit(script, env)
        except SlurmCommandError as e:
            self.log.error("%s: sbatch failed: %s", self._label, e)
            raise user_error(503, "The Slurm cluster did not accept the job; please try again later.") from None
        partition = off.partition or "default"
        self._emit(10, f"Submitted Slurm job {self.job_id} ({off.gres} x{count}, partition {partition})")
        starting = self._job_key
        SlurmBackend._starting.add(starting)  # known until the hub's database has it, or the job ends
        try:
            return await self._wait_until_ready()
        except BaseException:
            SlurmBackend._starting.discard(starting)
            await asyncio.shield(self._cancel_quietly())
            raise

    async def _wait_until_ready(self) -> tuple[str, int]:

        submitted = time.monotonic()
        job: dict | None = None
        queued = ""
        while True:
            try:
                jobs = await self.commands.jobs()
                job = jobs.get(self.job_id)
            except SlurmCommandError as e:
                self.log.warning("%s: squeue failed while starting (%s); retrying", self._label, e)
                job = None
            state = job_state(job) if job else ""
            if state == "PENDING":
                message = queue_message(jobs.values(), job)
                if message != queued:
                    queued = message
                    self._emit(20, queued)
            if state == "RUNNING" and job.get("batch_host") or state == "RUNNING" and job.get("nodes"):
                break
            if job and state not in LIVE_STATES | ENDING_STATES:
                self.slurm_reason = job_reason(job)
                raise self._ended_error(before="before it started")
            if time.monotonic() - submitted > self.pending_timeout:
                why = job_reason(job) if job else "not listed by squeue"
                raise user_error(
                    503,
                    f"Your Slurm job {self.job_id} could not start within "
                    f"{int(self.pending_timeout)} s: {why}. It has been cancelled.",
                )
            await asyncio.sleep(self.check_interval)
        self.node = job.get("batch_host") or job.get("nodes")
        self._partition = job.get("partition", "")
        self._gres_detail = list(job.get("gres_detail") or [])
        self.node_ip = await self._node_address(self.node)
        self._emit(60, f"Job {self.job_id} runs on {self.node}; waiting for Jupyter to answer")
        await self.wait_until_answering(self.node_ip, self.port)  # returns early if poll() sees the job end
        if self.slurm_reason:
            raise self._ended_error(before="before its server answered")
        self._emit(90, f"Your Jupyter server on {self.node} is answering")
        return self.node_ip, self.port

    def _ended_error(self, before: str):

        self.log.warning("%s: job %d ended %s: %s", self._label, self.job_id, before, self.slurm_reason)
        return user_error(
            503, f"Your Slurm job {self.job_id} ended {before}: {self.slurm_reason}."
        )

    async def poll(self):
        """None while the job lives (or its state is unknown); a status once Slurm says it ended."""
        if not self.job_id:
            return 0
        self._ensure_reconciler()
        try:
            job = await self._job()
        except SlurmCommandError as e:
            self.log.warning("%s: cannot read job %d (%s); assuming it still runs", self._label, self.job_id, e)
            return None
        if job is not None:
            self._missing_since, self._missing_checks = None, 0
            state = job_state(job)
            if state == "PENDING" and self.node:  # requeued after it ran (a launch lost with its node)
                self.slurm_reason = f"requeued after losing node {self.node}: {job_reason(job)}"
                self.log.warning("%s: job %d %s", self._label, self.job_id, self.slurm_reason)
                return f"node {self.node} lost: {self.slurm_reason}"
            if state in LIVE_STATES | ENDING_STATES:
                return None  # still running, or ending with its final state not shown yet
            self.slurm_reason = job_reason(job)
            self.log.info("%s: job %d ended: %s", self._label, self.job_id, self.slurm_reason)
            if state in HOST_LOST_STATES:  # a text status: the session record says "host lost"
                return f"node {self.node or job.get('nodes') or '?'} lost: {self.slurm_reason}"
            return exit_status(job)
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        self._missing_checks += 1
        if self._missing_checks >= 2 and now - self._missing_since >= self.gone_grace:
            self.slurm_reason = "job no longer known to Slurm"
            self.log.warning(
                "%s: job %d missing from squeue for %.0f s", self._label, self.job_id, now - self._missing_since
            )
            return 1
        return None

    async def _cancel_quietly(self) -> None:
        if not self.job_id:
            return
        try:
            await self.commands.cancel(self.job_id)
        except SlurmCommandError as e:
            self.log.warning("%s: scancel %d failed: %s", self._label, self.job_id, e)

    async def stop(self, now=False):
        """Cancel the job and wait (briefly) until Slurm says it ended."""
        if not self.job_id:
            return
        SlurmBackend._starting.discard(self._job_key)
        await self._cancel_quietly()
        deadline = time.monotonic() + (0 if now else 15)
        while time.monotonic() < deadline:
            try:
                job = await self._job()
            except SlurmCommandError:
                job = {}
            if job is None or (job and job_state(job) not in LIVE_STATES | ENDING_STATES):
                break
            await asyncio.sleep(0.2)
        self.log.info("%s: cancelled Slurm job %d", self._label, self.job_id)

    # --- reconciliation (one loop per hub process) ----------------------------------------

    def _ensure_reconciler(self) -> None:
        if self.reconcile_interval <= 0 or SlurmBackend._reconciler_task is not None:
            return
        SlurmBackend._reconciler_task = asyncio.ensure_future(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        delay = min(60.0, self.reconcile_interval)
        while True:
            await asyncio.sleep(delay)
            delay = self.reconcile_interval
            try:
                await self.reconcile()
            except Exception:
                self.log.exception("Reconciliation of Slurm jobs failed")

    async def reconcile(self) -> list[int]:
        """Cancel this hub's orphaned jobs (see :func:`orphan_jobs`); their ids.

        Without the hub's database, or when squeue fails, nothing is cancelled.
        """
        hub_db = self.db if self.db is not None else getattr(self.context, "hub_db", None)
        if hub_db is None:
            return []
        try:
            jobs = await self.commands.jobs()
        except SlurmCommandError as e:
            self.log.warning("Slurm reconciliation skipped: %s", e)
            return []
        known = known_jobs_from_hub_db(hub_db)
        SlurmBackend._starting -= known  # the hub has saved these: its database speaks for them now
        known |= SlurmBackend._starting
        orphans = orphan_jobs(jobs, self.hub_id, known, time.time(), self.reconcile_grace)
        for job_id in orphans:
            try:
                await self.commands.cancel(job_id)
                self.log.warning("Cancelled orphaned Slurm job %d (%s): no such server in the hub",
                                 job_id, jobs[job_id].get("comment"))
            except SlurmCommandError as e:
                self.log.warning("scancel of orphaned Slurm job %d failed: %s", job_id, e)
        return orphans

    # --- state ----------------------------------------------------------------------------

    def get_state(self):
        """Job id, node, address and port: enough for a restarted hub to re-adopt the server."""
        state = super().get_state()
        if self.job_id:
            state.update(job_id=self.job_id, node=self.node, node_ip=self.node_ip, port=self.port)
        return state

    def load_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().load_state(state)
        self.job_id = int(state.get("job_id") or 0)
        self.node = state.get("node") or ""
        self.node_ip = state.get("node_ip") or ""
        if state.get("port"):
            self.port = int(state["port"])

    def clear_state(self):
        """Forget the job once the server is gone."""
        super().clear_state()
        SlurmBackend._starting.discard(self._job_key)
        self.job_id = 0
        self.node = self.node_ip = ""
        self._missing_since, self._missing_checks = None, 0

    def provenance(self) -> dict[str, object]:
        """Node, job id, allocated GRES (with GPU indices) and partition."""
        return {
            "host": self.node,
            "job_id": self.job_id,
            "gres": list(self._gres_detail),
            "partition": self._partition or (self.offering.partition if self.offering else None),
            "image": self.singleuser_command[0] if self.singleuser_command else "",
        }
