"""The process's limit on open files, which its connections share with everything else.

Every connection, gRPC or HTTP, holds a file descriptor. Container runtimes often start a
process with a soft limit of 1,024 (and a far higher hard one), where a thousand idle
connections would leave none for the next client, the health probe or the model file; so
the server raises its soft limit to the hard one at start (as Go's runtime does), and
says so when its connection caps do not fit under what it got.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)

# Descriptors kept for what is not a client connection: the model and its runtime, the
# listening sockets, /metrics, gRPC's own pipes and event fds, logs.
RESERVED = 256


def raise_limit() -> int:
    """Raises the soft limit on open files to the hard one; returns the soft limit now.

    Returns -1 when the limit is unlimited.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel still caps it: fs.nr_open
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return -1 if soft == resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # some sandboxes refuse it
            log.debug("cannot raise the open files limit from %d: %s", soft, exc)
    return -1 if soft == resource.RLIM_INFINITY else soft


def check_caps(limit: int, caps: dict[str, int]) -> None:
    """Warns when connection caps (flag: connections, 0 for none) do not fit ``limit``."""
    if limit < 0:
        return
    room = limit - RESERVED
    total = sum(caps.values())
    unbounded = [flag for flag, cap in caps.items() if cap == 0]
    if unbounded or total > room:
        flags = ", ".join(f"{flag} {cap}" for flag, cap in caps.items())
        log.warning(
            "the process may open %d files, %d of them for connections; %s could take more: "
            "lower them, or raise the limit (ulimit -n, the container runtime's nofile)",
            limit,
            max(room, 0),
            flags,
        )
