"""The cost of instrumentation: Predict with metrics on and off, side by side.

Run: ``.venv/bin/python bench/metrics_overhead.py [--seconds 3 --rounds 6]`` (~5 min).

Each round starts three fresh server processes: one measuring (``--metrics-port``
set) and two identical ones that do not (``--metrics-port 0``), and drives them by
turns from an asynchronous gRPC client in this process at concurrency 1, 16 and 64.
The second unmeasured server is an A/A control: the ratio between two servers that
differ in nothing is this machine's noise floor, printed next to the on/off ratio.

Two biases on this shared 2-core machine shape the design. Two identical servers
started once can differ by 5-10 % for their whole life (where the scheduler puts their
threads against the client's), so every round starts fresh processes. And the server
started first runs measurably slower (an A/A run with a fixed start order read
"0.95-0.98" for two identical servers), so the start order and the order of turns
both rotate from round to round. Ratios are medians over rounds of each round's own
ratio (paired: the servers of one round share the machine's mood).

Then it times, in this process, exactly the metric updates the server makes for one
batch-1 Predict (the RPC counters and histograms, the queue time, and the per-pass
batch size and inference time) and prints that cost as a share of the "off" server's
CPU per request: the part of the overhead that does not drown in the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    rotated,
    server_process,
    summary,
)

from flatscope.metrics import Metrics  # noqa: E402

CONCURRENCY = (1, 16, 64)
VARIANTS = ("on", "off", "off again")  # "off again": the A/A control
MEASURES = ("req/s", "p50 ms", "p99 ms", "cpu us/req")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    request = predict_request()
    # (variant, concurrency) -> one (req/s, p50, p99, cpu us) per round
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for round_ in range(args.rounds):
        with contextlib.ExitStack() as stack:
            servers = {}
            for name in rotated(VARIANTS, round_):  # who starts first rotates
                port = str(free_port()) if name == "on" else "0"
                servers[name] = stack.enter_context(
                    server_process(flatscope("--metrics-port", port))
                )
            for server in servers.values():  # connect and warm up
                asyncio.run(drive(server.target, "Predict", request, 16, 0.5))
            turns = rotated(VARIANTS, round_ + 1 + round_ // len(VARIANTS))
            for concurrency in CONCURRENCY:
                for name in turns:
                    server = servers[name]
                    cpu_before = cpu_seconds(server.pid)
                    latencies = asyncio.run(
                        drive(server.target, "Predict", request, concurrency, args.seconds)
                    )
                    cpu_us = (cpu_seconds(server.pid) - cpu_before) / len(latencies) * 1e6
                    results.setdefault((name, concurrency), []).append(
                        (*summary(latencies, args.seconds), cpu_us)
                    )

    print(f"{'metrics':<10} {'conc':>4} " + " ".join(f"{m:>10}" for m in MEASURES))
    for concurrency in CONCURRENCY:
        for name in VARIANTS:
            rounds = results[(name, concurrency)]
            medians = [statistics.median(r[i] for r in rounds) for i in range(len(MEASURES))]
            print(
                f"{name:<10} {concurrency:>4} "
                + " ".join(
                    f"{m:>10.2f}" if i in (1, 2) else f"{m:>10.0f}" for i, m in enumerate(medians)
                )
            )
    print("\nratios, median over rounds of each round's ratio (A/A: two identical servers)")
    print(f"{'conc':>4} {'':>6} {'throughput':>11} {'p50':>7} {'cpu/req':>8}")
    for concurrency in CONCURRENCY:
        for label, name in (("on/off", "on"), ("A/A", "off again")):
            ratios = [
                _paired_ratio(results[(name, concurrency)], results[("off", concurrency)], i)
                for i in (0, 1, 3)
            ]
            print(
                f"{concurrency:>4} {label:>6} "
                + " ".join(f"{r:>{w}.3f}" for r, w in zip(ratios, (11, 7, 8), strict=True))
            )
    updates_us = _metric_updates_us(request.ByteSize())
    print(f"\nmetric updates per batch-1 Predict, timed alone: {updates_us:.2f} us")
    for concurrency in CONCURRENCY:
        off_cpu = statistics.median(r[3] for r in results[("off", concurrency)])
        print(
            f"  = {100 * updates_us / off_cpu:.2f} % of the server's CPU per request "
            f"at concurrency {concurrency} ({off_cpu:.0f} us)"
        )


def _paired_ratio(
    rounds: list[tuple[float, ...]], baseline: list[tuple[float, ...]], measure: int
) -> float:
    """Median over rounds of ``rounds[r][measure] / baseline[r][measure]``."""
    return statistics.median(a[measure] / b[measure] for a, b in zip(rounds, baseline, strict=True))


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
