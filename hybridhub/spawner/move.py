"""Move a running server to other hardware: the new launch admitted first, then the old stopped.

``GET /hub/hybridhub/move/<user>/<server>`` shows the picker preselected with the server's
current choice (the spawner's own :meth:`~HybridSpawner.render_picker`, in the spawn page);
its form ``POST``s back, and ``POST /hub/api/hybridhub/move/<user>/<server>`` takes the same
``user_options`` as JSON.  Both need the ``servers`` scope on that server, exactly as starting
or stopping it through the hub does: the endpoint lives in the hub, so no service gains a scope
over other people's servers, and the admission it holds is handed to the spawner in memory.

Invariants, in order:

1. **Admitted first.**  A probe of the server's spawner class validates the options and runs the
   spawner's own admission (group kind, trust confinement, the budget's one conditional
   ``UPDATE``).  A refusal (the picker's status and message) leaves everything as it was.  A
   running course session refuses any move (403, as its lock refuses other hardware).
2. **Then the old server stops**, its record saying ``moved to other hardware``; its spawner
   releases its reservation (charging only the time it served).
3. **The new server starts** under the same name (same home, same image) and takes the held
   reservation (:meth:`CarriedAdmissionMixin.take_carried`) instead of admitting again.  A
   reservation nobody took is released whatever went wrong, and one taken by a start that then
   failed is released by the spawner; neither was ever marked running, so neither is charged.
4. The new session record's ``moved_from_id`` names the old one.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from jupyterhub.utils import url_escape_path, url_path_join
from tornado import web
from tornado.httputil import url_concat

from hybridhub.accounting import courses
from hybridhub.accounting.sessions import END_MOVED, SessionLog
from hybridhub.spawner.display import hardware_label
from hybridhub.spawner.options import LaunchRequest

#: Longest JSON body of a REST move, in bytes (the spawner's own options limit applies after).
MAX_BODY_BYTES = 64 * 1024
#: Seconds to wait for the old server to stop before the move gives up (its reservation released).
STOP_TIMEOUT = 120.0


@dataclass(frozen=True)
class CarriedAdmission:
    """A move's admitted reservation on its way from the move to the new server's start."""

    reservation_id: int
    request: LaunchRequest
    offering_key: str
    moved_from: int | None  #: the old server's session record
    hardware: str = ""  #: ``H100 80GB × 1``, for the old record's end detail


#: (user, server) -> the admission a move holds for that server's next start (this hub process only).
_carried: dict[tuple[str, str], CarriedAdmission] = {}
#: Servers being moved now (a second move of the same server is refused with 409).
_moving: set[tuple[str, str]] = set()
#: Guards ``_carried``: a start takes from it in a worker thread, a move's clean-up on the hub's loop.
_carried_lock = threading.Lock()


def _pop_carried(key: tuple[str, str], wanted: Callable[[CarriedAdmission], bool]) -> CarriedAdmission | None:
    """Remove and return the admission held for ``key`` if ``wanted(it)``; else None (it stays)."""
    with _carried_lock:
        carried = _carried.get(key)
        if carried is None or not wanted(carried):
            return None
        del _carried[key]
        return carried


class CarriedAdmissionMixin:
    """HybridSpawner's side of a move: take the held reservation, link the session records."""

    moved_from: int | None = None

    def take_carried(self) -> int | None:
        """The reservation a move admitted for exactly this launch, once; None otherwise."""
        carried = _pop_carried((self.user.name, self.name),
                               lambda c: c.request == self.launch and c.offering_key == self.offering.key)
        if carried is None:
            return None  # none, or not this launch's: the move releases it
        self.moved_from = carried.moved_from
        return carried.reservation_id

    async def record_start(self, backend) -> None:
        """Write the record (the parent's), then link it to the record of the server it replaced."""
        await super().record_start(backend)
        moved_from, self.moved_from = self.moved_from, None
        if moved_from is not None and self.session_id is not None:
            try:
                await asyncio.to_thread(self.session_log.link_move, moved_from, self.session_id)
            except Exception:
                self.log.exception("Could not link the record of %s to the one it replaced", self._log_name)


@dataclass
class _ProbeServer:
    """What a probe spawner reads of its ORM server: the name (the real one is left untouched)."""

    name: str
    display_name: str | None = None
    user_options: dict | None = None
    server: Any = None
    state: dict | None = None


