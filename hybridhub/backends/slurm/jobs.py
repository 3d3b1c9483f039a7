"""Reading Slurm's JSON (``squeue --json``, ``sinfo --json``): pure functions and the states they use."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

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
