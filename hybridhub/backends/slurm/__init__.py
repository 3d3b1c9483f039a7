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

Its reconciliation hook (``SlurmBackend.reconcile``, run by :mod:`hybridhub.spawner.reconcile`)
cancels live jobs carrying this hub's tag that no server the hub knows holds (:func:`orphan_jobs`);
other hubs' jobs and untagged jobs are never touched.

Modules: ``script`` (the pure job script), ``jobs`` (reading Slurm's JSON), ``commands`` (running
Slurm's commands), ``reconcile`` (which jobs are orphans) and ``backend`` (the spawner); every name
is importable from here.
"""

from hybridhub.backends.slurm.backend import GRES_PATTERN, SlurmBackend, SlurmFields
from hybridhub.backends.slurm.commands import SlurmCommandError, SlurmCommands
from hybridhub.backends.slurm.jobs import (
    ENDING_STATES,
    HOST_LOST_STATES,
    LIVE_STATES,
    UNAVAILABLE_NODE,
    exit_status,
    free_gres,
    job_reason,
    job_state,
    job_tag,
    node_available,
    parse_gres,
    queue_message,
    queue_position,
    submit_time,
)
from hybridhub.backends.slurm.reconcile import known_jobs, orphan_jobs
from hybridhub.backends.slurm.script import SLURM_NAME, JobSpec, check_slurm_name, safe_tag, sbatch_script, slurm_time

__all__ = [
    "ENDING_STATES", "GRES_PATTERN", "HOST_LOST_STATES", "LIVE_STATES", "SLURM_NAME", "UNAVAILABLE_NODE",
    "JobSpec", "SlurmBackend", "SlurmCommandError", "SlurmFields", "SlurmCommands", "check_slurm_name", "exit_status",
    "free_gres", "job_reason", "job_state", "job_tag", "known_jobs", "node_available",
    "orphan_jobs", "parse_gres", "queue_message", "queue_position", "safe_tag", "sbatch_script",
    "slurm_time", "submit_time",
]
