"""Shared bench helpers: real server processes and an asynchronous load driver."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Running:
    """A started server process.

    Attributes:
        target: "127.0.0.1:port" of its gRPC port.
        pid: Its process id.
        metrics_port: Its Prometheus port, when it has one (flatscope).
    """

    target: str
    pid: int
    metrics_port: int | None = None


def flatscope(*flags: str) -> list[str]:
    """The command line of ``flatscope serve --port 0 --http-port 0 FLAGS``."""
    return [sys.executable, "-m", "flatscope", "serve", "--port", "0", "--http-port", "0", *flags]


@contextlib.contextmanager
def server_process(command: list[str], timeout: float = 120.0) -> Iterator[Running]:
    """Runs a server until the block ends, once it logged its address and model.

    A ``--metrics-port`` that another process took since :func:`free_port` found it free
    is replaced by another free one (twice at most).
    """
    for attempt in range(3):
        try:
            with _server_process(command, timeout) as running:
                yield running
                return
        except _PortTaken:
            if attempt == 2:
                raise
            command = list(command)
            command[command.index("--metrics-port") + 1] = str(free_port())


class _PortTaken(RuntimeError):
    pass


@contextlib.contextmanager
def _server_process(command: list[str], timeout: float) -> Iterator[Running]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                text = log.read_text()
                # The gRPC port (a server logs its HTTP port too, first).
                found = re.search(r"listening on (127\.0\.0\.1:\d+)(?![\d ]*\(HTTP)", text)
                if found and "serving model" in text:
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    if "cannot serve /metrics" in text and "--metrics-port" in command:
                        raise _PortTaken(text)
                    raise RuntimeError(f"server did not start:\n{text}")
                time.sleep(0.1)
            metrics = re.search(r"metrics on http://[^:]+:(\d+)", text)
            yield Running(found.group(1), process.pid, int(metrics.group(1)) if metrics else None)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def ceiling_model(folder: Path) -> str:
    """A model on the default model's input that does almost no work (Flatten, Dense(10)),
    saved in ``folder``: what flatscope itself costs, the best any model could do."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((48, 48, 3)),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="digit"),
        ],
        name="ceiling",
    )
    path = folder / "ceiling.keras"
    model.save(path)
    return str(path)


def predict_request(batch: int = 1, seed: int = 0) -> pb.PredictRequest:
    """A Predict request for the default model with random images."""
    images = np.random.default_rng(seed).random((batch, 48, 48, 3), dtype=np.float32)
    return pb.PredictRequest(inputs=converters.to_tensor(images))


async def drive(
    target: str,
    method: str,
    request,
    concurrency: int,
    seconds: float,
    stub_factory: Callable[[grpc.aio.Channel], object] = model_service_pb2_grpc.ModelServiceStub,
) -> list[float]:
    """Calls ``method`` from ``concurrency`` workers for ``seconds``; returns latencies.

    ``stub_factory`` makes the stub whose ``method`` is called (flatscope's by default).
    """
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = stub_factory(channel)
        call = getattr(stub, method)
        await call(request)  # connect and warm up
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                await call(request)
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def rotated(names: Sequence[str], by: int) -> list[str]:
    """``names`` rotated left by ``by``: a different server first in every round."""
    by %= len(names)
    return [*names[by:], *names[:by]]


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms)."""
    p99 = statistics.quantiles(latencies, n=100)[-1] if len(latencies) > 1 else latencies[0]
    return len(latencies) / seconds, statistics.median(latencies) * 1e3, p99 * 1e3


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) a process has used so far, from /proc: all its threads,
    or only ``thread`` (a thread id; the process id is its main thread, which runs a
    server's event loop).

    Per request, it is a steadier measure than throughput on a shared machine: a
    neighbour's load slows a server down but does not add to its CPU time.
    """
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def print_medians(
    results: dict[tuple[str, int], list[tuple[float, ...]]],
    names: Sequence[str],
    concurrencies: Sequence[int],
) -> None:
    """Prints the medians over rounds of (req/s, p50, p99, CPU ms per request) for each
    (name, concurrency), then each name's ratios to the first name's."""
    median = {
        key: tuple(statistics.median(r[i] for r in rounds) for i in range(4))
        for key, rounds in results.items()
    }
    width = max(10, *(len(name) for name in names))
    print(
        f"{'protocol':<{width}} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms/req':>10}"
    )
    for concurrency in concurrencies:
        for name in names:
            rps, p50, p99, cpu = median[(name, concurrency)]
            print(
                f"{name:<{width}} {concurrency:>4} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>10.2f}"
            )
    base = names[0]
    for concurrency in concurrencies:
        own_rps, own_p50, _, own_cpu = median[(base, concurrency)]
        for name in names[1:]:
            rps, p50, _, cpu = median[(name, concurrency)]
            print(
                f"concurrency {concurrency}: {name}/{base} throughput = {rps / own_rps:.3f}, "
                f"p50 = {p50 / own_p50:.3f}, server CPU per request = {cpu / own_cpu:.3f}"
            )


