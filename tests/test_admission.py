"""Admission by count and by bytes, the per-connection share, and draining."""

from __future__ import annotations

import asyncio

import pytest

from flatscope.admission import (
    PEER_SHARE,
    REPLY_COPIES,
    REQUEST_COPIES,
    ROOM_PATIENCE,
    SMALL_REPLY,
    Admission,
    Refused,
)
from flatscope.errors import ShuttingDownError


def test_calls_beyond_the_limit_are_refused_until_one_ends():
    admission = Admission(max_calls=2, budget_bytes=0)
    first = admission.admit("a", 10)
    admission.admit("b", 10)
    with pytest.raises(Refused) as refused:
        admission.admit("c", 10)
    assert refused.value.reason == "concurrency"
    assert "--max-concurrent-rpcs" in str(refused.value)
    first.release()
    admission.admit("c", 10)
    assert admission.calls == 2


def test_requests_beyond_their_half_of_the_budget_are_refused_and_come_back_on_release():
    budget = 2 * 1000 * REQUEST_COPIES  # half of it for requests: 1000 wire bytes
    admission = Admission(max_calls=0, budget_bytes=budget)
    tickets = [admission.admit(f"peer{i}", 200) for i in range(5)]  # 5 peers, a share each
    assert admission.bytes == budget // 2
    with pytest.raises(Refused) as refused:
        admission.admit("peer9", 1)
    assert refused.value.reason == "memory"
    assert "--memory-budget" in str(refused.value)
    for ticket in tickets:
        ticket.release()
    assert (admission.bytes, admission.calls) == (0, 0)


def test_one_request_above_the_budget_passes_alone_so_that_the_budget_cannot_lock_out():
    admission = Admission(max_calls=0, budget_bytes=100)
    ticket = admission.admit("a", 10_000)
    with pytest.raises(Refused):
        admission.admit("b", 1)
    ticket.release()
    admission.admit("b", 1)


def test_unread_replies_fill_only_their_half_and_small_replies_always_go():
    budget = 8 * 2**20
    admission = Admission(max_calls=0, budget_bytes=budget)
    big = budget // 2 // REPLY_COPIES  # one reply fills the replies' half
    unread = admission.admit("a", 1000)
    unread.charge_reply(big)  # its client never reads it
    assert admission.reply_bytes == budget // 2
    late = admission.admit("b", 1000)  # new calls are still admitted ...
    with pytest.raises(Refused) as refused:
        late.charge_reply(SMALL_REPLY + 1)  # ... but their large replies are dropped ...
    assert "waiting for their clients to read them" in str(refused.value)
    late.release()
    small = admission.admit("c", 1000)
    small.charge_reply(SMALL_REPLY)  # ... and small ones (a prediction) still go
    small.release()
    unread.release()
    assert (admission.bytes, admission.calls) == (0, 0)


def test_a_reply_that_cannot_fit_is_refused_when_reserved_before_any_work():
    budget = 8 * 2**20
    admission = Admission(max_calls=0, budget_bytes=budget)
    room = budget // 2 // REPLY_COPIES // 10  # a tenth of the replies' half
    tickets = [admission.admit(f"peer{i}", 1000) for i in range(3)]
    tickets[0].reserve_reply(4 * room)  # the core expects large replies: room held now
    tickets[1].reserve_reply(4 * room)
    with pytest.raises(Refused) as refused:
        tickets[2].reserve_reply(4 * room)  # would not fit beside them: refused unrun
    assert refused.value.reason == "memory"
    assert "would not fit" in str(refused.value)
    tickets[2].reserve_reply(SMALL_REPLY)  # a prediction's room is never refused
    tickets[0].charge_reply(4 * room + 10)  # the real reply, a little larger: no new check
    assert admission.reply_bytes == (8 * room + 10 + SMALL_REPLY) * REPLY_COPIES
    tickets[1].charge_reply(100)  # smaller than reserved: the difference comes back
    assert admission.reply_bytes == (4 * room + 10 + 100 + SMALL_REPLY) * REPLY_COPIES
    for ticket in tickets:
        ticket.release()
    assert (admission.bytes, admission.calls) == (0, 0)


