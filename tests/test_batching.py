"""The batcher through its public API, around a plain numpy batch function."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from flatscope import batching
from flatscope.batching import Batcher, BatchingConfig
from flatscope.errors import DeadlineExceededError, NotReadyError, ResourceExhaustedError
from flatscope.metrics import Metrics


class Model:
    """A batch function that records its passes and can be held mid-pass."""

    def __init__(self):
        self.passes: list[tuple[np.ndarray, bool]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on: float | None = None

    def __call__(self, inputs: np.ndarray, extras: bool) -> list[np.ndarray]:
        self.entered.set()
        assert self.gate.wait(10), "test never released the pass"
        self.passes.append((inputs.copy(), extras))
        if self.fail_on is not None and self.fail_on in inputs:
            raise ValueError(f"bad example {self.fail_on}")
        outputs = [inputs.sum(axis=1, keepdims=True)]
        if extras:
            outputs.append(inputs * 10)
        return outputs

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def batch_sizes(self) -> list[int]:
        return [len(inputs) for inputs, _ in self.passes]


@pytest.fixture()
def executor():
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def _examples(first: int, count: int) -> np.ndarray:
    """``count`` examples of 2 features whose values identify them."""
    values = np.arange(first, first + count, dtype=np.float32)
    return np.stack([values, values + 0.5], axis=1)


async def _wait_for_pass(model: Model) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_mixed_batch_sizes_come_back_to_their_callers(executor):
    model = Model()
    metrics = Metrics(CollectorRegistry(), process=False)
    config = BatchingConfig(max_batch_size=16, batch_timeout=1.0)
    sizes = [1, 3, 2, 5, 1, 4]

    async def scenario():
        batcher = Batcher(model, config, executor, metrics, model="m")
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(1000, 1)))
        await _wait_for_pass(model)  # the first request found the model idle
        starts = np.cumsum([0, *sizes[:-1]])
        tasks = [
            asyncio.create_task(batcher.submit(_examples(int(start), size)))
            for start, size in zip(starts, sizes, strict=True)
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        await batcher.close()
        return starts, results

    starts, results = run(scenario())
    assert model.batch_sizes() == [1, sum(sizes)]  # the rest shared one pass
    for start, size, rows in zip(starts, sizes, results[1:], strict=True):
        inputs = _examples(int(start), size)
        assert len(rows) == 1
        np.testing.assert_array_equal(rows[0], inputs.sum(axis=1, keepdims=True))
    registry = metrics.registry
    assert registry.get_sample_value("flatscope_batch_size_count", {"model": "m"}) == 2
    assert registry.get_sample_value("flatscope_batch_size_sum", {"model": "m"}) == 17
    assert registry.get_sample_value("flatscope_queue_seconds_count", {"model": "m"}) == 7


def test_an_idle_model_does_not_wait_for_the_batch_to_fill(executor):
    model = Model()
    # A request that found the model idle would wait a minute if the timeout applied.
    config = BatchingConfig(max_batch_size=64, batch_timeout=60.0)

    async def scenario():
        batcher = Batcher(model, config, executor)
        rows = await asyncio.wait_for(batcher.submit(_examples(0, 2)), 10)
        await batcher.close()
        return rows

    np.testing.assert_array_equal(run(scenario())[0], [[0.5], [2.5]])


def test_batches_never_exceed_max_batch_size(executor):
    model = Model()
    config = BatchingConfig(max_batch_size=8, batch_timeout=0.5)

    async def scenario():
        batcher = Batcher(model, config, executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(100, 1)))
        await _wait_for_pass(model)
        tasks = [asyncio.create_task(batcher.submit(_examples(3 * i, 3))) for i in range(10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        await batcher.close()
        return results

    results = run(scenario())
    assert model.batch_sizes()[0] == 1
    assert all(size <= 8 for size in model.batch_sizes())
    assert sum(model.batch_sizes()) == 31
    for i, rows in enumerate(results[1:]):
        np.testing.assert_array_equal(rows[0], _examples(3 * i, 3).sum(axis=1, keepdims=True))


def test_a_full_batch_goes_without_waiting_for_the_timeout(executor):
    model = Model()
    config = BatchingConfig(max_batch_size=4, batch_timeout=60.0)

    async def scenario():
        batcher = Batcher(model, config, executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        full = asyncio.create_task(batcher.submit(_examples(10, 4)))
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, full), 10)
        await batcher.close()

    run(scenario())
    assert model.batch_sizes() == [1, 4]


def test_extras_are_computed_when_any_request_wants_them(executor):
    model = Model()

    async def scenario():
        batcher = Batcher(model, BatchingConfig(batch_timeout=0.5), executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        plain = asyncio.create_task(batcher.submit(_examples(5, 2)))
        inspect = asyncio.create_task(batcher.submit(_examples(7, 1), extras=True))
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, plain, inspect)
        await batcher.close()
        return results

    _, plain, inspect = run(scenario())
    assert [extras for _, extras in model.passes] == [False, True]
    np.testing.assert_array_equal(inspect[1], _examples(7, 1) * 10)
    np.testing.assert_array_equal(plain[0], _examples(5, 2).sum(axis=1, keepdims=True))


def test_deadline_passing_while_queued_drops_the_request_unrun(executor):
    model = Model()
    metrics = Metrics(CollectorRegistry(), process=False)

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor, metrics, model="m")
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        late = asyncio.create_task(
            batcher.submit(_examples(50, 1), deadline=time.monotonic() + 0.05)
        )
        on_time = asyncio.create_task(batcher.submit(_examples(60, 1)))
        await asyncio.sleep(0.2)
        model.gate.set()
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await late
        await asyncio.gather(first, on_time)
        await batcher.close()

    run(scenario())
    seen = np.concatenate([inputs for inputs, _ in model.passes])[:, 0].tolist()
    assert seen == [0, 60]  # example 50 never reached the model
    labels = {"model": "m", "reason": "deadline"}
    assert metrics.registry.get_sample_value("flatscope_requests_dropped_total", labels) == 1


def test_cancelled_requests_never_reach_the_model(executor):
    model = Model()

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        gone = asyncio.create_task(batcher.submit(_examples(50, 2)))
        kept = asyncio.create_task(batcher.submit(_examples(60, 1)))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.gate.set()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        await batcher.close()

    run(scenario())
    seen = np.concatenate([inputs for inputs, _ in model.passes])[:, 0].tolist()
    assert seen == [0, 60]


def test_overflow_is_refused_at_once(executor):
    model = Model()
    config = BatchingConfig(max_batch_size=4, max_enqueued_batches=1)

    async def scenario():
        batcher = Batcher(model, config, executor)
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)  # taken off the queue: the queue is empty again
        queued = asyncio.create_task(batcher.submit(_examples(10, 4)))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhaustedError, match="queue is full"):
            await batcher.submit(_examples(20, 1))
        model.gate.set()
        await asyncio.gather(running, queued)
        # Room again once the queue drained.
        rows = await batcher.submit(_examples(30, 1))
        await batcher.close()
        return rows

    np.testing.assert_array_equal(run(scenario())[0], [[60.5]])


def test_a_failing_pass_reaches_every_waiter_and_the_batcher_goes_on(executor):
    model = Model()
    model.fail_on = 51.0

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        doomed = [asyncio.create_task(batcher.submit(_examples(50 + i, 1))) for i in range(3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await first
        outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        after = await batcher.submit(_examples(70, 1))
        await batcher.close()
        return outcomes, after

    outcomes, after = run(scenario())
    assert all(isinstance(o, ValueError) and "bad example 51" in str(o) for o in outcomes)
    np.testing.assert_array_equal(after[0], [[140.5]])


def test_batching_off_runs_each_request_alone(executor):
    model = Model()

    async def scenario():
        batcher = Batcher(model, BatchingConfig(enabled=False), executor)
        model.hold()
        first = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        tasks = [asyncio.create_task(batcher.submit(_examples(10 * i, 2))) for i in range(4)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *tasks)
        await batcher.close()

    run(scenario())
    assert model.batch_sizes() == [1, 2, 2, 2, 2]


def test_a_cancelled_request_frees_its_room_in_the_queue_at_once(executor):
    model = Model()
    metrics = Metrics(CollectorRegistry(), process=False)
    config = BatchingConfig(max_batch_size=4, max_enqueued_batches=1)

    async def scenario():
        batcher = Batcher(model, config, executor, metrics, model="m")
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        gone = asyncio.create_task(batcher.submit(_examples(10, 4)))  # fills the queue
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        # Room again while the model is still busy: the cancelled request left the queue.
        kept = asyncio.create_task(batcher.submit(_examples(20, 4)))
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.gather(running, kept)
        await batcher.close()

    run(scenario())
    seen = np.concatenate([inputs for inputs, _ in model.passes])[:, 0].tolist()
    assert seen == [0, 20, 21, 22, 23]
    labels = {"model": "m", "reason": "cancelled"}
    assert metrics.registry.get_sample_value("flatscope_requests_dropped_total", labels) == 1
    labels["reason"] = "queue_full"
    assert metrics.registry.get_sample_value("flatscope_requests_dropped_total", labels) is None


def test_a_request_cancelled_at_its_deadline_counts_as_a_deadline_drop(executor):
    # gRPC cancels the handler of a call whose deadline passed, before the batcher looks.
    model = Model()
    metrics = Metrics(CollectorRegistry(), process=False)

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor, metrics, model="m")
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        late = asyncio.create_task(batcher.submit(_examples(5, 1), deadline=time.monotonic()))
        gone = asyncio.create_task(batcher.submit(_examples(6, 1), deadline=time.monotonic() + 60))
        await asyncio.sleep(0.01)
        late.cancel()
        gone.cancel()
        model.gate.set()
        await asyncio.gather(running, late, gone, return_exceptions=True)
        await batcher.close()

    run(scenario())
    assert model.batch_sizes() == [1]
    counts = {
        reason: metrics.registry.get_sample_value(
            "flatscope_requests_dropped_total", {"model": "m", "reason": reason}
        )
        for reason in ("deadline", "cancelled")
    }
    assert counts == {"deadline": 1, "cancelled": 1}


def test_a_request_cancelled_during_its_pass_is_no_drop(executor):
    model = Model()
    metrics = Metrics(CollectorRegistry(), process=False)

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor, metrics, model="m")
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        running.cancel()
        model.gate.set()
        await asyncio.gather(running, return_exceptions=True)
        rows = await batcher.submit(_examples(1, 1))
        await batcher.close()
        return rows

    np.testing.assert_array_equal(run(scenario())[0], [[2.5]])
    labels = {"model": "m", "reason": "cancelled"}
    assert metrics.registry.get_sample_value("flatscope_requests_dropped_total", labels) is None


def test_in_flight_counts_queued_and_running_requests_and_drops_none(executor):
    model = Model()

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor)
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        queued = [asyncio.create_task(batcher.submit(_examples(10 + i, 2))) for i in range(3)]
        cancelled = asyncio.create_task(batcher.submit(_examples(90, 1)))
        await asyncio.sleep(0.01)
        assert batcher.in_flight == 5
        cancelled.cancel()
        await asyncio.sleep(0)
        assert batcher.in_flight == 4
        model.gate.set()
        await asyncio.gather(running, *queued)
        assert batcher.in_flight == 0
        model.fail_on = 7.0
        with pytest.raises(ValueError):
            await batcher.submit(_examples(7, 1))
        assert batcher.in_flight == 0
        await batcher.close()

    run(scenario())


def test_close_fails_queued_requests_answers_the_running_pass_and_refuses_new_ones(executor):
    model = Model()

    async def scenario():
        batcher = Batcher(model, BatchingConfig(), executor)
        model.hold()
        running = asyncio.create_task(batcher.submit(_examples(0, 1)))
        await _wait_for_pass(model)
        queued = asyncio.create_task(batcher.submit(_examples(5, 1)))
        await asyncio.sleep(0.01)
        await batcher.close()
        model.gate.set()
        (sums,) = await running
        assert sums.tolist() == [[0.5]]
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(NotReadyError, match="shutting down"):
            await batcher.submit(_examples(9, 1))

    run(scenario())
    assert model.batch_sizes() == [1]


class Steps(Model):
    """A batch function whose passes wait, one by one, for the test to let them end."""

    def __init__(self):
        super().__init__()
        self._permits = threading.Semaphore(0)
        self._entered: queue.Queue[int] = queue.Queue()

    def __call__(self, inputs: np.ndarray, extras: bool) -> list[np.ndarray]:
        self._entered.put(len(inputs))
        assert self._permits.acquire(timeout=10), "test never ended the pass"
        return super().__call__(inputs, extras)

    async def next_pass(self) -> int:
        """Waits for the next pass to start; returns its batch size."""
        return await asyncio.get_running_loop().run_in_executor(None, self._entered.get, True, 10)

    def end_pass(self) -> None:
        self._permits.release()


async def _pass_of_three_then_one(steps: Steps, batcher: Batcher, held: float):
    """A pass of 1 (found the model idle), then one of 3; a request queued during the 3.

    Returns the request queued during the pass of 3, once that pass has answered; the
    pass of 3 is held ``held`` seconds.
    """
    first = asyncio.create_task(batcher.submit(_examples(0, 1)))
    assert await steps.next_pass() == 1
    three = [asyncio.create_task(batcher.submit(_examples(10 * i, 1))) for i in (1, 2, 3)]
    await asyncio.sleep(0)  # queued
    steps.end_pass()
    await first
    assert await steps.next_pass() == 3  # more than the last pass took: no waiting
    one = asyncio.create_task(batcher.submit(_examples(40, 1)))
    await asyncio.sleep(held)
    steps.end_pass()
    await asyncio.gather(*three)
    return one


def test_adaptive_batches_wait_for_as_many_as_the_last_pass_took(executor, monkeypatch):
    monkeypatch.setattr(batching, "ADAPTIVE_WAIT_LIMIT", 60.0)
    steps = Steps()

    async def scenario():
        batcher = Batcher(steps, BatchingConfig(max_batch_size=16), executor)
        one = await _pass_of_three_then_one(steps, batcher, held=0.05)
        await asyncio.sleep(0.01)
        assert not one.done()  # waits for two more: the last pass took three
        assert steps.batch_sizes() == [1, 3]
        two = [asyncio.create_task(batcher.submit(_examples(50 + i, 1))) for i in (0, 1)]
        assert await steps.next_pass() == 3  # at once, without the rest of the wait
        steps.end_pass()
        rows = await asyncio.gather(one, *two)
        await batcher.close()
        return rows

    rows = run(scenario())
    assert steps.batch_sizes() == [1, 3, 3]
    np.testing.assert_array_equal(rows[0][0], [[80.5]])


def test_adaptive_batches_wait_no_longer_than_the_limit(executor):
    steps = Steps()

    async def scenario():
        batcher = Batcher(steps, BatchingConfig(max_batch_size=16), executor)
        one = await _pass_of_three_then_one(steps, batcher, held=0.05)
        assert await steps.next_pass() == 1  # alone, once ADAPTIVE_WAIT_LIMIT (2 ms) passed
        steps.end_pass()
        await one
        await batcher.close()

    run(scenario())
    assert steps.batch_sizes() == [1, 3, 1]


def test_a_zero_timeout_never_waits_while_the_model_is_free(executor, monkeypatch):
    monkeypatch.setattr(batching, "ADAPTIVE_WAIT_LIMIT", 60.0)  # not used by a fixed timeout
    steps = Steps()

    async def scenario():
        batcher = Batcher(steps, BatchingConfig(max_batch_size=16, batch_timeout=0), executor)
        one = await _pass_of_three_then_one(steps, batcher, held=0.05)
        assert await steps.next_pass() == 1
        steps.end_pass()
        await one
        await batcher.close()

    run(scenario())
    assert steps.batch_sizes() == [1, 3, 1]
