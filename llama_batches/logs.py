"""Logging for the long-running commands: one handler on stderr at a level chosen by name, set up before the stack
is built, so that the lines building it writes (skipped APIs, providers and models) are shown."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_TRACE = 5  # uvicorn's level below debug
_HANDLER_NAME = "llama-batches"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is at each record (a live progress display redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str) -> None:
    """Show log records at ``level`` (one of :data:`LOG_LEVELS`) and above on stderr (ValueError for another
    name). A second call replaces the first one's handler instead of adding another."""
    name = level.lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"'{level}' is not one of {', '.join(LOG_LEVELS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(_TRACE if name == "trace" else logging.getLevelNamesMapping()[name.upper()])
