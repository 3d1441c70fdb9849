"""Waiting for what the server records a moment after its client saw the call end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def settled(read: Callable[[], T], expected: T, timeout: float = 5.0) -> T:
    """Polls ``read()`` until it returns ``expected`` or ``timeout`` passes; its last value.

    A call's RPC metrics are recorded when the server has finished the call on the wire,
    which can be a little after its client got the reply.
    """
    end = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < end:
        time.sleep(0.01)
        value = read()
    return value
