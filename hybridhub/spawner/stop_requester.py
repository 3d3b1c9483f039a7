"""Who asked the hub to stop a server: the account behind a REST ``DELETE``, for the session record.

JupyterHub 6 has no hook that tells a spawner who asked for its stop, so this module wraps
one method, :meth:`jupyterhub.handlers.base.BaseHandler.stop_single_user`, through which
every stop a request asks for passes (``DELETE /hub/api/users/:u/server[s/:s]``, deleting a
user, the logout stop).  The wrapper sets a context variable to the requesting account for
the duration of the call; the stop runs in a task that ``stop_single_user`` creates, which
copies the context, so the spawner's ``stop`` reads it with :func:`current` (and nothing
leaks to other requests).  ``tests/spawner/test_stop_requester.py`` fails when JupyterHub
changes what this relies on.

:func:`end_of` turns the requester into the end reason and the "by whom" detail: the
owner (or nobody: the hub's own shutdown) ``stopped by user``; an admin ``stopped by admin``
with ``stopped by admin <name>``; a service ``stopped by service`` with ``stopped by service
<name>``; another user holding the scope ``stopped by user`` with ``stopped by user <name>``.
A reason recorded beforehand (quota, end of course, idle accelerators) still wins; the
"by whom" is appended to its detail (:meth:`hybridhub.accounting.sessions.SessionLog.close`).
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from hybridhub.accounting.sessions import END_BY_ADMIN, END_BY_SERVICE, END_STOPPED_BY_USER


@dataclass(frozen=True)
class StopRequester:
    """The account whose request is stopping a server."""

    kind: str  # user | admin | service
    name: str

    def describe(self) -> str:
        """``stopped by service idle-culler``, ``stopped by admin alice``."""
        return f"stopped by {self.kind} {self.name}"


_REQUESTER: ContextVar[StopRequester | None] = ContextVar("hybridhub_stop_requester", default=None)


def requester_of(account: Any) -> StopRequester | None:
    """The requester for a handler's ``current_user`` (a hub User or Service; None: nobody)."""
    if account is None:
        return None
    kind = getattr(account, "kind", "user")
    if kind == "service":
        return StopRequester("service", account.name)
    return StopRequester("admin" if getattr(account, "admin", False) else "user", account.name)


def current() -> StopRequester | None:
    """Who asked for the stop now running (None: not a request, e.g. the hub shutting down)."""
    return _REQUESTER.get()


def end_of(requester: StopRequester | None, owner: str) -> tuple[str, str | None]:
    """``(default end reason, by whom)`` of a stop asked for by ``requester`` of ``owner``'s server."""
    if requester is None or (requester.name == owner and requester.kind != "service"):
        return END_STOPPED_BY_USER, None
    reason = {"admin": END_BY_ADMIN, "service": END_BY_SERVICE}.get(requester.kind, END_STOPPED_BY_USER)
    return reason, requester.describe()


def install(handler_class: Any = None) -> None:
    """Wrap ``stop_single_user`` of ``handler_class`` (default: JupyterHub's ``BaseHandler``)
    once (idempotent), in the hub process."""
    if handler_class is None:
        from jupyterhub.handlers.base import BaseHandler as handler_class

    original = handler_class.stop_single_user
    if getattr(original, "_hybridhub_requester", False):
        return

    @functools.wraps(original)
    async def stop_single_user(self, user, server_name=""):
        token = _REQUESTER.set(requester_of(self.current_user))
        try:
            return await original(self, user, server_name)
        finally:
            _REQUESTER.reset(token)

    stop_single_user._hybridhub_requester = True  # type: ignore[attr-defined]
    handler_class.stop_single_user = stop_single_user
