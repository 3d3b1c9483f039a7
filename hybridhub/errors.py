"""Errors that reach the user: JupyterHub shows ``jupyterhub_message`` on the spawn page and in REST bodies."""

from __future__ import annotations

from tornado import web

#: Longest error text copied into a message or a record (an error can carry a whole log).
MAX_DETAIL = 300


def user_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPError:
    """An HTTPError whose message reaches the user (REST body and the picker page)."""
    err = web.HTTPError(status, "%s", message)
    err.jupyterhub_message = message
    if headers:
        err.headers = headers
    return err


#: Seconds a user is told to wait after "no capacity right now" (429).
RETRY_AFTER_S = "60"


def no_capacity_error(message: str) -> web.HTTPError:
    """A 429 whose message reaches the user, with ``Retry-After``."""
    return user_error(429, message, {"Retry-After": RETRY_AFTER_S})


def first_line(error: BaseException) -> str:
    """The error's first line, clipped to :data:`MAX_DETAIL` characters, naming its type when it is empty."""
    text = str(getattr(error, "jupyterhub_message", "") or error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 1] + "…"


def start_failed(what: str, backend: str, error: BaseException) -> web.HTTPError:
    """The user-facing error for a backend that could not start a server (503: try again or elsewhere)."""
    return user_error(
        503,
        f"Your {what} server could not be started on the {backend} backend: {first_line(error)}. "
        "Nothing was charged: the reservation was released. Try again in a minute or pick another "
        "offering; if it keeps failing, tell your hub's administrators (the hub log has the details).",
    )


class ConfinementError(RuntimeError):
    """The backend cannot run this server with the confidential folders left out."""
