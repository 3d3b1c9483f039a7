"""Log hygiene for the hub and its services: no secrets, no tracebacks for user errors.

:func:`install` puts a log-record factory in front of every logger of the process
(JupyterHub's, tornado's, ours), so each record that a handler will take is scrubbed once,
when it is made (one that every handler drops by its level is left as it is: nobody reads it):

* cookie values, ``token``/``Authorization`` values and 32+ character hex secrets are
  replaced by ``[secret]`` (JupyterHub's ``_xsrf_utils`` logs its xsrf id, which embeds
  the ``jupyterhub-session-id`` cookie, at INFO);
* a record that carries a user error (an ``HTTPError`` below 500, as raised for a bad
  option or a refused launch) loses its traceback and is logged at WARNING, once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tornado.web import HTTPError

SECRET = "[secret]"
#: Cookie names whose values are credentials (JupyterHub's and its services').
_COOKIE = (
    r"(?:jupyterhub-[\w.-]+|_xsrf|[\w.-]+-oauth-state|[\w-]*session[_-]id"
    r"|[\w-]*api[_-]token|access[_-]token|auth[_-]token|token)"
)
_PATTERNS = (
    # Authorization: token abc / Bearer abc (headers, dict reprs, curl lines)
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:token\s+|bearer\s+)?)[^\s'\",;}]+"),
    # name=value and 'name': 'value' for credential cookies, token query parameters
    re.compile(rf"(?i)(\b{_COOKIE}['\"]?\s*[=:]\s*['\"]?)[^\s'\",;&}}\])]+"),
    # "token abc" as in an Authorization value quoted on its own
    re.compile(r"(?i)(\b(?:token|bearer)\s+)[A-Za-z0-9_\-.]{16,}"),
    # bare hex secrets: API tokens, session ids (uuid4().hex), cookie secrets
    re.compile(r"()\b[0-9a-fA-F]{32,}\b"),
)
#: JupyterHub's own lines for a spawn refused with a 4xx (a user error, not a fault): an HTTPError, and
#: a refusal (:class:`hybridhub.errors.SpawnRefusal`, which JupyterHub 6 logs at ERROR).
_REFUSED_SPAWN = re.compile(r"Error starting .*: HTTP 4\d\d\b|Not starting .*: 4\d\d refused \(")
#: JupyterHub's line for options its spawner refused, a second line for a refusal the spawner logs itself.
_REFUSED_OPTIONS = "Exception applying user_options"
_installed: list[Any] = []
_formatter = logging.Formatter()


def scrub(text: str) -> str:
    """``text`` with cookie values, tokens and Authorization values replaced."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + SECRET, text)
    return text


def _user_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, HTTPError) and exc.status_code < 500


def clean(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub ``record`` in place (message, arguments, traceback text) and return it."""
    if record.pathname.endswith("_xsrf_utils.py") and record.args:
        record.args = tuple(SECRET for _ in record.args)  # ids derived from the session cookie
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it for logging to report
        return record
    if _user_error(record) or (record.levelno > logging.WARNING
                               and _REFUSED_SPAWN.match(message)):
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        if message.startswith(_REFUSED_OPTIONS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.msg, record.args = scrub(message), ()
    if record.exc_info and not record.exc_text:  # format now, so the traceback is scrubbed too
        record.exc_text = _formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    return record


def _reaches_a_handler(record: logging.LogRecord) -> bool:
    """Whether a handler on the record's way up takes its level (else it is dropped unread).

    The hub's logger passes DEBUG records to a handler at INFO, so most records made during
    a page are dropped; scrubbing those cost more than the page's own log line.
    """
    logger = logging.root if record.name == "root" else logging.Logger.manager.loggerDict.get(record.name)
    if not isinstance(logger, logging.Logger):  # made by hand (makeLogRecord): scrub it
        return True
    seen = False
    while logger is not None:
        for handler in logger.handlers:
            seen = True
            if record.levelno >= handler.level:
                return True
        if not logger.propagate:
            break
        logger = logger.parent
    return not seen and logging.lastResort is not None and record.levelno >= logging.lastResort.level


def install() -> None:
    """Scrub every log record made in this process from now on (idempotent)."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        return clean(record) if _reaches_a_handler(record) else record

    logging.setLogRecordFactory(factory)
    _installed.append(factory)
