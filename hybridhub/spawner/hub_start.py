"""Work that waits for the JupyterHub app loading this process's config to start (its config then whole)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

#: Tasks waiting for, or running after, the hub's start (a reference keeps them from being collected).
_tasks: set[asyncio.Task] = set()


def after_hub_starts(run: Callable[[Any], Awaitable[None]]) -> asyncio.Task | None:
    """Schedule ``await run(app)`` once the JupyterHub app whose config is loading in this process has
    started; None outside a starting hub (a ``jupyterhub`` subcommand, a script, a test building a config)."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return None
    app = JupyterHub.instance()
    started = getattr(app, "_start_future", None)  # set by JupyterHub.initialize before the config loads
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if started is None or app.subapp:
        return None

    async def later() -> None:
        await asyncio.shield(started)
        await run(app)

    _tasks.add(task := loop.create_task(later()))
    task.add_done_callback(_tasks.discard)
    return task
