"""Errors as HTTP answers: every status mapped here, in one place, as a JSON ``error``.

The body is ``{"error": message}``, as KServe v2 REST, Triton and TF Serving REST send
(``tritonclient.http`` raises with that message). Messages are the ones gRPC sends.
"""

from __future__ import annotations

import logging

from aiohttp import web

from flatscope.errors import (
    Code,
    FlatscopeError,
    InvalidInputError,
    ReceiveTimeoutError,
    ResourceExhaustedError,
)
from flatscope.http import jsonio

log = logging.getLogger(__name__)

# gRPC's canonical codes as HTTP statuses (google.rpc.Code's own mapping).
STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.INTERNAL: 500,
}
INTERNAL = "internal error; the server log has details"


class BodyTooLarge(ResourceExhaustedError):
    """A request body above --max-receive-message-bytes (413: HTTP has its own status)."""

    reason = "too_large"
    status = 413


class ReceiveTimeout(ReceiveTimeoutError):
    """A request body that did not arrive within --receive-timeout (408: the client's pace)."""

    status = 408


class NotJson(InvalidInputError):
    """A request body that is not the JSON the route expects."""


class UndecodableBody(InvalidInputError):
    """A request body that does not decode as its Content-Encoding says.

    Its connection is closed after the answer: the rest of the body cannot be read
    past the error, so the connection cannot carry another request.
    """

    close_connection = True


def status_of(exc: FlatscopeError) -> int:
    """The HTTP status of a flatscope error."""
    return getattr(exc, "status", None) or STATUS.get(exc.code, 500)


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return web.Response(
        status=status, body=jsonio.dumps({"error": message}), content_type="application/json"
    )


def http_error(exc: web.HTTPException, method: str, path: str) -> web.Response:
    """aiohttp's own answers (no such route, method not allowed) as JSON errors."""
    if exc.status == 404:
        message = (
            f"no route {method} {path[:200]}; the APIs are KServe v2 under /v2, TF Serving "
            "under /v1/models and flatscope's own under /flatscope/v1"
        )
    elif exc.status == 405:
        message = f"{method} is not allowed on {path[:200]}; allowed: {exc.headers.get('Allow')}"
    else:
        message = exc.reason
    response = error_response(exc.status, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
