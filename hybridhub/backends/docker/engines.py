"""The Docker Engines: one cached low-level client per engine, the thread pool their blocking calls
run in, and what counts as an engine that does not answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException

#: Errors that mean "the engine did not answer" (as opposed to "it said no").
ENGINE_DOWN_ERRORS = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)

_executor: ThreadPoolExecutor | None = None


def docker_executor(threads: int = 16) -> ThreadPoolExecutor:
    """The process-wide thread pool for blocking Docker SDK calls."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(threads, thread_name_prefix="hybridhub-docker")
    return _executor


_clients: dict[tuple[str, float], docker.APIClient] = {}


def engine_client(url: str, timeout: float = 10, tls: dict | None = None) -> docker.APIClient:
    """A cached low-level client for the engine at ``url`` (blocking: call in a thread)."""
    key = (url, timeout)
    client = _clients.get(key)
    if client is None:
        kwargs: dict[str, Any] = {"base_url": url, "version": "auto", "timeout": timeout}
        if tls:
            kwargs["tls"] = docker.tls.TLSConfig(**tls)
        client = docker.APIClient(**kwargs)
        _clients[key] = client
    return client


def engine_down(exc: BaseException) -> bool:
    """Whether ``exc`` says the engine is unreachable (not merely an API error)."""
    if isinstance(exc, APIError):
        return False
    if isinstance(exc, ENGINE_DOWN_ERRORS):
        return True
    # docker.APIClient(version="auto") wraps a refused connection in DockerException
    return isinstance(exc, DockerException) and "Error while fetching server API version" in str(
        exc
    )
