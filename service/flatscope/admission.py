"""Admission of model calls: how many the server holds at once, and how many bytes.

Transport-free: the gRPC layer asks :meth:`Admission.admit` once a call's request
message has fully arrived (so a client that stalls before sending it holds no slot) and
makes the ticket the running call's (task's) current one; the core, once it knows the batch and
what is asked of it, reserves room for the reply (:func:`expect_reply`), so that a call
whose reply could not be held is refused before its forward pass runs; the transport
charges the reply's real size when it is encoded, and releases the ticket when the call
has ended on the wire (its reply sent, or the call cancelled).

Memory is an estimate, not a reading, in two halves of the budget. Requests being
served cost their wire size times :data:`REQUEST_COPIES` (the wire bytes, the parsed
message, the decoded batch) from admission until their reply is encoded. Replies cost
their size times :data:`REPLY_COPIES` (the message and its bytes in the transport) until
sent. Replies that clients do not read can fill only the replies' half: calls are still
admitted, and replies up to :data:`SMALL_REPLY` bytes (a prediction) always go, so health
and small calls keep working while large replies are refused. One connection may hold at
most :data:`PEER_SHARE` of the budget, so one client cannot fill a half alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time

from flatscope.errors import ResourceExhaustedError, ShuttingDownError

REQUEST_COPIES = 3
REPLY_COPIES = 2
PEER_SHARE = 0.25
SMALL_REPLY = 64 * 1024
# A call refused because its connection holds its share of the budget waits this long
# (seconds) for that share to come back before its refusal stands: a client that sends
# its next call on reading a reply can be faster than the server's notice that the reply
# went out, which releases the earlier call's share. One call per connection waits, and
# the waiting requests' bytes (in memory, not in the budget) stay under a share.
ROOM_PATIENCE = 0.1


_current: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "flatscope_admission_ticket", default=None
)


def expect_reply(reply_bytes: int) -> None:
    """Reserves room for the running call's reply of about ``reply_bytes`` bytes.

    Does nothing for a call that admission does not hold (in-process use, probes).

    Raises:
        Refused: The reply would not fit in the replies' half of the budget, or in its
            connection's share, now (RESOURCE_EXHAUSTED, before any work is done).
    """
    ticket = _current.get()
    if ticket is not None:
        ticket.reserve_reply(reply_bytes)


class Refused(ResourceExhaustedError):
    """A call refused by admission; ``reason`` labels ``flatscope_requests_dropped_total``."""

    def __init__(self, message: str, reason: str, peer: bool = False):
        super().__init__(message)
        self.reason = reason
        self.peer = peer  # the connection's share is what is full


DRAINING = "the server is shutting down; retry (on another replica)"


class Draining(ShuttingDownError):
    """A call refused because the server is shutting down (UNAVAILABLE: retry elsewhere)."""

    reason = "draining"


class Admission:
    """Bounds the model calls held at once, by count and by estimated bytes.

    Args:
        max_calls: Most model calls admitted at once; 0 for no limit.
        budget_bytes: Most estimated bytes held by admitted calls; 0 for no limit.
    """

    def __init__(self, max_calls: int, budget_bytes: int):
        self.max_calls = max_calls
        self.budget_bytes = budget_bytes
        self._request_budget = budget_bytes // 2
        self._reply_budget = budget_bytes - self._request_budget
        self._peer_bytes = int(budget_bytes * PEER_SHARE)
        self.calls = 0
        self.receiving = 0  # calls whose request message is still arriving
        self.request_bytes = 0
        self.reply_bytes = 0
        self._by_peer: dict[str, int] = {}
        # Draining (see close()).
        self.closed = False
        self.last_activity = 0.0
        self._idle = asyncio.Event()
        self._released = asyncio.Event()
        # Calls waiting for their connection's share (admit_when_room), by connection, and
        # their request bytes; woken by the next release.
        self._waiting: dict[str, int] = {}
        self._room: asyncio.Event | None = None

    def admit(self, peer: str, request_bytes: int) -> Ticket:
        """Admits a call whose request message is ``request_bytes`` long.

        The ticket becomes the running call's (its task's) current one, on which
        :func:`expect_reply` reserves the reply's room.

        Raises:
            Draining: The server is shutting down (see :meth:`check_open`).
            Refused: The server holds as many calls or bytes as it may
                (RESOURCE_EXHAUSTED: back off and retry).
        """
        self.check_open()
        if self.max_calls and self.calls >= self.max_calls:
            raise Refused(
                f"the server is serving its limit of {self.max_calls} model calls at once "
                "(--max-concurrent-rpcs); retry with backoff",
                "concurrency",
            )
        cost = request_bytes * REQUEST_COPIES
        if self.budget_bytes:
            held = self.request_bytes
            if held + cost > self._request_budget and held:
                raise Refused(
                    f"requests being served hold {held} bytes of the {self._request_budget} "
                    f"that --memory-budget ({self.budget_bytes}) gives them; this one would add "
                    f"about {cost}; retry with backoff, or send fewer examples per request",
                    "memory",
                )
            self._check_peer(peer, cost)
        self.calls += 1
        ticket = Ticket(self, peer, cost)
        _current.set(ticket)
        return ticket

    async def admit_when_room(self, peer: str, request_bytes: int) -> Ticket:
        """:meth:`admit`; a call refused for its connection's share tries again as calls
        end, for up to :data:`ROOM_PATIENCE` seconds (see there).

        Raises:
            Draining: The server is shutting down.
            Refused: Over a limit; for the connection's share, still after waiting, or at
                once when another call of the connection waits already.
        """
        try:
            return self.admit(peer, request_bytes)
        except Refused as refused:
            if not refused.peer or peer in self._waiting:
                raise
            if sum(self._waiting.values()) + request_bytes > self._peer_bytes:
                raise
        loop = asyncio.get_running_loop()
        end = loop.time() + ROOM_PATIENCE
        self._waiting[peer] = request_bytes
        try:
            while True:
                if self._room is None:
                    self._room = asyncio.Event()
                # Not wait_for: on 3.11 it can return the event's result to a task
                # cancelled in the same step, and a cancelled call would be admitted.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(end - loop.time()):
                        await self._room.wait()
                try:
                    return self.admit(peer, request_bytes)
                except Refused as refused:  # after the patience, the refusal stands
                    if not refused.peer or loop.time() >= end:
                        raise
        finally:
            del self._waiting[peer]

    def check_open(self) -> None:
        """Raises Draining once :meth:`close` has been called (UNAVAILABLE: retry elsewhere)."""
        if self.closed:
            raise Draining(DRAINING)

    @property
    def bytes(self) -> int:
        """The estimated bytes held by admitted calls, requests and replies."""
        return self.request_bytes + self.reply_bytes

    def _check_peer(self, peer: str, cost: int, own: int = 0) -> None:
        """Refuses ``cost`` more bytes for ``peer`` beyond its share, unless the call
        adding them (holding ``own`` of the peer's bytes already) is the peer's only one."""
        held = self._by_peer.get(peer, 0)
        if held + cost > self._peer_bytes and held > own:
            raise Refused(
                f"this connection holds {held} bytes of the server's memory budget, "
                f"the most one connection may ({self._peer_bytes}); read the replies "
                "of earlier calls, or retry with backoff",
                "memory",
                peer=True,
            )

    def received(self) -> None:
        """Ends a call's receiving (``receiving`` was counted up when it began)."""
        self.receiving -= 1
        if self.closed:
            self._activity()

    def _activity(self) -> None:
        self.last_activity = time.monotonic()
        if self.calls == 0 and self.receiving == 0:
            self._idle.set()

    async def refuse_when_stopped(self) -> None:
        """For a call that arrived after :meth:`close`: waits until :meth:`release_held`.

        Raises:
            Draining: Always, once released (UNAVAILABLE: retry elsewhere).
        """
        self.last_activity = time.monotonic()
        await self._released.wait()
        raise Draining(DRAINING)

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
        self._activity()

    def release_held(self) -> None:
        """Refuses the calls held since :meth:`close`."""
        self._released.set()

    async def wait_idle(self, timeout: float) -> bool:
        """After :meth:`close`: True once no call is admitted or arriving, False after ``timeout``.

        A call whose message is still arriving when gRPC's stop begins would be cancelled.
        """
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

    def _hold(self, peer: str, cost: int) -> None:
        if cost:
            self._by_peer[peer] = self._by_peer.get(peer, 0) + cost

    def _drop(self, peer: str, cost: int) -> None:
        left = self._by_peer[peer] - cost
        if left:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]


