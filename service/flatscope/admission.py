"""Admission of model calls: how many the server holds at once, and how many bytes.

Transport-free: the gRPC layer asks :meth:`Admission.admit` once a call's request
message has fully arrived (so a client that stalls before sending it holds no slot),
charges the reply when it is encoded, and releases the ticket when the call has ended
on the wire (its reply sent, or the call cancelled).

Memory is an estimate, not a reading: a request costs its wire size times
:data:`REQUEST_COPIES` (the wire bytes, the parsed message, the decoded batch), a reply
its encoded size times :data:`REPLY_COPIES` (the message and its bytes waiting in the
transport). One connection may hold at most :data:`PEER_SHARE` of the budget, so that a
client that sends large requests and never reads the replies cannot fill it alone.
"""

from __future__ import annotations

import asyncio
import time

from flatscope.errors import ResourceExhaustedError, ShuttingDownError

REQUEST_COPIES = 3
REPLY_COPIES = 2
PEER_SHARE = 0.25


class Refused(ResourceExhaustedError):
    """A call refused by admission; ``reason`` labels ``flatscope_requests_dropped_total``."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Admission:
    """Bounds the model calls held at once, by count and by estimated bytes.

    Args:
        max_calls: Most model calls admitted at once; 0 for no limit.
        budget_bytes: Most estimated bytes held by admitted calls; 0 for no limit.
    """

    def __init__(self, max_calls: int, budget_bytes: int):
        self.max_calls = max_calls
        self.budget_bytes = budget_bytes
        self._peer_bytes = int(budget_bytes * PEER_SHARE)
        self.calls = 0
        self.bytes = 0
        self._by_peer: dict[str, int] = {}
        # Draining (see close()).
        self.closed = False
        self.last_activity = 0.0
        self._idle = asyncio.Event()
        self._released = asyncio.Event()

    def admit(self, peer: str, request_bytes: int) -> Ticket:
        """Admits a call whose request message is ``request_bytes`` long.

        Raises:
            Refused: The server holds as many calls or bytes as it may
                (RESOURCE_EXHAUSTED: back off and retry).
        """
        if self.max_calls and self.calls >= self.max_calls:
            raise Refused(
                f"the server is serving its limit of {self.max_calls} model calls at once "
                "(--max-concurrent-rpcs); retry with backoff",
                "concurrency",
            )
        cost = request_bytes * REQUEST_COPIES
        if self.budget_bytes:
            held = self._by_peer.get(peer, 0)
            if self.bytes + cost > self.budget_bytes and self.bytes:
                raise Refused(
                    f"the server's memory budget of {self.budget_bytes} bytes (--memory-budget) "
                    f"is in use ({self.bytes} bytes held); this request would add about "
                    f"{cost}; retry with backoff, or send fewer examples per request",
                    "memory",
                )
            if held + cost > self._peer_bytes and held:
                raise Refused(
                    f"this connection holds {held} bytes of the server's memory budget, "
                    f"the most one connection may ({self._peer_bytes}); read the replies "
                    "of earlier calls, or retry with backoff",
                    "memory",
                )
        self.calls += 1
        return Ticket(self, peer, cost)

    async def refuse_when_stopped(self) -> None:
        """For a call that arrived after :meth:`close`: waits until :meth:`release_held`.

        Raises:
            ShuttingDownError: Always, once released (UNAVAILABLE: retry elsewhere).
        """
        self.last_activity = time.monotonic()
        await self._released.wait()
        raise ShuttingDownError("the server is shutting down; retry (on another replica)")

    def close(self) -> None:
        """Starts draining: calls that arrive from now on are held, then refused.

        gRPC core answers CANCELLED (a status clients do not retry) to the calls it holds
        when its stop begins: those not yet handed to the application, and those that
        reach it before their client has read the GOAWAY. So new calls are held instead
        (their clients, waiting on them, send nothing more) while the admitted ones
        finish; once gRPC's stop has sent the GOAWAY, :meth:`release_held` refuses them
        with UNAVAILABLE, which clients retry on another replica.
        """
        self.closed = True
        if self.calls == 0:
            self._idle.set()

    def release_held(self) -> None:
        """Refuses the calls held since :meth:`close`."""
        self._released.set()

    async def wait_idle(self, timeout: float) -> bool:
        """After :meth:`close`: True once no admitted call is left, False after ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Returns once no call has arrived or ended for ``quiet`` s, or after ``timeout`` s."""
        end = time.monotonic() + timeout
        while (now := time.monotonic()) < end:
            left = self.last_activity + quiet - now
            if left <= 0:
                return
            await asyncio.sleep(min(left, end - now))

    def _add(self, peer: str, cost: int) -> None:
        self.bytes += cost
        self._by_peer[peer] = self._by_peer.get(peer, 0) + cost

    def _remove(self, peer: str, cost: int) -> None:
        self.bytes -= cost
        left = self._by_peer[peer] - cost
        if left:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]


class Ticket:
    """One admitted call's share of an :class:`Admission`; release it exactly once."""

    __slots__ = ("_admission", "_peer", "_cost")

    def __init__(self, admission: Admission, peer: str, cost: int):
        self._admission = admission
        self._peer = peer
        self._cost = cost
        admission._add(peer, cost)

    def charge_reply(self, reply_bytes: int) -> None:
        """Adds an encoded reply of ``reply_bytes``, held until the call ends."""
        cost = reply_bytes * REPLY_COPIES
        self._cost += cost
        self._admission._add(self._peer, cost)

    def release(self) -> None:
        """Gives the call's slot and bytes back."""
        admission = self._admission
        admission.calls -= 1
        admission._remove(self._peer, self._cost)
        self._cost = 0
        if admission.closed:
            # Its client may call again on the reply: that call must be held too.
            admission.last_activity = time.monotonic()
            if admission.calls == 0:
                admission._idle.set()
