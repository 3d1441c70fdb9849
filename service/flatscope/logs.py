"""Log lines: one per event, as text or as JSON objects; request payloads are never logged."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` on one line.

    Line breaks (a traceback, a hostile string inside a message) are escaped as ``\\n``,
    so that every event is one line and no one can forge a line of their own.
    """

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
    and ``exception`` (the traceback) when there is one.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        entry = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes line breaks inside strings: the object stays on one line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Sends every log record (and Python warnings) to stderr in the chosen format.

    Args:
        level: A level name, e.g. "INFO".
        fmt: "text" or "json".
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