class Ticket:
    """One admitted call's share of an :class:`Admission`; release it exactly once."""

    __slots__ = ("_admission", "_peer", "_request", "_reply")

    def __init__(self, admission: Admission, peer: str, cost: int):
        self._admission = admission
        self._peer = peer
        self._request = cost
        self._reply = 0
        admission.request_bytes += cost
        admission._hold(peer, cost)

    def reserve_reply(self, reply_bytes: int) -> None:
        """Holds room for a reply of about ``reply_bytes`` from now until the call ends.

        Raises:
            Refused: The reply is larger than :data:`SMALL_REPLY` and does not fit in the
                replies' half of the budget, or in its connection's share, now.
        """
        self._take_reply(reply_bytes, "this call's reply of about {} bytes would not fit")

    def charge_reply(self, reply_bytes: int) -> None:
        """Trades the request's bytes for an encoded reply of ``reply_bytes``, held until sent.

        Raises:
            Refused: The reply is larger than :data:`SMALL_REPLY` and than what was
                reserved for it, and does not fit in the replies' half of the budget, or
                in its connection's share, now.
        """
        admission = self._admission
        admission.request_bytes -= self._request
        if self._request:
            admission._drop(self._peer, self._request)
        self._request = 0
        self._take_reply(reply_bytes, "this reply of {} bytes was dropped")

    def _take_reply(self, reply_bytes: int, what: str) -> None:
        admission = self._admission
        cost = reply_bytes * REPLY_COPIES
        extra = cost - self._reply  # beyond what this call holds for its reply already
        if admission.budget_bytes and reply_bytes > SMALL_REPLY and extra > 0:
            held = admission.reply_bytes - self._reply
            if held + cost > admission._reply_budget and held:
                raise Refused(
                    f"replies being made or waiting for their clients to read them hold {held} "
                    f"bytes of the {admission._reply_budget} that --memory-budget "
                    f"({admission.budget_bytes}) gives them; {what.format(reply_bytes)}; retry "
                    "with backoff, or ask for less (fewer examples, no include_source)",
                    "memory",
                )
            admission._check_peer(self._peer, extra, own=self._request + self._reply)
        admission.reply_bytes += cost - self._reply
        if extra > 0:
            admission._hold(self._peer, extra)
        elif extra < 0:
            admission._drop(self._peer, -extra)
        self._reply = cost

    def release(self) -> None:
        """Gives the call's slot and bytes back."""
        admission = self._admission
        admission.calls -= 1
        admission.request_bytes -= self._request
        admission.reply_bytes -= self._reply
        held = self._request + self._reply
        if held:
            admission._drop(self._peer, held)
        self._request = self._reply = 0
        room = admission._room
        if room is not None:  # calls wait for room: each tries again
            admission._room = None
            room.set()
        if admission.closed:
            # Its client may call again on the reply: that call must be held too.
            admission._activity()
