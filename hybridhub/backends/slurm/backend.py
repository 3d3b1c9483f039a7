"""The ``slurm`` spawner: :class:`SlurmBackend`, the server as a batch job on one node."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from traitlets import Bool, Float, Int, List, Unicode, default
from traitlets.config import Config

from hybridhub.backends.base import BackendMixin, KnownServer, Reconciled, poll_until
from hybridhub.backends.slurm.commands import SlurmCommandError, SlurmCommands, _commands
from hybridhub.backends.slurm.jobs import (
    ENDING_STATES,
    HOST_LOST_STATES,
    LIVE_STATES,
    exit_status,
    free_gres,
    job_reason,
    job_state,
    queue_message,
)
from hybridhub.backends.slurm.reconcile import known_jobs, orphan_jobs
from hybridhub.backends.slurm.script import JobSpec, safe_tag, sbatch_script
from hybridhub.errors import no_capacity_error, user_error

#: A Slurm GRES name and type, e.g. ``gpu:h100`` (the count comes from the launch).
GRES_PATTERN = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SlurmFields:
    """A Slurm offering's own catalog keys (:attr:`SlurmBackend.offering_fields`)."""

    gres: str = field(metadata={"help": "Slurm GRES name:type like gpu:h100; the launch adds the count",
                                "pattern": GRES_PATTERN.pattern})
    partition: str | None = field(default=None, metadata={"help": "Slurm partition (None: the default one)"})


class SlurmBackend(BackendMixin, Spawner):
    """Run the server as a Slurm batch job holding the offering's GRES on one node."""

    offering_fields = SlurmFields

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

    reconcile_grace = Float(
        120.0,
        help="Seconds after its submission a job is left alone by the reconciler (sbatch may have "
        "queued it before the start that submitted it holds its id).",
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


    @default("singleuser_command")
    def _default_singleuser_command(self):
        return [str(Path(sys.executable).parent / "jupyterhub-singleuser")]

    @property
    def commands(self) -> SlurmCommands:
        """How Slurm commands are run (``c.SlurmCommands``)."""
        return _commands(self.config)

    @property
    def _label(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    # --- capacity -------------------------------------------------------------------------

    @classmethod
    async def free_now(cls, offering, config: Config) -> int | None:
        """Free GRES of ``offering`` in its partition, from ``sinfo --json`` (None: unknown)."""
        fields = cls.fields_of(offering)
        try:
            nodes = await _commands(config).nodes()
        except SlurmCommandError:
            return None
        return free_gres(nodes, fields.gres, fields.partition)

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
            gres=self.fields.gres,
            count=req.count if req is not None else 1,
            hours=req.hours if req is not None else off.max_hours,
            command=[*self.singleuser_command, *self.get_args()],
            env_names=tuple(sorted(env)),
            workdir=self.home,
            output=self.output_template.format(home=self.home),
            partition=self.fields.partition,
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
        off, req = self.offering, self.request
        if off is None:
            raise user_error(500, "This server has no Slurm offering configured.")
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
        env = self.job_env()
        script = sbatch_script(self.job_spec(env))  # refuses a name it cannot express, before any folder is made
        if self.create_home:
            Path(self.output_template.format(home=self.home)).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.job_id = await self.commands.submit(script, env)
        except SlurmCommandError as e:
            self.log.error("%s: sbatch failed: %s", self._label, e)
            raise user_error(503, "The Slurm cluster did not accept the job; please try again later.") from None
        fields = self.fields
        self._emit(10, f"Submitted Slurm job {self.job_id} ({fields.gres} x{count}, "
                       f"partition {fields.partition or 'default'})")
        try:
            return await self._wait_until_ready()
        except BaseException:
            await asyncio.shield(self._cancel_quietly())
            raise

    async def _wait_until_ready(self) -> tuple[str, int]:
        """Wait for the job to run on a node, then for its server to answer; the server's address."""
        job = await self._wait_for_node()
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

    async def _wait_for_node(self) -> dict:
        """The job's squeue record once it runs on a node; a 503 once it ended, or when it is still not
        running after ``pending_timeout`` (the spawn page shows its place in the queue meanwhile)."""
        last_job: dict | None = None
        queued = ""

        async def on_node() -> dict | None:
            nonlocal last_job, queued
            try:
                jobs = await self.commands.jobs()
                job = jobs.get(self.job_id)
            except SlurmCommandError as e:
                self.log.warning("%s: squeue failed while starting (%s); retrying", self._label, e)
                job = None
            last_job = job
            state = job_state(job) if job else ""
            if state == "PENDING":
                message = queue_message(jobs.values(), job)
                if message != queued:
                    queued = message
                    self._emit(20, queued)
            if state == "RUNNING" and (job.get("batch_host") or job.get("nodes")):
                return job
            if job and state not in LIVE_STATES | ENDING_STATES:
                self.slurm_reason = job_reason(job)
                raise self._ended_error(before="before it started")
            return None

        job = await poll_until(on_node, interval=self.check_interval, timeout=self.pending_timeout)
        if job is None:
            why = job_reason(last_job) if last_job else "not listed by squeue"
            raise user_error(
                503,
                f"Your Slurm job {self.job_id} could not start within "
                f"{int(self.pending_timeout)} s: {why}. It has been cancelled.",
            )
        return job

    def _ended_error(self, before: str):

        self.log.warning("%s: job %d ended %s: %s", self._label, self.job_id, before, self.slurm_reason)
        return user_error(
            503, f"Your Slurm job {self.job_id} ended {before}: {self.slurm_reason}."
        )

    async def poll(self):
        """None while the job lives (or its state is unknown); a status once Slurm says it ended."""
        if not self.job_id:
            return 0
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

    # --- reconciliation (hybridhub.spawner.reconcile runs it) ----------------------------

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config: Config) -> Reconciled:
        """Cancel this hub's live jobs that are none of ``known`` (:func:`orphan_jobs`); nothing when
        squeue fails."""
        backend = cls(config=config)
        try:
            jobs = await backend.commands.jobs()
        except SlurmCommandError as e:
            backend.log.warning("Slurm reconciliation skipped: %s", e)
            return Reconciled()
        orphans = orphan_jobs(jobs, backend.hub_id, known_jobs(known), time.time(), backend.reconcile_grace)
        done = Reconciled()
        for job_id in orphans:
            try:
                await backend.commands.cancel(job_id)
            except SlurmCommandError as e:
                backend.log.warning("scancel of orphaned Slurm job %d failed: %s", job_id, e)
                continue
            backend.log.warning("Cancelled orphaned Slurm job %d (%s): no such server in the hub",
                                job_id, jobs[job_id].get("comment"))
            done.removed.append(str(job_id))
        return done

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
        self.job_id = 0
        self.node = self.node_ip = ""
        self._missing_since, self._missing_checks = None, 0

    def provenance(self) -> dict[str, object]:
        """Node, job id, allocated GRES (with GPU indices) and partition."""
        return {
            "host": self.node,
            "job_id": self.job_id,
            "gres": list(self._gres_detail),
            "partition": self._partition or (self.fields.partition if self.offering else None),
            "image": self.singleuser_command[0] if self.singleuser_command else "",
        }
