"""Dynamic batching: requests from every RPC share forward passes.

Requests queue; whenever the model is free, the batcher packs them into a batch and
runs one forward pass off the event loop (one pass at a time), then hands every
request its own rows. A request that reaches an idle model runs at once; requests that
arrive while a pass runs are packed together, up to ``max_batch_size`` examples.

When the model frees with fewer requests queued than its last pass took, the default
(adaptive) policy waits for that many, for no longer than :data:`ADAPTIVE_WAIT_LIMIT`
after the model freed: under a steady load the requests answered by one pass come back
for the next, and one pass for all of them costs less CPU than one per fragment (CPU
the event loop feeding them needs), while whatever is queued runs at once when it is as
much as the last pass took. A load that drops costs one wait: the next one is for no
more than the smaller pass that followed. This needs no tuning; an
explicit ``batch_timeout`` instead makes requests that arrived while the model was busy
wait until the oldest has waited that long (TF Serving's ``batch_timeout_micros``), 0
running whatever is queued whenever the model frees.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from flatscope.errors import DeadlineExceededError, NotReadyError, ResourceExhaustedError
from flatscope.metrics import Metrics

# run(inputs, extras) -> arrays whose first axis is the batch: with extras False only
# the predictions, with extras True also the Flatten tensors.
RunBatch = Callable[[np.ndarray, bool], Sequence[np.ndarray]]

# The adaptive policy's bound on how long a free model waits for a batch to gather.
ADAPTIVE_WAIT_LIMIT = 0.002

# gRPC keeps deadlines to about a millisecond and may cancel a call a little before the
# deadline the servicer read from it: a cancellation this close to it is the deadline.
DEADLINE_SLACK = 0.01


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """The batcher's knobs (names follow TF Serving's).

    Attributes:
        enabled: Pack several requests into one pass; off runs each request alone.
        max_batch_size: Most examples in one forward pass.
        batch_timeout: Longest a request waits, in seconds, for its batch to fill
            while the model is busy; a request that finds the model idle never waits.
            None (the default) for the adaptive policy (see the module's docstring).
        max_enqueued_batches: Waiting work is bounded to this many full batches;
            past it, requests fail at once with RESOURCE_EXHAUSTED.
    """

    enabled: bool = True
    max_batch_size: int = 64
    batch_timeout: float | None = None
    max_enqueued_batches: int = 16

    @property
    def longest_wait(self) -> float:
        """The longest a request waits for its batch to fill, in seconds."""
        return ADAPTIVE_WAIT_LIMIT if self.batch_timeout is None else self.batch_timeout


@dataclasses.dataclass
class BatchStatistics:
    """What a Batcher has done since it started (KServe's ModelStatistics reports it).

    Durations are in seconds, summed over requests; a request in a shared pass is
    charged the whole pass, as Triton charges it.

    Attributes:
        success_count: Requests answered.
        success_seconds: Their time from submit to answer.
        fail_count: Requests that failed (queue full, deadline, the pass raised).
        fail_seconds: Their time from submit to failure.
        queue_seconds: Time answered requests waited for their pass to start.
        compute_seconds: Time of the passes that answered them.
        inference_count: Examples run through the model.
        execution_count: Forward passes.
        last_inference_ms: When the last request was answered, in ms since the epoch.
        passes: Batch size -> (passes, their total seconds).
    """

    success_count: int = 0
    success_seconds: float = 0.0
    fail_count: int = 0
    fail_seconds: float = 0.0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    passes: dict[int, tuple[int, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class _Pending:
    inputs: np.ndarray
    extras: bool
    future: asyncio.Future
    enqueued: float
    deadline: float | None
    found_idle: bool
    taken: bool = False  # into a batch: its pass has run or is running
    started: float = 0.0  # when its pass started
    compute: float = 0.0  # how long its pass took


class Batcher:
    """Queues requests for shared forward passes.

    Args:
        run: The blocking batch call; it runs on ``executor``.
        config: Batching knobs.
        executor: Where passes run (one at a time).
        metrics: Where queue time, batch size, pass time and drops go; None for none.
        model: The ``model`` label of those metrics.
    """

    def __init__(
        self,
        run: RunBatch,
        config: BatchingConfig,
        executor: concurrent.futures.Executor,
        metrics: Metrics | None = None,
        model: str = "",
    ):
        self._run = run
        self._config = config
        self._executor = executor
        self._metrics = metrics
        self._model = model
        if metrics is not None:  # children looked up once, not per batch
            self._queue_seconds = metrics.queue_seconds.labels(model)
            self._batch_size = metrics.batch_size.labels(model)
            self._inference_seconds = metrics.inference_seconds.labels(model)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_examples = 0
        self._in_flight = 0
        self._limit = config.max_enqueued_batches * config.max_batch_size
        self._busy = False  # a pass is running
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None  # wakes a waiting batch at its timeout
        # The adaptive policy's memory of the last pass: its examples, and when it ended.
        self._last_batch = 0
        self._freed = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = BatchStatistics()

    def statistics(self) -> BatchStatistics:
        """A copy of the counters (see :class:`BatchStatistics`)."""
        return dataclasses.replace(self._stats, passes=dict(self._stats.passes))

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered: queued, or in a running pass."""
        return self._in_flight

    async def submit(
        self, inputs: np.ndarray, extras: bool = False, deadline: float | None = None
    ) -> list[np.ndarray]:
        """Queues a batch of examples and returns its rows of every result array.

        Args:
            inputs: (n, *example_shape), n <= max_batch_size.
            extras: Also compute the Flatten tensors.
            deadline: ``time.monotonic()`` after which the request is dropped unrun.

        Raises:
            ResourceExhaustedError: The queue is full.
            DeadlineExceededError: The deadline passed while the request waited.
            NotReadyError: The batcher was closed (the server is shutting down).
            Exception: Whatever the forward pass raised.
        """
        count = len(inputs)
        if self._queued_examples + count > self._limit:
            self._count_drop("queue_full")
            raise ResourceExhaustedError(
                f"the model's queue is full ({self._queued_examples} examples waiting, "
                f"limit {self._limit}); retry with backoff"
            )
        if self._closed:
            raise NotReadyError("the server is shutting down; retry on another replica")
        loop = self._loop = asyncio.get_running_loop()
        pending = _Pending(
            inputs=inputs,
            extras=extras,
            future=loop.create_future(),
            enqueued=time.monotonic(),
            deadline=deadline,
            found_idle=not self._busy and not self._queue,
        )
        self._queue.append(pending)
        self._queued_examples += count
        self._in_flight += 1
        self._schedule()
        stats = self._stats
        try:
            rows = await pending.future
        except asyncio.CancelledError:
            dropped = not pending.future.done() or pending.future.cancelled()
            if dropped and not pending.taken:
                self._unqueue(pending)
                # gRPC cancels a call whose deadline passed: that is a deadline drop.
                late = (
                    pending.deadline is not None
                    and time.monotonic() >= pending.deadline - DEADLINE_SLACK
                )
                self._count_drop("deadline" if late else "cancelled")
            raise
        except Exception:
            stats.fail_count += 1
            stats.fail_seconds += time.monotonic() - pending.enqueued
            raise
        finally:
            self._in_flight -= 1
        stats.success_count += 1
        stats.success_seconds += time.monotonic() - pending.enqueued
        stats.queue_seconds += pending.started - pending.enqueued
        stats.compute_seconds += pending.compute
        stats.last_inference_ms = time.time_ns() // 1_000_000  # a time of day, not a duration
        return rows

    def _unqueue(self, pending: _Pending) -> None:
        """Frees a waiting request's room in the queue at once, not when its turn comes."""
        try:
            self._queue.remove(pending)  # O(queue), which is bounded
        except ValueError:  # already taken into a batch
            return
        self._queued_examples -= len(pending.inputs)

    async def close(self) -> None:
        """Stops batching; requests still queued fail (a running pass still answers)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.cancel()
        self._queued_examples = 0

    def _schedule(self) -> None:
        """Starts a pass if the model is free and the queue's head may go; else arms a timer.

        Runs on the event loop after every change (a request queued, a pass finished, a
        timeout): no task waits on events, so a batch costs one executor hand-off and
        one wake-up of the loop.
        """
        if self._busy or self._closed:
            return
        while self._queue:
            wait = self._fill_time_left()
            if wait > 0:
                if self._timer is None:
                    assert self._loop is not None  # set by submit
                    self._timer = self._loop.call_later(wait, self._on_timer)
                return
            batch = self._take()
            if batch:
                self._start(batch)
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _start(self, batch: list[_Pending]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

        loop = self._loop
        assert loop is not None  # set by submit
        self._busy = True
        self._last_batch = sum(len(pending.inputs) for pending in batch)
        try:
            running = self._executor.submit(self._run_batch, batch)
        except RuntimeError as exc:  # the executor was shut down
            self._finish(batch, exc)
            return

        def done(future: concurrent.futures.Future) -> None:  # on the executor's thread
            if future.cancelled():  # the executor was shut down with the pass still queued
                outcome: list[list[np.ndarray]] | BaseException | None = None
            else:
                outcome = future.exception() or future.result()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._finish, batch, outcome)

        running.add_done_callback(done)

    def _finish(
        self, batch: list[_Pending], outcome: list[list[np.ndarray]] | BaseException | None
    ) -> None:
        """Back on the loop: every waiter gets its rows, the pass's error, or (None) cancelled."""
        self._busy = False
        self._freed = time.monotonic()
        if outcome is None:
            for pending in batch:
                pending.future.cancel()
        elif isinstance(outcome, BaseException):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(outcome)
        else:
            for pending, rows in zip(batch, outcome, strict=True):
                if not pending.future.done():
                    pending.future.set_result(rows)
        self._schedule()

    def _fill_time_left(self) -> float:
        """Seconds the head of the queue may still wait for its batch to fill."""
        config = self._config
        head = self._queue[0]
        if not config.enabled or head.found_idle:
            return 0.0
        if self._queued_examples >= config.max_batch_size:
            return 0.0
        timeout = config.batch_timeout
        if timeout is None:  # adaptive: see the module's docstring
            if self._queued_examples >= self._last_batch:
                return 0.0
            return self._freed + ADAPTIVE_WAIT_LIMIT - time.monotonic()
        if timeout <= 0:
            return 0.0
        return head.enqueued + timeout - time.monotonic()

    def _take(self) -> list[_Pending]:
        """Pops the next batch off the queue, skipping requests nobody waits for."""
        batch: list[_Pending] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            pending = self._queue[0]
            count = len(pending.inputs)
            if batch and (not self._config.enabled or size + count > self._config.max_batch_size):
                break
            self._queue.popleft()
            self._queued_examples -= count
            if pending.future.done():  # cancelled while queued
                continue
            if pending.deadline is not None and now >= pending.deadline:
                self._count_drop("deadline")
                pending.future.set_exception(
                    DeadlineExceededError("the deadline passed before the model was free")
                )
                continue
            pending.taken = True
            batch.append(pending)
            size += count
        return batch

    def _run_batch(self, batch: list[_Pending]) -> list[list[np.ndarray]]:
        """Runs on the executor: packs, runs one pass, splits the rows back out."""
        inputs = [pending.inputs for pending in batch]
        packed = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        extras = any(pending.extras for pending in batch)
        start = time.monotonic()
        if self._metrics is not None:
            for pending in batch:
                self._queue_seconds.observe(start - pending.enqueued)
            self._batch_size.observe(len(packed))
        results = self._run(packed, extras)
        seconds = time.monotonic() - start
        if self._metrics is not None:
            self._inference_seconds.observe(seconds)
        # Counted here, on the one thread that runs passes; read from the event loop.
        stats = self._stats
        stats.inference_count += len(packed)
        stats.execution_count += 1
        passes, total = stats.passes.get(len(packed), (0, 0.0))
        stats.passes[len(packed)] = (passes + 1, total + seconds)
        for pending in batch:
            pending.started, pending.compute = start, seconds
        rows = []
        offset = 0
        for pending in batch:
            count = len(pending.inputs)
            rows.append([array[offset : offset + count] for array in results])
            offset += count
        return rows

    def _count_drop(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped.labels(self._model, reason).inc()