def test_one_connection_holds_at_most_its_share_replies_included():
    budget = 4_000_000
    share = int(budget * PEER_SHARE)
    admission = Admission(max_calls=0, budget_bytes=budget)
    ticket = admission.admit("greedy", 1000)
    ticket.charge_reply(share // REPLY_COPIES)  # a reply its client does not read
    with pytest.raises(Refused) as refused:
        admission.admit("greedy", 1000)
    assert "this connection holds" in str(refused.value)
    admission.admit("other", 1000)  # everyone else is still served
    ticket.release()
    admission.admit("greedy", 1000)


def test_a_call_refused_for_its_connections_share_waits_for_an_earlier_call_to_end():
    """A client that sends its next call on reading a reply can beat the server's notice
    that the reply went out (which releases the earlier call's share): the new call waits."""

    async def scenario() -> float:
        admission = Admission(max_calls=0, budget_bytes=4_000_000)
        earlier = admission.admit("reader", 1000)
        earlier.charge_reply(admission.budget_bytes // 2 // REPLY_COPIES)  # over its share
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(ROOM_PATIENCE / 4, earlier.release)
        ticket = await admission.admit_when_room("reader", 1000)
        waited = loop.time() - start
        ticket.release()
        assert (admission.bytes, admission.calls) == (0, 0)
        return waited

    assert ROOM_PATIENCE / 4 <= asyncio.run(scenario()) < ROOM_PATIENCE


def test_other_refusals_stand_at_once_and_a_share_refusal_after_the_patience():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        # The concurrency limit and the budget's halves: refused at once, as documented.
        busy = Admission(max_calls=1, budget_bytes=0)
        busy.admit("a", 10)
        start = loop.time()
        with pytest.raises(Refused) as refused:
            await busy.admit_when_room("b", 10)
        assert refused.value.reason == "concurrency"
        assert loop.time() - start < ROOM_PATIENCE / 2
        # The connection's share, with no call of it ending: refused after the patience,
        # and a second call of the same connection meanwhile at once.
        shared = Admission(max_calls=0, budget_bytes=4_000_000)
        greedy = shared.admit("greedy", 1000)
        greedy.charge_reply(shared.budget_bytes // 2 // REPLY_COPIES)
        start = loop.time()
        first = asyncio.create_task(shared.admit_when_room("greedy", 1000))
        await asyncio.sleep(0)
        with pytest.raises(Refused):
            await shared.admit_when_room("greedy", 1000)
        assert loop.time() - start < ROOM_PATIENCE / 2
        with pytest.raises(Refused) as refused:
            await first
        assert "this connection holds" in str(refused.value)
        assert ROOM_PATIENCE <= loop.time() - start < 10 * ROOM_PATIENCE
        shared.admit("other", 1000)  # everyone else is still served

    asyncio.run(scenario())


def test_draining_holds_new_calls_until_released_then_refuses_them_unavailable():
    async def scenario() -> None:
        admission = Admission(max_calls=0, budget_bytes=0)
        running = admission.admit("a", 10)
        admission.close()
        held = asyncio.create_task(admission.refuse_when_stopped())
        assert not await admission.wait_idle(0.05)  # a call is still running
        running.release()
        assert await admission.wait_idle(1.0)
        await asyncio.sleep(0.05)
        assert not held.done()  # held until the server has stopped accepting
        admission.release_held()
        with pytest.raises(ShuttingDownError):
            await held

    asyncio.run(scenario())


def test_wait_quiet_returns_once_nothing_arrived_for_the_quiet_time():
    async def scenario() -> float:
        admission = Admission(max_calls=0, budget_bytes=0)
        ticket = admission.admit("a", 1)
        admission.close()
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(0.1, ticket.release)  # the last activity, 0.1 s in
        assert await admission.wait_idle(5.0)
        await admission.wait_quiet(0.2, timeout=5.0)
        return loop.time() - start

    assert 0.28 <= asyncio.run(scenario()) < 2.0


def test_a_call_cancelled_while_it_waits_for_room_is_not_admitted():
    """Even when its cancellation comes in the same step as the release that makes room."""

    async def scenario() -> Admission:
        admission = Admission(max_calls=0, budget_bytes=4_000_000)
        earlier = admission.admit("p", 1000)
        earlier.charge_reply(admission.budget_bytes // 2 // REPLY_COPIES)
        waiting = asyncio.create_task(admission.admit_when_room("p", 1000))
        await asyncio.sleep(0.01)
        earlier.release()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return admission

    admission = asyncio.run(scenario())
    assert (admission.calls, admission.bytes) == (0, 0)
