"""Reading a request body under the same limits as gRPC: size, admission, receive time.

The declared Content-Length is checked against --max-receive-message-bytes and admitted
against the memory budget *before* a byte of the body is read; a body without one (chunked)
is read up to the limit, then admitted. The ticket is released by the app once the
answer has been written (see :mod:`flatscope.http.app`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from flatscope.admission import Admission, Ticket
from flatscope.errors import InvalidInputError
from flatscope.http import jsonio
from flatscope.http.errors import BodyTooLarge, NotJson, ReceiveTimeout, UndecodableBody
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

TICKET = web.RequestKey("ticket", Ticket)
T = TypeVar("T")
# Bodies above this are parsed, and replies of more elements encoded, off the event loop.
OFF_LOOP_BYTES = 1024 * 1024
OFF_LOOP_ELEMENTS = 64 * 1024
CHUNK = 256 * 1024


@dataclasses.dataclass(frozen=True)
class BodyLimits:
    """What bounds a request body.

    Args:
        max_bytes: Largest body accepted (--max-receive-message-bytes).
        receive_timeout: Seconds the body may take to arrive.
        admission: Admits model calls by count and bytes; None admits all.
    """

    max_bytes: int
    receive_timeout: float
    admission: Admission | None = None


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """Admits a model call and reads its body.

    Raises:
        Draining: The server is shutting down (503).
        BodyTooLarge: The body is, or declares to be, above the limit (413).
        Refused: Admission refuses the call (429).
        ReceiveTimeout: The body did not arrive in time (408).
    """
    admission = limits.admission
    if admission is not None:
        admission.check_open()  # before the body is read
    length = request.content_length
    if length is not None:
        _check_size(length, limits.max_bytes, "declares (Content-Length)")
        await _admit(request, admission, length)
    try:
        data = await asyncio.wait_for(_read(request, limits.max_bytes), limits.receive_timeout)
    except TimeoutError:
        raise ReceiveTimeout(
            f"the request body did not arrive within {limits.receive_timeout:g} s "
            "(--receive-timeout)"
        ) from None
    if length is None:
        await _admit(request, admission, len(data))
    return data


async def _admit(request: web.Request, admission: Admission | None, size: int) -> None:
    if admission is not None:
        request[TICKET] = await admission.admit_when_room(peer(request), size)


def peer(request: web.Request) -> str:
    """The client connection, as admission counts its share of the budget."""
    address = request.transport.get_extra_info("peername") if request.transport else None
    if not address:
        return "http:unknown"
    return f"http:{address[0]}:{address[1]}"


async def _read(request: web.Request, limit: int) -> bytes:
    parts = []
    size = 0
    try:
        while chunk := await request.content.read(CHUNK):
            size += len(chunk)
            _check_size(size, limit, "has at least")
            parts.append(chunk)
    except web.RequestPayloadError as exc:  # aiohttp's decoding of the body failed
        encoding = request.headers.get("Content-Encoding")
        declared = f" (Content-Encoding: {encoding[:40]})" if encoding else ""
        raise UndecodableBody(
            f"the request body could not be decoded{declared}: {str(exc)[:200]}; "
            "send it encoded as declared (gzip, deflate), or without Content-Encoding"
        ) from None
    return b"".join(parts)


def _check_size(size: int, limit: int, verb: str) -> None:
    if size > limit:
        raise BodyTooLarge(
            f"the request body {verb} {size} bytes, above this server's limit of {limit} "
            "(--max-receive-message-bytes); send fewer examples per request"
        )


async def parse_json(
    data: bytes | memoryview, expected: str, read: Callable[[dict[str, Any]], T]
) -> T:
    """``read`` of ``data`` parsed as a JSON object; both off the event loop when large.

    Args:
        data: The bytes.
        expected: What the route expects, for the message ("a KServe v2 inference request").
        read: Turns the object into what the route needs (its tensors as arrays).

    Raises:
        NotJson: It is not JSON, or not an object.
        InvalidInputError: What ``read`` raises.
    """
    return await off_loop(len(data) > OFF_LOOP_BYTES, _parse, data, expected, read)


def _parse(data: bytes | memoryview, expected: str, read: Callable[[dict[str, Any]], T]) -> T:
    try:
        parsed = jsonio.loads(data)
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise NotJson(
            f"the request body is not JSON ({exc}){_no_nan_hint(exc)}; expected {expected}"
        ) from None
    if not isinstance(parsed, dict):
        raise NotJson(f"the request body is JSON but not an object; expected {expected}")
    return read(parsed)


def _no_nan_hint(exc: ValueError) -> str:
    # Python's json writes NaN and Infinity by default; JSON has neither. orjson's error
    # carries the text and the offending character's position in it.
    doc, position = getattr(exc, "doc", None), getattr(exc, "pos", None)
    literal = doc[position : position + 3] if isinstance(doc, str) and position is not None else ""
    if literal.lower() in ("nan", "inf"):
        return ": JSON has no NaN or Infinity, send finite numbers"
    return ""


def float_array(what: str, value: Any) -> np.ndarray:
    """A JSON value (a number, or nested lists of numbers) as a float32 array.

    The values' own type is read first: strings, true/false and null are not numbers
    (numpy would turn "0.5" and true into floats, and null into NaN).

    Raises:
        InvalidInputError: It is not numbers, or its lists are ragged.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"{what} is not a list of numbers (nested lists must be rectangular)"
        ) from None
    kind = array.dtype.kind
    if kind in "fiu":
        return array.astype(np.float32, copy=False)
    found = _NOT_NUMBERS.get(kind, "null, or values of mixed types")
    raise InvalidInputError(f"{what} holds {found}; expected JSON numbers")


# What a JSON value that numpy reads as an array of this kind holds instead of numbers;
# other kinds ("O") are null, a mix of types, or integers beyond 64 bits.
_NOT_NUMBERS = {"b": "true/false", "U": "strings", "S": "strings"}


def json_tensor(what: str, value: Any, wording: Wording) -> TensorPayload:
    """A JSON value (see :func:`float_array`) as a tensor of its own shape.

    Raises:
        InvalidInputError: It is not numbers, or its lists are ragged.
    """
    array = float_array(what, value)
    return TensorPayload(ACCEPTED_DTYPE, array.shape, b"", array.reshape(-1), wording)


async def off_loop(large: bool, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, in a worker thread when ``large`` (so small calls do not wait)."""
    if not large:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
