"""The cost of instrumentation: Predict with metrics on and off, side by side.

Run: ``.venv/bin/python bench/metrics_overhead.py [--seconds 3 --rounds 5]``.

Two real server processes, one measuring (``--metrics-port`` set) and one not
(``--metrics-port 0``), are driven in interleaved rounds by an asynchronous gRPC client
in this process at concurrency 1, 16 and 64. Prints requests/s, p50, p99 and the
server's CPU time per request per variant (medians over rounds) and the ratios on/off.
CPU per request is the steadiest of these on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

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

CONCURRENCY = (1, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    request = predict_request()
    with (
        server_process(flatscope("--metrics-port", str(free_port()))) as on,
        server_process(flatscope("--metrics-port", "0")) as off,
    ):
        results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        variants = [("on", on), ("off", off)]
        for round_ in range(args.rounds):
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


if __name__ == "__main__":
    main()
