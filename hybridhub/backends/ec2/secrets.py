"""Keep server tokens and encoded user-data out of every log line (botocore's included)."""

from __future__ import annotations

import logging
import threading

# ------------------------------------------------------------------ secrets


class SecretFilter(logging.Filter):
    """Replace registered secrets (server tokens, encoded user-data) in log records.

    Installed on botocore's loggers, whose DEBUG output includes request bodies
    (and so a launch's user-data), and on this module's logger.
    """

    def __init__(self):
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        """Start redacting ``secrets`` (empty strings are ignored)."""
        with self._lock:
            self._secrets.update(s for s in secrets if s and len(s) >= 8)

    def discard(self, *secrets: str) -> None:
        """Stop redacting ``secrets``."""
        with self._lock:
            self._secrets.difference_update(secrets)

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``[secret]``."""
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            if s in text:
                text = text.replace(s, "[secret]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is logging's business, not ours
            return True
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


secret_filter = SecretFilter()
for _name in (
    "botocore",
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.auth",
    "botocore.hooks",
    "botocore.retryhandler",
    "botocore.httpsession",
    "urllib3.connectionpool",
    "hybridhub.backends.ec2.backend",
):
    logging.getLogger(_name).addFilter(secret_filter)

