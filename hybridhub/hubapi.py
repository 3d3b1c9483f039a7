"""The one client of JupyterHub's REST API that the portal's services use.

:class:`JsonApi` is JSON over HTTP under one base URL with one token (never shown in a
repr, a log line or an error); every failure becomes a :class:`HubApiError` carrying the
HTTP code (599: no answer) and the server's own ``message``.  :class:`HubApi` adds the
calls the meter, the course scheduler and the verification runner
make: users, groups, servers (start, stop, progress) and the paginated list of active
servers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)


class HubApiError(Exception):
    """The API answered an error (or none: code 599): ``code`` and its own ``message``."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"HTTP {code}: {message}")


def error_message(exc: HTTPClientError) -> str:
    """The ``message`` of a JupyterHub/Jupyter error body, else tornado's reason."""
    body = exc.response.body if exc.response is not None else b""
    try:
        return str(json.loads(body or b"{}").get("message") or exc.message)
    except (ValueError, AttributeError):
        return str(exc.message)


class JsonApi:
    """JSON requests under ``base_url`` with ``token``.

    ``max_clients``: a connection pool of its own (made on first use, inside the running
    loop); None shares tornado's client (10 connections).
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, max_clients: int | None = None):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_clients = max_clients
        self._http: AsyncHTTPClient | None = None

    def __repr__(self) -> str:  # never show the token
        return f"{type(self).__name__}({self.base_url!r})"

    def http(self) -> AsyncHTTPClient:
        """The HTTP client requests go through."""
        if self.max_clients is None:
            return AsyncHTTPClient()
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True, max_clients=self.max_clients)
        return self._http

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> HTTPRequest:
        """The request for ``base_url + path`` (``kwargs``: more HTTPRequest arguments)."""
        headers = {"Authorization": f"token {self._token}", "Content-Type": "application/json",
                   **kwargs.pop("headers", {})}
        if body is None and method not in ("GET", "DELETE", "HEAD"):
            body = {}
        return HTTPRequest(
            self.base_url + path, method=method, headers=headers,
            body=None if body is None else json.dumps(body),
            request_timeout=kwargs.pop("timeout", None) or self.timeout,
            allow_nonstandard_methods=True, **kwargs,
        )

    async def fetch(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """One request; its status code and decoded JSON (None when empty), or HubApiError."""
        try:
            response = await self.http().fetch(self.request(method, path, body, **kwargs))
        except HTTPClientError as exc:
            raise HubApiError(exc.code, error_message(exc)) from None
        except OSError as exc:
            raise HubApiError(599, str(exc)) from None
        return response.code, json.loads(response.body) if response.body else None

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """:meth:`fetch`, the decoded JSON only."""
        return (await self.fetch(method, path, body, **kwargs))[1]


def server_path(username: str, server_name: str = "") -> str:
    """``/users/<user>/server`` or ``/users/<user>/servers/<name>``, escaped."""
    user = quote(username, safe="")
    if server_name:
        return f"/users/{user}/servers/{quote(server_name, safe='')}"
    return f"/users/{user}/server"


class HubApi(JsonApi):
    """The hub's REST API (``base_url``: its API URL, e.g. ``http://127.0.0.1:8081/hub/api``)."""

    async def user(self, username: str) -> dict | None:
        """The hub's model of the user, or None if there is none."""
        try:
            return await self.call("GET", f"/users/{quote(username, safe='')}")
        except HubApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def server(self, username: str, server_name: str = "") -> dict | None:
        """The hub's model of the server (``ready``, ``pending``, ``user_options``), or None."""
        model = await self.user(username)
        return None if model is None else (model.get("servers") or {}).get(server_name)

    async def group(self, name: str) -> dict:
        """The hub's model of group ``name`` (``users``, ``properties``)."""
        return await self.call("GET", f"/groups/{quote(name, safe='')}")

    async def start_server(self, username: str, server_name: str, options: Mapping[str, Any],
                           timeout: float | None = None) -> int:
        """Ask the hub to start the server: 201 once ready, 202 while pending (HubApiError)."""
        code, _ = await self.fetch("POST", server_path(username, server_name), dict(options), timeout=timeout)
        return code

    async def stop_server(self, username: str, server_name: str = "", *, remove: bool = False) -> bool:
        """Ask the hub to stop the server (and, with ``remove``, to delete the named server once
        stopped); True if it is stopping or already gone.

        An error is logged (never with the token) and answers False.
        """
        try:
            await self.fetch("DELETE", server_path(username, server_name), {"remove": True} if remove else None)
        except HubApiError as exc:
            if exc.code in (400, 404):  # not running, or the user is gone: nothing to stop
                return True
            log.error("stopping %s's server %r failed: %s", username, server_name, exc)
            return False
        return True

    async def progress(self, username: str, server_name: str, on_event: Callable[[dict], None],
                       timeout: float) -> None:
        """Follow the server's progress stream, calling ``on_event`` per event (HubApiError)."""
        buffer = b""

        def collect(chunk: bytes) -> None:
            nonlocal buffer
            buffer += chunk
            *whole, buffer = buffer.split(b"\n\n")
            for block in whole:
                for line in block.splitlines():
                    if line.startswith(b"data:"):
                        on_event(json.loads(line[5:]))

        await self.fetch("GET", server_path(username, server_name) + "/progress",
                         timeout=timeout, streaming_callback=collect)

    async def wait_ready(self, username: str, server_name: str, timeout: float) -> str | None:
        """Follow the progress stream; None once the server is ready, else why it is not."""
        events: list[dict] = []
        try:
            await self.progress(username, server_name, events.append, timeout)
        except HubApiError as exc:
            if exc.code == 599:
                return f"not ready after {timeout:g} s"
            if exc.code != 400:  # 400: not starting any more (ready or gone): look below
                return str(exc)
        for event in reversed(events):
            if event.get("ready"):
                return None
            if event.get("failed"):
                return str(event.get("message") or "spawn failed")
        model = await self.server(username, server_name)
        return None if model and model.get("ready") else "the server is gone"

    async def active_users(self, page_size: int = 200) -> list[dict]:
        """Every user with an active (ready or pending) server, with server state."""
        found: list[dict] = []
        offset = 0
        while True:
            page = await self.call(
                "GET", f"/users?state=active&offset={offset}&limit={page_size}",
                headers={"Accept": "application/jupyterhub-pagination+json"},
            )
            items = page["items"] if isinstance(page, dict) else page or []
            found.extend(items)
            nxt = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not nxt or not items:
                return found
            offset = nxt["offset"]
