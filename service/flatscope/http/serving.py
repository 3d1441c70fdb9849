"""What every HTTP route reads, kept in the aiohttp application."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flatscope.core import ModelCore
from flatscope.errors import reply_too_large
from flatscope.http import jsonio
from flatscope.http.bodies import OFF_LOOP_ELEMENTS, BodyLimits, off_loop


@dataclasses.dataclass
class Serving:
    """What every route reads: the core, the limits, and whether the server is ready.

    Attributes:
        core: The model core, shared with gRPC.
        limits: What bounds a request body.
        max_reply_bytes: Largest reply body (--max-send-message-bytes).
        ready: False once shutdown has begun (readiness answers 503).
    """

    core: ModelCore
    limits: BodyLimits
    max_reply_bytes: int
    ready: bool = True


SERVING = web.AppKey("serving", Serving)


def answer(body: Any, status: int = 200) -> web.Response:
    """``body`` as a compact JSON answer."""
    return web.Response(status=status, body=jsonio.dumps(body), content_type="application/json")


def check_reply_size(size: int, serving: Serving, ask_for_less: str) -> None:
    """Refuses a reply above --max-send-message-bytes, as gRPC does.

    Raises:
        ResourceExhaustedError: It is too large; the message says how to ask for less.
    """
    if size > serving.max_reply_bytes:
        raise reply_too_large(size, serving.max_reply_bytes, ask_for_less)


async def encoded_answer(
    serving: Serving,
    elements: int,
    ask_for_less: str,
    encode: Callable[..., bytes],
    *args: Any,
) -> web.Response:
    """The JSON answer ``encode(*args)`` writes, off the event loop for a reply of more
    than OFF_LOOP_ELEMENTS tensor ``elements``; refused above --max-send-message-bytes.

    Raises:
        ResourceExhaustedError: It is too large; the message says how to ask for less.
    """
    data = await off_loop(elements > OFF_LOOP_ELEMENTS, encode, *args)
    check_reply_size(len(data), serving, ask_for_less)
    return web.Response(body=data, content_type="application/json")
