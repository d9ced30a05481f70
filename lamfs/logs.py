"""Logging set-up: one line per event, LaminDB-like markers for interactive API use
("! " warnings, "• " info), plain level names for the CLI and the daemon.

Daemon logs are journald-friendly: under systemd (stderr connected to the journal, see
JOURNAL_STREAM) each line starts with a syslog priority prefix (`<4>` warning, `<6>` info, …) so
`journalctl -p warning` filters by level, and no timestamps are written when INVOCATION_ID is set
(journald adds its own). Every formatter here redacts secrets (signed-URL query parameters,
passwords in URLs, AWS secret keys and tokens) from the final text, tracebacks included.
"""
from __future__ import annotations

import logging
import os
import re
import sys

# (pattern, replacement): applied to every formatted log line
_SECRETS = [
    # pre-signed URLs and SigV2/SigV4 query auth
    (re.compile(r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)|AWSAccessKeyId|Signature)=[^&\s\"'<>]+"),
     r"\1=***"),
    # user:password@ in any URL (catalog URLs, proxies)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^@\s/]+@"), r"\1:***@"),
    # AWS_SECRET_ACCESS_KEY=..., aws_session_token: ..., password=...
    (re.compile(r"(?i)\b((?:aws_)?(?:secret_access_key|session_token|security_token)|password|passwd)"
                r"([\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"), r"\1\2***"),
    # HTTP Authorization headers
    (re.compile(r"(?i)(\bAuthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+"), r"\1***"),
]

SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "aiobotocore", "s3fs", "fsspec", "peewee")


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _ApiFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        marker = "! " if record.levelno >= logging.WARNING else "• "
        return redact(marker + record.getMessage())


class CliFormatter(logging.Formatter):
    """`lamfs: warning: …` lines on stderr for the command line."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        text = f"lamfs: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


class DaemonFormatter(logging.Formatter):
    """`LEVEL logger: message`, with a timestamp unless systemd supplies one, and journald
    priority prefixes on every line when writing to the journal."""

    def __init__(self, *, timestamps: bool, journald: bool):
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__("%(asctime)s " + fmt if timestamps else fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if self.journald:
            prefix = f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd set up (JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure_api_logging() -> None:
    """Show lamfs's info messages to interactive users unless the application configured logging."""
    logger = logging.getLogger("lamfs")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ApiFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _quiet_libraries(level: int) -> None:
    # botocore's DEBUG output carries request headers (signatures): never below WARNING
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def configure_cli_logging(level: int = logging.WARNING) -> None:
    """CLI commands print their results on stdout; log records go to stderr from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CliFormatter())
    logger = logging.getLogger("lamfs")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    _quiet_libraries(level)


def configure_daemon_logging(level: int, log_file: str | None) -> None:
    """The mount daemon: one line per event on stderr (systemd/journald) or in `log_file`."""
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    under_systemd = bool(os.environ.get("INVOCATION_ID"))
    handler.setFormatter(DaemonFormatter(timestamps=not under_systemd,
                                         journald=log_file is None and stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _quiet_libraries(level)
    lamfs_logger = logging.getLogger("lamfs")
    lamfs_logger.handlers[:] = []
    lamfs_logger.setLevel(logging.NOTSET)
    lamfs_logger.propagate = True
