"""Logging set-up: one line per event, LaminDB-like markers for interactive API use
("! " warnings, "• " info), plain level names for the daemon/journald."""
from __future__ import annotations

import logging
import sys


class _ApiFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        marker = "! " if record.levelno >= logging.WARNING else "• "
        return marker + record.getMessage()


def configure_api_logging() -> None:
    """Show lamfs's info messages to interactive users unless the application configured logging."""
    logger = logging.getLogger("lamfs")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ApiFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
