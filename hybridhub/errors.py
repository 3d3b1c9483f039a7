"""Errors that reach the user: JupyterHub shows ``jupyterhub_message`` on the spawn page and in REST bodies.

A launch refused by policy is a :class:`SpawnRefusal` (JupyterHub 6's ``SpawnException``): the hub
logs it without a traceback and counts it in ``jupyterhub_server_spawn_duration_seconds`` with
``status="failure"`` and its stable ``reason`` (one of :data:`REFUSAL_REASONS`).  Failures of a
backend (5xx) stay plain HTTP errors: the hub counts those as errors.
"""

from __future__ import annotations

from jupyterhub.spawner import SpawnException
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


#: The stable ``reason`` of each kind of refused launch (the label in the hub's and hybridhub's metrics).
REFUSAL_REASONS = ("budget", "no_budget", "capacity", "course", "group", "options", "trust", "price", "account")

#: The reason of a backend's refusal that names none, by its status.
_REASON_BY_STATUS = {400: "options", 403: "account", 409: "price", 413: "options", 429: "capacity"}


class SpawnRefusal(SpawnException):
    """A launch refused by policy: the person's text, its status (``headers`` such as ``Retry-After``)
    and a stable ``reason``; the hub logs it as one line and counts it as a ``failure``, not an error."""

    def __init__(self, status: int, message: str, *, reason: str, headers: dict[str, str] | None = None,
                 message_html: str = ""):
        super().__init__(message, reason=reason, status_code=status, message_html=message_html)
        self.jupyterhub_message = message
        self.log_message, self.args = "%s", (message,)  # tornado formats log_message % args
        if headers:
            self.headers = headers

    def get_message(self) -> str:
        """The person's text (never a format string)."""
        return self.message

    def __str__(self) -> str:
        return f"{self.status_code} refused ({self.reason}): {self.message}"


def refusal(status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> SpawnRefusal:
    """A refused launch; 429s always carry ``Retry-After``."""
    if status == 429:
        headers = {"Retry-After": RETRY_AFTER_S, **(headers or {})}
    return SpawnRefusal(status, message, reason=reason, headers=headers)


def as_refusal(error: web.HTTPError) -> SpawnRefusal:
    """A backend's user-facing 4xx as a :class:`SpawnRefusal` (reason by status unless it has one)."""
    if isinstance(error, SpawnRefusal):
        return error
    reason = _REASON_BY_STATUS.get(error.status_code, "options")
    return refusal(error.status_code, getattr(error, "jupyterhub_message", None) or error.get_message(),
                   reason, getattr(error, "headers", None))


def no_capacity_error(message: str) -> SpawnRefusal:
    """A 429 whose message reaches the user, with ``Retry-After`` (reason ``capacity``)."""
    return refusal(429, message, "capacity")


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
