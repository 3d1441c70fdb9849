"""Deadlines, cancellations, overload and shutdown against a real server process.

The model is two wide convolutions over small 64x64 inputs (48 KiB an example): tenths of a
second per pass on a CPU, so that calls wait in the queue long enough to miss deadlines, be
cancelled, or overflow, while the messages stay small. The last test shuts the server down
with SIGTERM under load (one server for the module: each costs seconds to start).
"""

from __future__ import annotations

import asyncio
import math
import signal
import statistics
import threading
import time
from collections.abc import Iterator

import grpc
import keras
import numpy as np
import pytest
from processes import ServerProcess

from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc

MODEL = "slow"
EXAMPLE_SHAPE = (64, 64, 3)
MAX_BATCH = 4
ENQUEUED_BATCHES = 8  # 32 examples may wait
MAX_RPCS = 16  # the sustainable concurrency of this server
SHUTDOWN_DELAY = 1.5  # seconds of NOT_SERVING before the port closes
TIMEOUT = 60.0
PREDICT = "/flatscope.v1.ModelService/Predict"


def slow_model() -> keras.Model:
    inputs = keras.Input(EXAMPLE_SHAPE)
    x = keras.layers.Conv2D(128, 3, padding="same", name="conv_1")(inputs)
    x = keras.layers.Conv2D(128, 7, padding="same", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(8, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x), name=MODEL)


def request(batch: int, seed: int = 0) -> pb.PredictRequest:
    images = np.random.default_rng(seed).random((batch, *EXAMPLE_SHAPE), dtype=np.float32)
    return pb.PredictRequest(inputs=converters.to_tensor(images))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("load")
    path = folder / "slow.keras"
    slow_model().save(path)
    process = ServerProcess(
        folder / "serve.log",
        "--model",
        str(path),
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-enqueued-batches",
        str(ENQUEUED_BATCHES),
        "--max-concurrent-rpcs",
        str(MAX_RPCS),
        "--shutdown-delay",
        str(SHUTDOWN_DELAY),
        "--shutdown-grace",
        "30",
        metrics=True,
    )
    with process.serving() as started:
        yield started


@pytest.fixture(scope="module")
def full_pass(server: ServerProcess) -> float:
    """Seconds one call of a full batch takes on an idle server (the best of three)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        times = []
        for _ in range(3):
            start = time.monotonic()
            stub.Predict(request(MAX_BATCH), timeout=TIMEOUT)
            times.append(time.monotonic() - start)
    return min(times)


class Counters:
    """Differences in the server's counters since this object was made."""

    SERIES = {
        "examples": ("flatscope_batch_size_sum", {"model": MODEL}),
        "deadline": ("flatscope_requests_dropped_total", {"model": MODEL, "reason": "deadline"}),
        "cancelled": ("flatscope_requests_dropped_total", {"model": MODEL, "reason": "cancelled"}),
        "queue_full": (
            "flatscope_requests_dropped_total",
            {"model": MODEL, "reason": "queue_full"},
        ),
        "rpc_deadline": (
            "grpc_server_handled_total",
            {"grpc_method": "Predict", "grpc_code": "DEADLINE_EXCEEDED"},
        ),
        "rpc_cancelled": (
            "grpc_server_handled_total",
            {"grpc_method": "Predict", "grpc_code": "CANCELLED"},
        ),
        # A handler that raised past the error mapping (none should).
        "rpc_unknown": (
            "grpc_server_handled_total",
            {"grpc_method": "Predict", "grpc_code": "UNKNOWN"},
        ),
    }

    def __init__(self, server: ServerProcess):
        self._server = server
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        return {key: self._server.metric(*series) for key, series in self.SERIES.items()}

    def delta(self) -> dict[str, float]:
        now = self._read()
        return {key: now[key] - self._start[key] for key in now}

    def settle(self, **expected: float) -> dict[str, float]:
        """The differences once they reach ``expected`` (or after 10 s, for the assert)."""
        deadline = time.monotonic() + 10
        while True:
            delta = self.delta()
            if all(delta[k] >= v for k, v in expected.items()) or time.monotonic() > deadline:
                return delta
            time.sleep(0.05)


