"""Which live jobs of this hub are orphans: tagged with its id, with no server the hub knows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hybridhub.backends.base import KnownServer
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


def known_jobs(known: Iterable[KnownServer]) -> set[tuple[str, str, int]]:
    """``(user tag, server tag, job id)`` of each known server whose state holds a job id."""
    return {(safe_tag(s.user), safe_tag(s.server) if s.server else "", int(s.state["job_id"]))
            for s in known if s.state.get("job_id")}
