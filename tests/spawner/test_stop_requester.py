"""Who asked for a stop: the wrapper of JupyterHub's stop_single_user and what it relies on.

The first test fails when JupyterHub changes the code :mod:`hybridhub.spawner.stop_requester`
depends on: the REST handlers stop through ``stop_single_user(user, server_name)``, which
runs the stop in a task it creates (so the task inherits the requester's context).
"""

from __future__ import annotations

import asyncio
import inspect
import types

from jupyterhub.apihandlers.users import UserAPIHandler, UserServerAPIHandler
from jupyterhub.handlers.base import BaseHandler

from hybridhub.accounting.sessions import END_BY_ADMIN, END_BY_SERVICE, END_STOPPED_BY_USER
from hybridhub.spawner import stop_requester
from hybridhub.spawner.stop_requester import StopRequester, end_of, requester_of


def test_jupyterhub_still_stops_servers_the_way_the_wrapper_expects():
    stop_requester.install()
    wrapped = BaseHandler.stop_single_user
    assert getattr(wrapped, "_hybridhub_requester", False)
    original = inspect.unwrap(wrapped)
    assert list(inspect.signature(original).parameters) == ["self", "user", "server_name"]
    assert "asyncio.ensure_future(stop())" in inspect.getsource(original)
    for handler in (UserServerAPIHandler.delete, UserAPIHandler.delete):
        assert "self.stop_single_user(" in inspect.getsource(handler)
    stop_requester.install()  # idempotent
    assert BaseHandler.stop_single_user is wrapped


async def test_the_stop_task_sees_who_asked_and_nothing_leaks():
    seen = []

    async def original(self, user, server_name=""):
        async def stop():
            await asyncio.sleep(0)
            seen.append(stop_requester.current())
        return asyncio.ensure_future(stop())

    class Handler:
        current_user = types.SimpleNamespace(kind="service", name="idle-culler")
        stop_single_user = original

    stop_requester.install(Handler)
    future = await Handler().stop_single_user("alice", "")
    await future
    assert seen == [StopRequester("service", "idle-culler")]
    assert stop_requester.current() is None


def test_end_reason_and_who():
    user = types.SimpleNamespace(kind="user", name="alice", admin=False)
    admin = types.SimpleNamespace(kind="user", name="root", admin=True)
    culler = types.SimpleNamespace(kind="service", name="idle-culler")
    assert end_of(None, "alice") == (END_STOPPED_BY_USER, None)
    assert end_of(requester_of(user), "alice") == (END_STOPPED_BY_USER, None)
    assert end_of(requester_of(admin), "alice") == (END_BY_ADMIN, "stopped by admin root")
    assert end_of(requester_of(culler), "alice") == (END_BY_SERVICE, "stopped by service idle-culler")
    assert end_of(requester_of(types.SimpleNamespace(kind="user", name="bob", admin=False)), "alice") == (
        END_STOPPED_BY_USER, "stopped by user bob")
