"""What the spawner writes to a session's provenance record, gathered from its backend.

:func:`describe` turns a started backend's :meth:`BackendMixin.provenance` into the
columns of :class:`hybridhub.accounting.sessions.SessionRecord`, adding the image's id and digest
where the engine gives them.  :func:`end_reason` says how a server that ``poll`` found
gone ended.
"""

from __future__ import annotations

from typing import Any

from hybridhub.accounting.sessions import END_EXITED, END_HOST_LOST, END_STOPPED_BY_USER

#: Keys of ``provenance()`` that become their own columns (the rest stay in ``details``).
_COLUMNS = ("host", "instance_id", "instance_type", "image")


async def describe(backend: Any) -> dict[str, Any]:
    """Record columns for a started ``backend``: host or instance, GPUs, image, details."""
    raw = dict(backend.provenance() or {})
    raw.update(await backend.image_identity())
    out: dict[str, Any] = {k: raw.get(k) for k in _COLUMNS}
    gpus = raw.get("gpus") or raw.get("gpu_uuids") or []
    out["gpu_uuids"] = [str(g) for g in gpus]
    out["image_id"] = raw.get("image_digest") or raw.get("image_id")
    out["details"] = {k: v for k, v in raw.items() if k not in (*_COLUMNS, "gpus")}
    if out["host"] is None and raw.get("instance_id"):
        out["host"] = raw.get("private_ip")
    return out


def end_reason(backend: Any, status: Any) -> tuple[str, str]:
    """``(reason, detail)`` for a server that ``poll`` found gone with ``status``.

    A backend may say itself (``end_reason(status)``); otherwise, on a backend that
    ``watches_machine`` (its ``poll`` reports the instance, not a process) any
    status means the machine is gone (``host lost``); elsewhere a text status means the
    host stopped answering (``host lost``), exit status 0 means the user shut the server
    down from inside it, and any other status that it exited by itself.
    """
    own = getattr(backend, "end_reason", None)
    if callable(own):
        reason = own(status)
        if reason:
            return reason, str(status)
    if getattr(backend, "watches_machine", False):
        return END_HOST_LOST, f"the instance is gone (status {status})"
    if isinstance(status, str):
        return END_HOST_LOST, status
    if status == 0:
        return END_STOPPED_BY_USER, "the server shut itself down (exit status 0)"
    return END_EXITED, f"exit status {status}"
