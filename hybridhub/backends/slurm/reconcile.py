"""Which live jobs of this hub are orphans: tagged with its id, with no server in the hub's database."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hybridhub.backends.base import saved_backend_states
from hybridhub.backends.slurm.jobs import LIVE_STATES, job_state, job_tag, submit_time
from hybridhub.backends.slurm.script import safe_tag


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
    known = set()
    for sp, inner in saved_backend_states(db):
        if inner.get("job_id"):
            server = safe_tag(sp.name) if sp.name else ""
            known.add((safe_tag(sp.user.name), server, int(inner["job_id"])))
    return known
