"""The cost of instrumentation: Predict with metrics on and off, side by side.

Run: ``.venv/bin/python bench/metrics_overhead.py [--seconds 3 --rounds 6]`` (~4 min).

Each round starts two fresh server processes, one measuring (``--metrics-port`` set)
and one not (``--metrics-port 0``), and drives them by turns from an asynchronous gRPC
client in this process at concurrency 1, 16 and 64, the order alternating by round.
Fresh processes per round matter on this shared 2-core machine: two identical servers
started once can differ by 5-10 % for their whole life (where the scheduler puts their
threads against the client's), which no number of rounds averages away. Prints
requests/s, p50, p99 and the server's CPU time per request per variant (medians over
rounds) and the ratios on/off.

Then it times, in this process, exactly the metric updates the server makes for one
batch-1 Predict (the RPC counters and histograms, the queue time, and the per-pass
batch size and inference time) and prints that cost as a share of the "off" server's
CPU per request: the part of the overhead that does not drown in the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    cpu_seconds,
    drive,
    flatscope,
    free_port,
    predict_request,
    server_process,
    summary,
)

from flatscope.metrics import Metrics  # noqa: E402

CONCURRENCY = (1, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    request = predict_request()
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for round_ in range(args.rounds):
        with (
            server_process(flatscope("--metrics-port", str(free_port()))) as on,
            server_process(flatscope("--metrics-port", "0")) as off,
        ):
            variants = [("on", on), ("off", off)]
            for server in (on, off):  # connect and warm up
                asyncio.run(drive(server.target, "Predict", request, 16, 0.5))
            for concurrency in CONCURRENCY:
                # Alternate which goes first, so neither gains from the order.
                for name, server in variants if round_ % 2 == 0 else variants[::-1]:
                    cpu_before = cpu_seconds(server.pid)
                    latencies = asyncio.run(
                        drive(server.target, "Predict", request, concurrency, args.seconds)
                    )
                    cpu_us = (cpu_seconds(server.pid) - cpu_before) / len(latencies) * 1e6
                    results.setdefault((name, concurrency), []).append(
                        (*summary(latencies, args.seconds), cpu_us)
                    )

    print(f"{'metrics':<8} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11}")
    median = {
        key: tuple(statistics.median(r[i] for r in rounds) for i in range(4))
        for key, rounds in results.items()
    }
    for (name, concurrency), (rps, p50, p99, cpu) in sorted(
        median.items(), key=lambda kv: kv[0][1]
    ):
        print(f"{name:<8} {concurrency:>4} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>11.0f}")
    for concurrency in CONCURRENCY:
        on_rps, on_p50, _, on_cpu = median[("on", concurrency)]
        off_rps, off_p50, _, off_cpu = median[("off", concurrency)]
        print(
            f"concurrency {concurrency}: throughput on/off = {on_rps / off_rps:.3f}, "
            f"p50 on/off = {on_p50 / off_p50:.3f}, CPU per request on/off = {on_cpu / off_cpu:.3f}"
        )
    updates_us = _metric_updates_us(request.ByteSize())
    print(f"\nmetric updates per batch-1 Predict, timed alone: {updates_us:.2f} us")
    for concurrency in CONCURRENCY:
        off_cpu = median[("off", concurrency)][3]
        print(
            f"  = {100 * updates_us / off_cpu:.2f} % of the server's CPU per request "
            f"at concurrency {concurrency} ({off_cpu:.0f} us)"
        )


def _metric_updates_us(request_bytes: int, calls: int = 200_000) -> float:
    """Microseconds of the metric updates one batch-1 Predict makes (a pass of its own)."""
    metrics = Metrics(CollectorRegistry(), process=False)
    rpc = metrics.rpcs.method("/flatscope.v1.ModelService/Predict", "unary")
    queue = metrics.queue_seconds.labels("digits")
    batch = metrics.batch_size.labels("digits")
    inference = metrics.inference_seconds.labels("digits")

    def one_request() -> None:
        rpc.request_bytes.observe(request_bytes)
        rpc.started += 1
        start = time.perf_counter()
        queue.observe(0.0001)
        batch.observe(1)
        inference.observe(0.0005)
        rpc.response_bytes.observe(80)
        rpc.finished("OK", time.perf_counter() - start)

    return timeit.timeit(one_request, number=calls) / calls * 1e6


if __name__ == "__main__":
    main()
