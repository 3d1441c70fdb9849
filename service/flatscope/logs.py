"""Log lines: one per event, as text or as JSON objects; request payloads are never logged."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import BinaryIO, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# While stderr is held: the real stderr (a duplicate of file descriptor 2) and the file
# that descriptor 2 points at instead.
_held: tuple[int, BinaryIO] | None = None


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
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
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


def hold_stderr() -> None:
    """Holds back everything written to stderr until :func:`release_stderr`.

    For the startup of a server: a failed start then prints its one error line alone,
    not after the log lines of the steps that worked and the native runtimes' own lines
    (TensorFlow's and gRPC's C++ logs write to file descriptor 2, past Python's logging).
    What is held waits in an unlinked temporary file; nothing is held when none can be made.
    """
    global _held
    if _held is not None:
        return
    sys.stderr.flush()
    try:
        file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by release_stderr)
    except OSError:
        return
    stderr = os.dup(2)
    os.dup2(file.fileno(), 2)
    _held = (stderr, file)


def release_stderr(*, replay: bool = True) -> None:
    """Ends :func:`hold_stderr`; with ``replay``, writes what was held first, in order.

    Does nothing when nothing is held.
    """
    global _held
    if _held is None:
        return
    stderr, file = _held
    _held = None
    sys.stderr.flush()
    os.dup2(stderr, 2)
    os.close(stderr)
    with file, open(2, "wb", closefd=False) as out:
        if replay:
            file.seek(0)
            shutil.copyfileobj(file, out)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
