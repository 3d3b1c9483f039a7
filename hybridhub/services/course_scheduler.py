"""The course scheduler: starts, warns and ends course sessions through the hub's REST API.

Runs as a JupyterHub managed service (``python -m hybridhub.services.course_scheduler``), built
by :func:`course_service` with the smallest scopes it needs (:data:`SERVICE_SCOPES`:
start, stop and read servers, read groups).  Every ``interval`` seconds a tick:

1. begins the sessions that are due (start time reached, or "start now" asked):
   the roster is the hub group's members less its ``instructors`` property, and the
   whole class is admitted at once (:meth:`CourseSchedule.begin`), or refused with
   the numbers;
2. starts a server for every pending seat, at most ``concurrency`` in flight, each
   ``POST /users/{name}/server`` with the session's options and then followed on the
   hub's progress stream until ready or failed; late joiners of the group get seats;
3. logs and records the 10- and 2-minute warnings;
4. ends the sessions whose time is up: reservations released ("end of course"),
   servers stopped.

All state is in the database, so a scheduler (or hub) restarted mid-session carries
on: seats caught ``starting`` are looked up on the hub and re-adopted.  The clock is
the schedule's (injectable), so tests do not sleep through real minutes.

Environment: ``HYBRIDHUB_DB_URL``, ``HYBRIDHUB_CATALOG`` (catalog file; default the
shipped catalog), ``HYBRIDHUB_BACKEND_OVERRIDE``, ``HYBRIDHUB_COURSE_CONCURRENCY``,
``HYBRIDHUB_COURSE_INTERVAL``, and the hub's ``JUPYTERHUB_API_URL``/``JUPYTERHUB_API_TOKEN``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from traitlets import Float, Integer, List
from traitlets.config import LoggingConfigurable

from hybridhub import loghygiene
from hybridhub.accounting.courses import (
    LOCKED_FIELDS,
    SESSION_SERVER,
    WARN_MINUTES,
    ClassDoesNotFit,
    CourseError,
    CourseSchedule,
    CourseSessionInfo,
    SeatInfo,
)
from hybridhub.accounting.db import DEFAULT_URL, Database
from hybridhub.accounting.sessions import END_COURSE, SessionLog
from hybridhub.accounting.settings import MeterSettings
from hybridhub.hubapi import HubApi, HubApiError
from hybridhub.services.meter import tick_every

log = logging.getLogger("hybridhub.courses")

#: What the scheduler's token may do: start/stop/read servers, read group members.
SERVICE_SCOPES = ("servers", "read:groups")
SERVICE_NAME = "hybridhub-courses"


def same_hardware(options: Mapping[str, Any] | None, session: Mapping[str, Any]) -> bool:
    """Whether a running server's options are the session's (class, model, count, group)."""
    options = options or {}
    return all(str(options.get(k)) == str(session[k]) for k in LOCKED_FIELDS)


class CourseScheduler(LoggingConfigurable):
    """Runs course sessions: begins them, fills their seats, warns, ends them."""

    concurrency = Integer(
        5, help="Session servers being started at once (across all sessions). A start is "
        "CPU- and I/O-heavy on the backend; more in flight rarely finishes a class sooner.",
    ).tag(config=True)
    interval = Float(
        1.0, help="Seconds between scheduler ticks: how soon a due session or a 'start "
        "now' is picked up, and the resolution of warnings and ends.",
    ).tag(config=True)
    roster_interval = Float(
        15.0, help="Seconds between checks of a running session's group for late joiners.",
    ).tag(config=True)
    start_timeout = Float(
        300.0, help="Seconds one session server may take to become ready before its seat "
        "is marked failed (the hub's own Spawner.start_timeout applies too).",
    ).tag(config=True)
    warn_minutes = List(
        Integer(), default_value=list(WARN_MINUTES),
        help="Minutes before a session's end at which students are warned (banner and log).",
    ).tag(config=True)

    def __init__(self, schedule: CourseSchedule, hub: HubApi, **kwargs: Any):
        super().__init__(**kwargs)
        self.schedule = schedule
        self.hub = hub
        if isinstance(hub, HubApi):  # a start holds one connection, its stream another
            hub.max_clients = max(hub.max_clients or 0, 2 * self.concurrency + 4)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._tasks: dict[tuple[int, str], asyncio.Task] = {}
        self._roster_checked: dict[int, float] = {}
        self._stopping = asyncio.Event()

    async def _db(self, fn, *args, **kwargs):
        """Run a database call in a worker thread, never blocking the loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ------------------------------------------------------------ the tick

    async def tick(self) -> None:
        """Begin due sessions, fill seats, warn, end sessions whose time is up."""
        for info in await self._db(self.schedule.due):
            await self._begin(info)
        now = self.schedule.now()
        for info in await self._db(self.schedule.running):
            if info.state == "ending" or info.ends_at <= now:
                await self._end(info)
                continue
            await self._late_joiners(info)
            await self._fill(info)
        await self._db(self.schedule.warnings, tuple(self.warn_minutes))

    async def _begin(self, info: CourseSessionInfo) -> None:
        try:
            group = await self.hub.group(info.group)
            await self._db(self.schedule.begin, info.id, group.get("users") or [],
                           group.get("properties") or {})
        except ClassDoesNotFit:
            pass  # recorded on the session (message and numbers) and logged
        except (HubApiError, CourseError) as exc:
            log.error("course session %s could not begin: %s", info.label, exc)
        self._roster_checked[info.id] = self.schedule.clock()

    async def _late_joiners(self, info: CourseSessionInfo) -> None:
        last = self._roster_checked.get(info.id)
        if last is not None and self.schedule.clock() - last < self.roster_interval:
            return
        self._roster_checked[info.id] = self.schedule.clock()
        try:
            group = await self.hub.group(info.group)
        except HubApiError as exc:
            log.error("course session %s: reading group %s failed: %s", info.label, info.group, exc)
            return
        await self._db(self.schedule.add_students, info.id, group.get("users") or [],
                       group.get("properties") or {})

    async def _fill(self, info: CourseSessionInfo) -> None:
        seats = await self._db(self.schedule.seats, info.id, ("pending", "starting"))
        for seat in seats:
            key = (info.id, seat.username)
            if key not in self._tasks:
                task = asyncio.create_task(self._seat(info, seat))
                self._tasks[key] = task
                task.add_done_callback(lambda _t, key=key: self._tasks.pop(key, None))

    # ------------------------------------------------------------ one seat

    async def _seat(self, info: CourseSessionInfo, seat: SeatInfo) -> None:
        """Get one student's session server ready (or say why not)."""
        async with self._slots:
            try:
                error = await self._start_seat(info, seat)
            except HubApiError as exc:
                error = exc.message
            except Exception as exc:  # a seat must never take the scheduler down
                log.exception("course session %s: seat of %s failed", info.label, seat.username)
                error = str(exc)
        state = "ready" if error is None else "failed"
        await self._db(self.schedule.mark_seat, info.id, seat.username, state, error or "")
        if error is not None:
            await self._db(self.schedule.release_unused, seat, "failed to start")
            log.warning("course session %s: %s's server failed: %s", info.label, seat.username,
                        error)

    async def _start_seat(self, info: CourseSessionInfo, seat: SeatInfo) -> str | None:
        user = seat.username
        options = info.user_options(self.schedule.now())
        if seat.state == "starting":  # a previous scheduler's start: look before starting again
            existing = await self.hub.server(user, SESSION_SERVER)
            if existing is not None:
                return await self._take_over(info, seat, existing, options)
        await self._db(self.schedule.mark_seat, info.id, user, "starting")
        try:
            code = await self.hub.start_server(user, SESSION_SERVER, options, timeout=self.start_timeout)
        except HubApiError as exc:  # a 400: the student has a server already
            existing = await self.hub.server(user, SESSION_SERVER) if exc.code == 400 else None
            if existing is None:
                raise
            return await self._take_over(info, seat, existing, options)
        if code == 201:  # ready at once
            return None
        return await self.hub.wait_ready(user, SESSION_SERVER, self.start_timeout)

    async def _take_over(self, info: CourseSessionInfo, seat: SeatInfo, existing: Mapping[str, Any],
                         options: Mapping[str, Any]) -> str | None:
        """A server is there already: keep it on the session's hardware, else replace it."""
        if self._adoptable(existing, options):
            return await self._adopt(info, seat)
        user = seat.username
        log.info("course session %s: stopping %s's other server first", info.label, user)
        if not await self._stop_and_wait(user):
            return "an earlier server of the student's could not be stopped"
        await self._db(self.schedule.mark_seat, info.id, user, "starting")
        if await self.hub.start_server(user, SESSION_SERVER, options, timeout=self.start_timeout) == 201:
            return None
        return await self.hub.wait_ready(user, SESSION_SERVER, self.start_timeout)

    @staticmethod
    def _adoptable(model: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
        starting_or_ready = model.get("pending") == "spawn" or model.get("ready")
        return bool(starting_or_ready) and same_hardware(model.get("user_options"), options)

    async def _adopt(self, info: CourseSessionInfo, seat: SeatInfo) -> str | None:
        """Keep a server already on the session's hardware; give back an unused seat hold."""
        await self._db(self.schedule.mark_seat, info.id, seat.username, "starting")
        error = await self.hub.wait_ready(seat.username, SESSION_SERVER, self.start_timeout)
        if error is None:
            await self._db(self.schedule.release_unused, seat, "server was already running")
        return error

    async def _stop_and_wait(self, user: str) -> bool:
        if not await self.hub.stop_server(user, SESSION_SERVER):
            return False
        deadline = self.schedule.clock() + self.start_timeout
        while await self.hub.server(user, SESSION_SERVER) is not None:
            if self.schedule.clock() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    # ------------------------------------------------------------ ending

    async def _end(self, info: CourseSessionInfo) -> None:
        for key, task in list(self._tasks.items()):
            if key[0] == info.id:
                task.cancel()
        users = await self._db(self.schedule.begin_end, info.id)

        async def stop(user: str) -> str | None:
            async with self._slots:
                # say why before the DELETE, so the provenance record ends in "end of course"
                await self._db(SessionLog(self.schedule.db).request_end, END_COURSE,
                               username=user, server_name=SESSION_SERVER)
                return user if await self.hub.stop_server(user, SESSION_SERVER) else None

        stopped = [u for u in await asyncio.gather(*(stop(u) for u in users)) if u]
        if users:
            log.warning("course session %s ended: stopping %d servers (%s)", info.label,
                        len(stopped), "end of course")
        await self._db(self.schedule.finish, info.id, stopped)

    # ------------------------------------------------------------ running

    async def settle(self) -> None:
        """Wait until no seat is being started (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def run(self) -> None:
        """Tick until :meth:`shutdown`; a failed tick is logged and retried."""
        parent = os.getppid()

        async def tick() -> None:
            if os.getppid() != parent:  # the hub that started this service is gone
                log.warning("the hub that started the course scheduler is gone; exiting")
                self.shutdown()
                return
            await self.tick()

        await tick_every(tick, self.interval, self._stopping, "course scheduler")
        for task in list(self._tasks.values()):
            task.cancel()

    def shutdown(self) -> None:
        """Stop after the current tick."""
        self._stopping.set()


def course_service(
    db_url: str, *, catalog_file: str = "", backend_override: str = "",
    concurrency: int = 5, interval: float = 1.0, name: str = SERVICE_NAME,
) -> tuple[dict, dict]:
    """The managed service and its role, for ``c.JupyterHub.services`` / ``load_roles``."""
    service = {
        "name": name,
        "command": [sys.executable, "-m", "hybridhub.services.course_scheduler"],
        "environment": {
            "HYBRIDHUB_DB_URL": db_url,
            "HYBRIDHUB_CATALOG": catalog_file,
            "HYBRIDHUB_BACKEND_OVERRIDE": backend_override,
            "HYBRIDHUB_COURSE_CONCURRENCY": str(concurrency),
            "HYBRIDHUB_COURSE_INTERVAL": str(interval),
        },
    }
    role = {"name": name, "services": [name], "scopes": list(SERVICE_SCOPES)}
    return service, role


def from_env(env: Mapping[str, str] | None = None) -> CourseScheduler:
    """Build a :class:`CourseScheduler` from the environment a hub service receives."""
    from hybridhub.catalog import load_catalog

    env = dict(os.environ if env is None else env)
    token, api_url = env.get("JUPYTERHUB_API_TOKEN"), env.get("JUPYTERHUB_API_URL")
    if not token or not api_url:
        raise SystemExit("JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN must be set")
    db = Database(env.get("HYBRIDHUB_DB_URL", DEFAULT_URL))
    db.upgrade()
    catalog = load_catalog(path=env.get("HYBRIDHUB_CATALOG") or None,
                           backend_override=env.get("HYBRIDHUB_BACKEND_OVERRIDE") or None)
    schedule = CourseSchedule(MeterSettings.from_env(env).accounting(db), catalog)
    return CourseScheduler(
        schedule, HubApi(api_url, token),
        concurrency=int(env.get("HYBRIDHUB_COURSE_CONCURRENCY", "5")),
        interval=float(env.get("HYBRIDHUB_COURSE_INTERVAL", "1")),
    )


async def _main() -> None:
    loghygiene.install()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scheduler = from_env()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, scheduler.shutdown)
    log.info("course scheduler: every %ss, %d starts at once, %s", scheduler.interval,
             scheduler.concurrency, scheduler.schedule.db.safe_url)
    await scheduler.run()


if __name__ == "__main__":
    asyncio.run(_main())