def test_calls_whose_deadline_passes_or_that_are_cancelled_while_queued_never_run(
    server: ServerProcess, full_pass: float
):
    # Enough full batches ahead of them to keep the model busy for over a second.
    blockers = min(max(math.ceil(1.0 / full_pass) + 1, 3), ENQUEUED_BATCHES - 1)
    late_count, gone_count = 4, 3
    counters = Counters(server)
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        ahead = [
            stub.Predict.future(request(MAX_BATCH, seed=i), timeout=TIMEOUT)
            for i in range(blockers)
        ]
        time.sleep(0.05)
        late = [stub.Predict.future(request(1), timeout=0.5) for _ in range(late_count)]
        gone = [stub.Predict.future(request(1), timeout=TIMEOUT) for _ in range(gone_count)]
        time.sleep(0.3)  # queued on the server by now, and still far from the model
        for call in gone:
            call.cancel()

        for call in ahead:
            assert tuple(call.result().outputs.shape) == (MAX_BATCH, 2)
        for call in late:
            assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(call.cancelled() for call in gone)

        delta = counters.settle(deadline=late_count, cancelled=gone_count)
        # Counted by reason, in the core and in the RPC metrics alike ...
        assert delta["deadline"] == late_count, delta
        assert delta["cancelled"] == gone_count, delta
        assert delta["rpc_deadline"] == late_count, delta
        assert delta["rpc_cancelled"] == gone_count, delta
        # ... and the model saw exactly the examples of the calls that were answered.
        assert delta["examples"] == blockers * MAX_BATCH, delta
        assert delta["rpc_unknown"] == 0, delta
        assert tuple(stub.Predict(request(1), timeout=TIMEOUT).outputs.shape) == (1, 2)


async def _hammer(target: str, callers: int, seconds: float) -> list[tuple[str, float]]:
    """``callers`` loops calling Predict as fast as answers come; (code, seconds) per call.

    The request is serialized once, so that the clients' own work does not slow the
    server they share the CPUs with.
    """
    outcomes: list[tuple[str, float]] = []
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    message = request(MAX_BATCH).SerializeToString()
    stop = time.monotonic() + seconds

    async def caller(index: int) -> None:
        predict = channels[index % len(channels)].unary_unary(PREDICT)
        while time.monotonic() < stop:
            start = time.monotonic()
            try:
                await predict(message, timeout=TIMEOUT)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            outcomes.append((code, time.monotonic() - start))

    try:
        await asyncio.gather(*(caller(i) for i in range(callers)))
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


def test_ten_times_the_sustainable_concurrency_is_shed_fast_in_bounded_memory(
    server: ServerProcess, full_pass: float
):
    baseline = server.rss_bytes()
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, server.rss_bytes())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    counters = Counters(server)
    try:
        outcomes = asyncio.run(_hammer(server.target, callers=10 * MAX_RPCS, seconds=4.0))
    finally:
        sampling = False
        sampler.join()

    codes = {code for code, _ in outcomes}
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    served = [seconds for code, seconds in outcomes if code == "OK"]
    shed = sorted(seconds for code, seconds in outcomes if code == "RESOURCE_EXHAUSTED")
    assert served, "nothing was served under overload"
    assert len(shed) > len(served), (len(shed), len(served))
    # Rejections come at once, not after waiting in line behind the model.
    assert statistics.median(shed) < 0.5, statistics.median(shed)
    assert statistics.median(shed) * 4 < statistics.median(served)
    assert shed[-1] < max(2.0, 4 * full_pass), shed[-1]
    delta = counters.delta()
    assert delta["queue_full"] > 0, delta
    assert delta["rpc_unknown"] == 0, delta
    # What waits is bounded (16 calls of 4 examples of 192 KiB, 32 examples queued), so
    # memory is too. Beyond the waiting calls, RSS holds what the calls being read and
    # refused take at once (up to 160 requests of 192 KiB, in three copies: ~90 MiB) and
    # the allocator's slack for gRPC's threads under ~2,000 refusals a second of such
    # requests: 134-300 MiB of growth seen on this 2-core machine, busy or not.
    growth = peak - baseline
    assert growth < 384 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"

    # Load gone, service back: calls are answered at once, one after another.
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for i in range(5):
            start = time.monotonic()
            reply = stub.Predict(request(MAX_BATCH, seed=i), timeout=TIMEOUT)
            assert tuple(reply.outputs.shape) == (MAX_BATCH, 2)
            assert time.monotonic() - start < 3 * full_pass + 1.0


class Call:
    """One call's start and end on this process's monotonic clock, and its status code."""

    def __init__(self, start: float, end: float, code: grpc.StatusCode):
        self.start, self.end, self.code = start, end, code