@dataclasses.dataclass(frozen=True)
class Cell:
    """One server, one method, one load: what a driver measured.

    Attributes:
        rps: Replies per second.
        p50_ms: Median latency.
        p99_ms: 99th percentile latency.
        mean_ms: Mean latency.
        cpu_us: The server's CPU time per reply (user + system, all its threads).
        loop_cpu_us: The part of it on the server's main thread (its event loop).
    """

    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_us: float
    loop_cpu_us: float


DRIVERS = ("h2load", "python")


def measure(
    driver: str,
    server: Running,
    service: str,
    method: str,
    request,
    in_flight: int,
    seconds: float,
) -> Cell:
    """Drives ``server``'s ``service``/``method`` with ``in_flight`` calls open for ``seconds``.

    A short run of the same load comes first (connection, warm caches). With h2load, a
    server that has a metrics port must have answered every call of the run with
    grpc-status OK (h2load itself only sees HTTP 200).
    """
    import h2load

    if driver == "python":
        latencies = asyncio.run(drive(server.target, method, request, in_flight, 0.3))
        cpu_before = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
        latencies = asyncio.run(drive(server.target, method, request, in_flight, seconds))
        cpu = cpu_seconds(server.pid) - cpu_before[0]
        loop_cpu = cpu_seconds(server.pid, server.pid) - cpu_before[1]
        rps, p50, p99 = summary(latencies, seconds)
        per_call = 1e6 / len(latencies)
        mean = statistics.fmean(latencies) * 1e3
        return Cell(rps, p50, p99, mean, cpu * per_call, loop_cpu * per_call)
    path = f"/{service}/{method}"
    codes_before = h2load.grpc_codes(server.metrics_port, method) if server.metrics_port else None
    h2load.run(server.target, path, request, in_flight, 0.3)
    cpu_before = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
    result = h2load.run(server.target, path, request, in_flight, seconds)
    cpu = cpu_seconds(server.pid) - cpu_before[0]
    loop_cpu = cpu_seconds(server.pid, server.pid) - cpu_before[1]
    if result.failed:
        raise RuntimeError(f"{server.target}{path}: {result.failed} of the calls failed in HTTP")
    if not result.requests:
        raise RuntimeError(f"{server.target}{path}: no call ended within {seconds} s")
    if codes_before is not None:
        codes = h2load.grpc_codes(server.metrics_port, method)
        codes.subtract(codes_before)
        # h2load resets the streams still open when its time is up (CANCELLED), at the
        # end of the warm-up run and of the measured one. A stream reset between its
        # headers and its message is counted RESOURCE_EXHAUSTED: gRPC shows the server
        # such a call exactly as one whose message it refused as too large.
        reset = min(2 * in_flight, codes["CANCELLED"] + codes["RESOURCE_EXHAUSTED"])
        for code in ("CANCELLED", "RESOURCE_EXHAUSTED"):
            taken = min(reset, codes[code])
            codes[code] -= taken
            reset -= taken
        wrong = {code: n for code, n in codes.items() if code != "OK" and n}
        if wrong or codes["OK"] < result.requests:
            raise RuntimeError(
                f"{path}: h2load counted {result.requests} replies, the server answered "
                f"{codes['OK']} OK and {wrong or 'no'} errors"
            )
    return Cell(
        result.rps,
        result.percentile(50),
        result.percentile(99),
        result.mean_ms,
        cpu / result.requests * 1e6,
        loop_cpu / result.requests * 1e6,
    )


def interleaved_predict(
    servers: dict[str, list[str]], args: argparse.Namespace, request
) -> Callable[[str, int, str], float]:
    """Measures batch Predict ``request`` on each server at each of ``args.concurrency``.

    Fresh server processes every round, started in rotated order; at each in-flight count
    the servers take turns in an order that rotates too. Returns ``median(name, in_flight,
    field)`` of a :class:`Cell` field over the rounds.
    """
    results: dict[tuple[str, int], list[Cell]] = {}
    for round_ in range(args.rounds):
        with contextlib.ExitStack() as stack:
            running = {
                name: stack.enter_context(server_process(servers[name]))
                for name in rotated(list(servers), round_)
            }
            for in_flight in args.concurrency:
                for name in rotated(list(servers), round_ + in_flight):
                    cell = measure(
                        args.driver,
                        running[name],
                        "flatscope.v1.ModelService",
                        "Predict",
                        request,
                        in_flight,
                        args.seconds,
                    )
                    results.setdefault((name, in_flight), []).append(cell)

    def median(name: str, in_flight: int, field: str) -> float:
        return statistics.median(getattr(cell, field) for cell in results[(name, in_flight)])

    return median


def load_parser(description: str, concurrency: tuple[int, ...]) -> argparse.ArgumentParser:
    """The arguments every load bench takes: rounds, seconds per cell, driver, in flight.

    Read them with :func:`load_arguments`, which applies ``--quick``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="one round of 1.5 s per cell")
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--driver", choices=DRIVERS, default="h2load")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=concurrency, help="calls in flight"
    )
    return parser


def load_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser``'s arguments, ``--quick`` applied."""
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.5, 1
    return args
