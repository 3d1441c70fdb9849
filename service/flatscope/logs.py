"""Log lines: one per event, as text or as JSON objects; request payloads are never logged."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# While stderr is held: the real stderr (a duplicate of file descriptor 2), the file
# that descriptor 2 points at instead, and whether the native runtimes' start-up lines
# are dropped when it is replayed.
_held: tuple[int, BinaryIO, bool] | None = None

# The native runtimes' log lines: absl's ("I0000 00:00:1796216469.748407    5701 port.cc:153]
# ...") and the older TensorFlow one ("2025-09-17 14:44:05.157831: I external/...").
_NATIVE = re.compile(
    rb"^(?:(?P<absl>[IWEF])\d{4} \d+:\d+:\d+\.\d+ +\d+ [^\]\s]+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) )"
)
# absl's notice before its first line, when nothing initialised its logging.
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called"
# An error line that a healthy start on a machine without an NVIDIA driver always prints:
# TensorFlow probing CUDA (the model then runs on the CPU, as the start-up log says).
_EXPECTED_ERRORS = re.compile(rb"failed call to cuInit")
# Where a new event begins: one of our log lines (text or JSON), a traceback, a native line.
_NEW_EVENT = re.compile(rb"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |\{|Traceback )")


def quiet_native_logs() -> None:
    """Turns TensorFlow's and gRPC's native logs down to warnings and errors.

    Sets ``TF_CPP_MIN_LOG_LEVEL=1`` and ``GRPC_VERBOSITY=ERROR`` unless the environment
    sets them already. gRPC reads its variable when ``grpc`` is imported, TensorFlow
    when its libraries load: call this before either. The lines TensorFlow prints before
    its logging is initialised (the oneDNN banner) obey no variable; :func:`hold_stderr`
    drops them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


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
    # JAX logs at INFO that it found no TPU (and which platforms it tried): not news,
    # except at DEBUG, where everything shows.
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    logging.getLogger("jax._src.xla_bridge").setLevel(quiet)


def hold_stderr(*, drop_native: bool = False) -> None:
    """Holds back everything written to stderr until :func:`release_stderr`.

    For the startup of a server: a failed start then prints its one error line alone,
    not after the log lines of the steps that worked and the native runtimes' own lines
    (TensorFlow's and gRPC's C++ logs write to file descriptor 2, past Python's logging).
    What is held waits in an unlinked temporary file; nothing is held when none can be made.

    Args:
        drop_native: Replay without the native runtimes' start-up noise: their info
            and warning lines (with the lines that continue them), absl's notice, and
            the CUDA probe's error on a machine without a GPU driver.
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
    _held = (stderr, file, drop_native)


def release_stderr(*, replay: bool = True) -> None:
    """Ends :func:`hold_stderr`; with ``replay``, writes what was held first, in order.

    Does nothing when nothing is held.
    """
    global _held
    if _held is None:
        return
    stderr, file, drop_native = _held
    _held = None
    sys.stderr.flush()
    os.dup2(stderr, 2)
    os.close(stderr)
    with file, open(2, "wb", closefd=False) as out:
        if replay:
            file.seek(0)
            out.writelines(without_native_noise(file) if drop_native else file)


def without_native_noise(lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` without the native runtimes' start-up noise (see :func:`hold_stderr`).

    Native error and fatal lines pass, but for the expected CUDA probe error; so does
    every line of our own logs.
    """
    dropping = False
    for line in lines:
        native = _NATIVE.match(line)
        if native:
            severity = native.group("absl") or native.group("tf")
            dropping = severity in (b"I", b"W") or bool(_EXPECTED_ERRORS.search(line))
        elif line.startswith(_ABSL_NOTICE):
            dropping = True
        elif _NEW_EVENT.match(line):
            dropping = False
        # Anything else continues the event before it (a native message's second line).
        if not dropping:
            yield line


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
