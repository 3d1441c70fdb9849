"""Hands freed heap memory back to the operating system, so that RSS falls after a burst.

Large messages arrive and leave as many small buffers (HTTP/2 frames); once freed, glibc
keeps them in its heaps for reuse, and RSS stays near its peak long after the burst (170
MB above the baseline after twenty stalled 49 MiB uploads had been dropped). Under a
container's memory limit that is memory the next burst cannot have. ``malloc_trim``
returns the free pages; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)


MMAP_THRESHOLD = 256 * 1024  # bytes: larger buffers get their own mapping
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def _libc_function(name: str):
    """A function of the C library, or None where it has none (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def map_large_buffers() -> None:
    """Fixes glibc's mmap threshold at :data:`MMAP_THRESHOLD` (its own env var wins)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


async def trim_periodically(interval: float) -> None:
    """Every ``interval`` seconds, returns free heap pages to the OS, off the event loop.

    Runs until cancelled; returns at once where there is no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is None:
        log.debug("no malloc_trim in this C library; freed memory stays with the allocator")
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim, 0)  # ctypes lets go of the GIL during the call