def _keep_calling(target: str, seed: int, calls: list[Call], done: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        message = request(MAX_BATCH, seed=seed)
        while not done.is_set():
            start = time.monotonic()
            try:
                stub.Predict(message, timeout=TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            calls.append(Call(start, time.monotonic(), code))
            if code != grpc.StatusCode.OK:
                time.sleep(0.05)


def test_clients_that_keep_sending_through_a_drain_are_refused_within_a_second(tmp_path):
    # An open-loop client (a call every 20 ms, whatever the answers) is never quiet: its
    # new calls must still be refused with UNAVAILABLE soon, not held until the grace ends
    # (they ended DEADLINE_EXCEEDED, which clients do not retry elsewhere).
    log = tmp_path / "serve.log"
    flags = ("--shutdown-delay", "0.5", "--shutdown-grace", "10")
    with ServerProcess(log, *flags).serving() as server:
        message = pb.PredictRequest(
            inputs=converters.to_tensor(np.random.rand(1, 48, 48, 3).astype(np.float32))
        )
        ended: list[tuple[float, float, grpc.StatusCode]] = []

        def record(future: grpc.Future, start: float) -> None:
            error = future.exception()
            code = grpc.StatusCode.OK if error is None else error.code()
            ended.append((start, time.monotonic(), code))

        with grpc.insecure_channel(server.target) as channel:
            predict = model_service_pb2_grpc.ModelServiceStub(channel).Predict
            sigterm = None
            stop = time.monotonic() + 5.0
            while (now := time.monotonic()) < stop:
                if sigterm is None and now > stop - 4.0:
                    server.proc.send_signal(signal.SIGTERM)
                    sigterm = now
                future = predict.future(message, timeout=3.0)
                future.add_done_callback(lambda f, start=now: record(f, start))
                time.sleep(0.02)
            assert server.proc.wait(timeout=30) == 0
        assert sigterm is not None
        closing = sigterm + 0.5 + 0.1
        later = [(end - start, code) for start, end, code in ended if start > closing]
        assert len(later) > 50, "too few calls made while the server drained"
        codes = [code for _, code in later]
        # UNAVAILABLE, which clients retry elsewhere; a call that reaches gRPC core just as
        # its stop begins may be CANCELLED by it (see Admission.close), a race, not a rule.
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, later
        assert codes.count(grpc.StatusCode.UNAVAILABLE) >= 0.9 * len(codes), later
        assert max(seconds for seconds, _ in later) < 2.0, later


def test_sigterm_under_load_finishes_every_accepted_call_and_exits_0(server: ServerProcess):
    """Runs last: it stops the module's server."""
    calls: list[Call] = []
    done = threading.Event()
    callers = [
        threading.Thread(target=_keep_calling, args=(server.target, i, calls, done))
        for i in range(8)  # 32 examples in flight: the queue is full and work waits in it
    ]
    for caller in callers:
        caller.start()
    time.sleep(1.0)
    with server.client(timeout=5) as watcher:
        assert watcher.health() == "SERVING"
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while (status := watcher.health()) == "SERVING":
            time.sleep(0.01)
        not_serving = time.monotonic()
    assert status == "NOT_SERVING"
    try:
        code = server.proc.wait(timeout=60)
    finally:
        done.set()
        for caller in callers:
            caller.join(timeout=60)
    stopped = time.monotonic()

    assert code == 0, server.log()
    assert "Traceback" not in server.log()
    # Health turned at once, while calls were still accepted for the delay.
    assert not_serving - sigterm < 0.5
    closing = sigterm + SHUTDOWN_DELAY
    assert any(call.start > not_serving and call.code == grpc.StatusCode.OK for call in calls)
    # No accepted call failed: every call made before the port closed was answered, and
    # those in flight when it closed too (the drain).
    accepted = [call for call in calls if call.start < closing - 0.1]
    assert accepted
    assert {call.code for call in accepted} == {grpc.StatusCode.OK}
    assert any(call.end > closing + 0.1 for call in accepted)
    # After that, new calls were refused with UNAVAILABLE, and nothing else went wrong.
    later = [call for call in calls if call.start > closing + 0.1 and call.end < stopped]
    assert later, "no call was made while the server drained"
    assert {call.code for call in later} == {grpc.StatusCode.UNAVAILABLE}
    odd = [
        (round(call.start - closing, 3), round(call.end - stopped, 3), call.code)
        for call in calls
        if call.code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    ]
    assert not odd, f"(start - closing, end - stopped, code): {odd}"
