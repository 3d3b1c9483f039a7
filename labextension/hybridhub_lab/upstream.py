"""The server extension's one upstream: the portal's session endpoint, cached with back-off.

At most one request per ``min_interval`` seconds leaves the server whatever the number of
Lab tabs (concurrent callers share one in-flight request); after a failure the next try
waits ``min_interval * 2**failures`` seconds, at most ``max_backoff``, and callers get the
last good answer marked stale, so the Lab keeps working while the portal is down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


class PortalUnavailable(Exception):
    """The portal did not answer and nothing is cached; retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def session_url(portal_url: str, username: str, server_name: str) -> str:
    """The portal URL of ``username``'s server ``server_name`` session."""
    return (f"{portal_url.rstrip('/')}/api/users/{quote(username, safe='')}/session"
            f"?server={quote(server_name, safe='')}")


class SessionSource:
    """This server's session from the portal, fetched with the server's own token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        min_interval: float = 30.0,
        max_backoff: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ):
        self.url = url
        self._token = token
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.clock = clock
        self._fetch = fetch or self._fetch_http
        self.requests = 0  # upstream requests made (for tests and benchmarks)
        self.failures = 0
        self._data: dict[str, Any] | None = None
        self._next_at = 0.0
        self._error = ""
        self._inflight: asyncio.Future | None = None

    def __repr__(self) -> str:  # never show the token
        return f"SessionSource({self.url!r})"

    async def _fetch_http(self) -> dict[str, Any]:
        request = HTTPRequest(self.url, headers={"Authorization": f"token {self._token}"},
                              request_timeout=self.timeout)
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body)

    async def get(self) -> tuple[dict[str, Any], bool]:
        """``(session, stale)``; raises :class:`PortalUnavailable` with nothing cached."""
        now = self.clock()
        if now >= self._next_at:
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._refresh())
            await asyncio.shield(self._inflight)
        if self._data is None:
            raise PortalUnavailable(self._error, max(0.0, self._next_at - self.clock()))
        return self._data, self.failures > 0

    async def _refresh(self) -> None:
        self.requests += 1
        try:
            self._data = await self._fetch()
            self.failures = 0
            self._next_at = self.clock() + self.min_interval
        except Exception as exc:  # any failure: back off, keep the last answer
            self.failures += 1
            code = getattr(exc, "code", None)
            self._error = f"the hybridhub portal did not answer ({code or type(exc).__name__})"
            self._next_at = self.clock() + min(self.min_interval * 2 ** self.failures, self.max_backoff)
        finally:
            self._inflight = None

    @property
    def retry_after(self) -> float:
        """Seconds until the next upstream request may be made."""
        return max(0.0, self._next_at - self.clock())
