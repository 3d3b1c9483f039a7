"""hybridhub.loghygiene: secrets scrubbed from every record, user errors without tracebacks.

The hub test (tests/spawner/test_quota_hostile.py) checks a real hub's log; these check the rules.
"""

from __future__ import annotations

import logging
import secrets

import pytest
from tornado.web import HTTPError

from hybridhub import loghygiene


@pytest.fixture
def records():
    loghygiene.install()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("hybridhub.test-hygiene")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, seen
    logger.removeHandler(handler)


def test_cookie_token_and_authorization_values_never_reach_a_handler(records):
    logger, seen = records
    session, token = secrets.token_hex(16), secrets.token_urlsafe(24)
    logger.info("Cookie: jupyterhub-session-id=%s; _xsrf=2|ab|cd|%s", session, token)
    logger.info("headers %r", {"Authorization": f"token {token}", "Host": "hub"})
    logger.debug("GET /hub/api/users?token=%s", token)
    logger.warning("oauth %s", {"jupyterhub-hub-login": token, "kept": "visible"})
    text = "\n".join(logging.Formatter().format(r) for r in seen)
    assert session not in text and token not in text
    assert text.count(loghygiene.SECRET) >= 5 and "visible" in text and "Host" in text


def test_a_user_error_loses_its_traceback_and_is_a_warning(records):
    logger, seen = records
    try:
        raise HTTPError(400, "Invalid option hours: must be a JSON number")
    except HTTPError:
        logger.exception("Failed to apply options")
    logger.error("Error starting bob's server: HTTP 403: Forbidden (quota)")
    try:
        raise RuntimeError(f"db down, password {secrets.token_hex(16)}")
    except RuntimeError:
        logger.exception("real fault")
    user_error, refused, fault = seen
    assert (user_error.levelname, user_error.exc_info, user_error.exc_text) == ("WARNING", None, None)
    assert refused.levelname == "WARNING"
    assert fault.levelname == "ERROR" and "Traceback" in fault.exc_text
    assert loghygiene.SECRET in fault.exc_text  # tracebacks are scrubbed too


def test_a_refusal_the_jupyterhub_6_way_is_one_warning_line(records):
    """JupyterHub 6 logs a SpawnException at ERROR ("Not starting ...") and options it could not apply with a
    traceback: for a refusal, one WARNING and no traceback; the spawner's own line already says why."""
    from hybridhub.errors import refusal

    logger, seen = records
    error = refusal(400, "Invalid option group: is required", "options")
    try:
        raise error
    except HTTPError:
        logger.exception("Exception applying user_options for %s", "sam")
    logger.error(f"Not starting sam's server : {error}")
    applying, not_starting = seen
    assert (applying.levelname, applying.exc_info, applying.exc_text) == ("DEBUG", None, None)
    assert (not_starting.levelname, not_starting.exc_info) == ("WARNING", None)


def test_only_records_that_a_handler_takes_are_scrubbed(records):
    """The hub's logger makes DEBUG records for a handler at INFO: those are dropped unread, and
    scrubbing them was most of a page's logging cost; what a handler takes is still scrubbed."""
    logger, seen = records
    token = secrets.token_hex(16)
    made: list[logging.LogRecord] = []
    logger.handlers[-1].setLevel(logging.INFO)
    logger.addFilter(lambda r: made.append(r) or True)  # sees every record, before the handlers
    logger.propagate = False  # the hub's logger does not propagate (pytest's root handlers take all)
    try:
        logger.debug("dropped %s", token)
        logger.info("kept %s", token)
    finally:
        logger.filters.clear()
        logger.propagate = True
    dropped, kept = made
    assert dropped.args == (token,)  # not scrubbed: no handler takes DEBUG
    assert seen == [kept] and kept.getMessage() == f"kept {loghygiene.SECRET}"
