"""Errors the service raises, each carrying the gRPC status code it maps to.

The codes are named here, not imported from grpc, so the core stays transport-free;
the gRPC layer maps them by name in one interceptor.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """The canonical status codes this service uses (names match ``grpc.StatusCode``)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class FlatscopeError(Exception):
    """Base class; its message is safe to show to the client."""

    code = Code.INTERNAL


class InvalidInputError(FlatscopeError):
    """The request is malformed or does not fit the model."""

    code = Code.INVALID_ARGUMENT


class NotFoundError(FlatscopeError):
    """The request names a model or layer that is not served."""

    code = Code.NOT_FOUND


class FailedPreconditionError(FlatscopeError):
    """The request is well formed but the served model cannot answer it."""

    code = Code.FAILED_PRECONDITION


class UnimplementedError(FlatscopeError):
    """The method is not served; the message names the one to call instead."""

    code = Code.UNIMPLEMENTED


class ResourceExhaustedError(FlatscopeError):
    """The server is at capacity; the client should back off and retry."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceededError(FlatscopeError):
    """The request's deadline passed before it could be served."""

    code = Code.DEADLINE_EXCEEDED


class ReceiveTimeoutError(DeadlineExceededError):
    """A request that did not arrive within --receive-timeout; counted as a drop."""

    reason = "receive_timeout"


class StreamIdleError(DeadlineExceededError):
    """A request stream that sent nothing within --stream-idle-timeout; counted as a drop."""

    reason = "stream_idle"


class NotReadyError(FlatscopeError):
    """The model is still loading or warming up."""

    code = Code.UNAVAILABLE


class ShuttingDownError(FlatscopeError):
    """The server is draining before it stops; the client should retry elsewhere."""

    code = Code.UNAVAILABLE


class ModelLoadError(FlatscopeError):
    """The model file cannot be served; raised at startup, not per request."""

    code = Code.FAILED_PRECONDITION


class ConfigError(FlatscopeError):
    """A setting cannot be used (a TLS file, an address); raised at startup, not per request."""

    code = Code.FAILED_PRECONDITION


def reply_too_large(size: int, limit: int, ask_for_less: str) -> ResourceExhaustedError:
    """The error for a reply of ``size`` bytes above ``limit`` (--max-send-message-bytes).

    Args:
        size: The reply's size in bytes.
        limit: The largest reply the server may send.
        ask_for_less: How a client of this API asks for a smaller reply.
    """
    return ResourceExhaustedError(
        f"the reply would be {size} bytes, above this server's limit of {limit} "
        f"(--max-send-message-bytes); {ask_for_less}"
    )


def one_line(text: str) -> str:
    """``text`` with all of its content on one line, for a log line or a status message.

    Each line's runs of whitespace become one space; the non-blank lines are joined by
    " | " (a Keras error such as ``"in user code:\\n\\n    File ..."`` keeps every part).
    """
    lines = (" ".join(line.split()) for line in text.splitlines())
    return " | ".join(line for line in lines if line)


def status_message(text: str) -> str:
    """``text`` cut to at most MAX_STATUS_MESSAGE characters, keeping its start and end.

    A message may quote what the client sent (a model or layer name of any length);
    gRPC clients drop a call whose status trailer is above 8-16 KiB, and the trailer
    percent-encodes each non-ASCII character into up to 12 bytes.
    """
    if len(text) <= MAX_STATUS_MESSAGE:
        return text
    head, tail = text[: MAX_STATUS_MESSAGE * 2 // 3], text[-(MAX_STATUS_MESSAGE // 4) :]
    return f"{head} ... [{len(text) - len(head) - len(tail)} characters cut] ... {tail}"


MAX_STATUS_MESSAGE = 512
