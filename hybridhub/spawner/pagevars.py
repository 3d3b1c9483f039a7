"""Hub template variables read from the accounting database in a worker thread, off the hub's loop.

JupyterHub calls a callable ``template_vars`` value as ``value(user)`` synchronously, on its
event loop, for every page it renders; a database read there would stall every user while
it waits.  :class:`PageVar` makes that call cheap: it only notes the user's name and groups
and returns a :class:`PageValue`, which the template calls::

    {% set banners = hybridhub_banners() if hybridhub_banners is callable else [] %}

JupyterHub's page templates are async (Jinja ``enable_async``), so Jinja awaits the call
and the read runs in :func:`asyncio.to_thread`.  The few pages rendered synchronously
(JupyterHub's error pages) get the user's last value instead: no read on the loop there.

A handler that already makes a worker-thread call of its own (the spawn page's picker) reads
the page's values in it with :meth:`PageVar.prime`; the page then takes that value instead of
a thread hop of its own (one hop per page, not two, under a lecture hall's load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

#: A reader: (username, group names) -> the value; it runs in a worker thread.
Reader = Callable[[str, list[str]], list]

#: (variable, username) -> the last value read, for synchronously rendered pages.
_last: dict[tuple[str, str], list] = {}
#: (variable, username) -> (monotonic time, value) read ahead for the page about to render.
_primed: dict[tuple[str, str], tuple[float, list]] = {}
#: A primed value older than this is not used (its page was never rendered).
PRIMED_SECONDS = 5.0
#: The variables the spawn page (templates/page.html) reads.
SPAWN_PAGE_VARS = ("hybridhub_banners",)


class PageVar:
    """A ``template_vars`` value whose ``read(username, groups)`` runs off the loop, inside
    ``reading()`` when given (one read-only transaction, :meth:`Database.reading`: on SQLite
    a plain ``BEGIN``, so the page does not wait for a writer's lock)."""

    def __init__(self, name: str, read: Reader,
                 reading: Callable[[], AbstractContextManager] = nullcontext):
        self.name = name
        self.read = read
        self.reading = reading

    def __deepcopy__(self, memo: dict) -> PageVar:
        """traitlets copies config values; the readers and their database are shared, not copied."""
        return self

    def value(self, username: str, groups: list[str]) -> list:
        """``read``, inside ``reading()`` (in the caller's worker thread)."""
        with self.reading():
            return self.read(username, groups)

    def __call__(self, user) -> PageValue | list:
        """Called by JupyterHub on its loop: no database access, only the user's names."""
        if user is None:
            return []
        return PageValue(self, user.name, [g.name for g in user.groups])

    def prime(self, username: str, groups: list[str]) -> None:
        """Read the value now, in the caller's worker thread, for the page about to render."""
        if len(_primed) > 10_000:
            _primed.clear()
        _primed[(self.name, username)] = (time.monotonic(), self.value(username, groups))


class PageValue:
    """What a template calls: awaited in async templates, the last value in sync ones."""

    def __init__(self, var: PageVar, username: str, groups: list[str]):
        self.var, self.username, self.groups = var, username, groups

    def __call__(self) -> _Pending:
        return _Pending(self)

    async def fetch(self) -> list:
        """Read the value in a worker thread (or take the primed one) and remember it for sync renders."""
        primed = _primed.pop((self.var.name, self.username), None)
        if primed is not None and time.monotonic() - primed[0] < PRIMED_SECONDS:
            value = primed[1]
        else:
            value = await asyncio.to_thread(self.var.value, self.username, self.groups)
        _last[(self.var.name, self.username)] = value
        return value

    def last(self) -> list:
        """The value last read for this user (empty before the first read)."""
        return _last.get((self.var.name, self.username), [])


class _Pending:
    """Awaitable (async templates) and, for sync templates, the last value as a sequence."""

    def __init__(self, value: PageValue):
        self.value = value

    def __await__(self):
        return self.value.fetch().__await__()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value.last())

    def __len__(self) -> int:
        return len(self.value.last())

    def __bool__(self) -> bool:
        return bool(self.value.last())