async def admit_move(spawner: Any, options: dict[str, Any]) -> CarriedAdmission:
    """Validate and admit ``options`` for ``spawner``'s server without touching it, or raise the refusal."""
    probe = type(spawner)(
        user=spawner.user, orm_spawner=_ProbeServer(spawner.name, spawner.orm_spawner.display_name),
        hub=spawner.hub, authenticator=spawner.authenticator, config=spawner.config, log=spawner.log,
    )
    session = await asyncio.to_thread(courses.in_session, probe.accounting.db, spawner.user.name, spawner.name)
    if session is not None:  # the course's lock: nothing moves while its session runs
        message = f"your server belongs to {session.label} until it ends: it cannot move to other hardware"
        await asyncio.to_thread(probe.note_refusal, "course_lock", message, options)
        raise probe.refused(403, message, "course")
    await probe._apply_options(options)
    probe._price = await probe.backend_class(probe.offering).admission_price(probe.offering, probe.config)
    await asyncio.to_thread(probe._prepare_launch, probe.hub_groups())
    moved_from = spawner.session_id
    if moved_from is None:
        moved_from = await asyncio.to_thread(probe.session_log.open_session_id, spawner.user.name, spawner.name)
    return CarriedAdmission(probe.reservation_id, probe.launch, probe.offering.key, moved_from,
                            hardware_label(probe.offering, probe.launch.count))


async def move_server(handler: BaseHandler, user: Any, server_name: str, options: dict[str, Any]) -> str:
    """Move ``user``'s running server to ``options``; return the URL to follow its start.

    Raises the admission's refusal (nothing changed) or a 409 when the server is not running.
    """
    key = (user.name, server_name)
    spawner = _spawner(user, server_name)
    if spawner is None or not spawner.ready or spawner.pending:
        raise web.HTTPError(409, f"server {server_name or 'default'!r} is not running: only a running "
                                 "server can move (start one from the home page)")
    if key in _moving:
        raise web.HTTPError(409, f"server {server_name or 'default'!r} is already moving")
    _refuse_at_spawn_limit(handler)
    _moving.add(key)
    try:
        carried = await admit_move(spawner, options)  # a refusal: nothing changed
    except BaseException:
        _moving.discard(key)
        raise
    task = asyncio.ensure_future(_replace(handler, user, spawner, options, carried))
    task.add_done_callback(lambda t: _moved(t, key, handler))
    await asyncio.wait([task], timeout=1)  # the browser follows the rest on the hub's pending pages
    if task.done() and task.exception() is not None:
        raise task.exception()  # e.g. the hub's 429 at its concurrent-spawn limit: nothing holds
    return url_path_join(handler.hub.base_url, "spawn-pending", user.escaped_name, url_escape_path(server_name))


def _refuse_at_spawn_limit(handler: BaseHandler) -> None:
    """429 while the hub is at its ``concurrent_spawn_limit``, with a Retry-After drawn from the hub's
    ``spawn_throttle_retry_range`` as its own throttle does: that check would refuse the new start only
    after the old server stopped.  Checked before anything changes; a start elsewhere in the moment
    between can still take the last place (the move then ends with no server)."""
    limit = handler.concurrent_spawn_limit
    if not limit:
        return
    counts = handler.users.count_active_users()
    if counts["spawn_pending"] + counts["proxy_pending"] >= limit:
        retry = int(random.uniform(*handler.settings["spawn_throttle_retry_range"]))
        err = web.HTTPError(429, f"the hub is starting {limit} servers already (its concurrent-spawn limit): "
                                 f"nothing was moved; try again in {10 * math.ceil(retry / 10)} seconds")
        err.headers = {"Retry-After": str(retry)}
        raise err


def _moved(task: asyncio.Task, key: tuple[str, str], handler: BaseHandler) -> None:
    """A move ended: the server may move again; a failure after the answer went out is logged."""
    _moving.discard(key)
    if not task.cancelled() and task.exception() is not None:
        handler.log.warning("move of %s/%s did not complete: %s", *key, task.exception())


async def _replace(handler: BaseHandler, user: Any, spawner: Any, options: dict, carried: CarriedAdmission) -> None:
    """Stop the old server, then start the new one with the held reservation (released if the stop fails)."""
    try:
        await _stop_old(handler, user, spawner, carried)
    except BaseException:
        await asyncio.to_thread(spawner.accounting.release, carried.reservation_id, "move: the old server did not stop")
        raise
    with _carried_lock:
        _carried[(user.name, spawner.name)] = carried
    await _start_new(handler, user, spawner.name, options, carried, spawner.accounting)


async def _stop_old(handler: BaseHandler, user: Any, spawner: Any, carried: CarriedAdmission) -> None:
    """Record why, then stop the old server and wait until it is gone (its spawner releases it)."""
    await asyncio.to_thread(SessionLog(spawner.accounting.db).request_end, END_MOVED,
                            username=user.name, server_name=spawner.name, detail=f"to {carried.hardware}")
    future = await handler.stop_single_user(user, spawner.name)
    await asyncio.wait_for(asyncio.shield(future), STOP_TIMEOUT)
    if spawner.active:
        raise web.HTTPError(500, f"server {spawner.name or 'default'!r} did not stop; nothing was moved")


async def _start_new(handler: BaseHandler, user: Any, server_name: str, options: dict, carried: CarriedAdmission,
                     accounting: Any) -> None:
    """Start the new server; release the held reservation if its start never took it."""
    key = (user.name, server_name)
    spawner = user.spawners[server_name]
    if spawner._spawn_future is not None and spawner._spawn_future.done():
        spawner._spawn_future = None  # the old start's, done: as the hub's own spawn page clears it
    try:
        await handler.spawn_single_user(user, server_name, options=options)
    finally:
        if _pop_carried(key, lambda c: c is carried) is not None:
            await asyncio.to_thread(accounting.release, carried.reservation_id, "move: the new server did not start")


def _spawner(user: Any, server_name: str) -> Any:
    """The spawner of ``user``'s server ``server_name`` if the hub knows that server, else None."""
    return user.spawners[server_name] if server_name in user.orm_spawners else None


def _find_user(handler: BaseHandler, user_name: str) -> Any:
    user = handler.find_user(user_name)
    if user is None:
        raise web.HTTPError(404, f"no such user: {user_name!r}")
    return user


class MovePageHandler(BaseHandler):
    """``/hub/hybridhub/move/<user>/<server>``: the picker preselected; its form moves the server."""

    @web.authenticated
    async def get(self, user_name: str, server_name: str = "") -> None:
        await self._page(user_name, server_name)

    @web.authenticated
    async def post(self, user_name: str, server_name: str = "") -> None:
        await self._move(user_name, server_name)

    @needs_scope("servers")
    async def _page(self, user_name: str, server_name: str, error: Exception | None = None) -> None:
        user = _find_user(self, user_name)
        spawner = _spawner(user, server_name)
        running = spawner is not None and spawner.ready
        form = await spawner.get_options_form() if running else ""
        if error is None and not running:
            error = web.HTTPError(409, "this server is not running: only a running server can move")
        elif error is None and not form:  # a course session holds the server: as a refused move says
            error = web.HTTPError(403, "your server belongs to a course session until it ends: it cannot "
                                       "move to other hardware")
        if error is not None:
            self.set_status(getattr(error, "status_code", 500))
            for name, value in (getattr(error, "headers", None) or {}).items():
                self.set_header(name, value)
        hardware = ""
        if spawner is not None and spawner.offering is not None and spawner.launch is not None:
            hardware = hardware_label(spawner.offering, spawner.launch.count)
        message = (getattr(error, "jupyterhub_message", None) or getattr(error, "log_message", None)
                   or str(error)) if error is not None else ""
        self.finish(await self.render_template(
            "spawn.html", for_user=user, spawner=spawner, spawner_options_form=form or "",
            error_message=message, url=url_concat(self.request.uri, {"_xsrf": self.xsrf_token.decode("ascii")}),
            hybridhub_move={"server": server_name or "default", "hardware": hardware},
        ))

    @needs_scope("servers")
    async def _move(self, user_name: str, server_name: str) -> None:
        user = _find_user(self, user_name)
        spawner = _spawner(user, server_name)
        form = {key: [v.decode("utf8", "replace") for v in values]
                for key, values in self.request.body_arguments.items()}
        try:
            if spawner is None:
                raise web.HTTPError(409, "this server is not running: only a running server can move")
            url = await move_server(self, user, server_name, spawner.options_from_form(form))
        except web.HTTPError as e:
            self.log.info("move of %s/%r refused: %s", user.name, server_name, e)
            await self._page(user_name, server_name, error=e)
            return
        self.redirect(url)


class MoveAPIHandler(APIHandler):
    """``POST /hub/api/hybridhub/move/<user>/<server>`` with the new ``user_options`` as JSON: 202."""

    @needs_scope("servers")
    async def post(self, user_name: str, server_name: str = "") -> None:
        body = self.request.body or b"{}"
        if len(body) > MAX_BODY_BYTES:
            raise web.HTTPError(413, f"Invalid option user_options: {len(body)} bytes is over the limit of "
                                     f"{MAX_BODY_BYTES} bytes")
        try:
            options = json.loads(body)
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise web.HTTPError(400, "Invalid option user_options: the body must be a JSON object of launch options")
        user = _find_user(self, user_name)
        url = await move_server(self, user, server_name, options)
        self.set_status(202)
        self.write(json.dumps({"status": "moving", "server": server_name, "pending_url": url}))


#: What ``add_hybridhub`` adds to ``c.JupyterHub.extra_handlers`` (the hub prefixes ``/hub``).
HANDLERS = [
    (r"/hybridhub/move/([^/]+)/?([^/]*)", MovePageHandler),
    (r"/api/hybridhub/move/([^/]+)/?([^/]*)", MoveAPIHandler),
]
