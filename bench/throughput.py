"""Throughput and latency under load, against the transport's floor and a naive server.

Run: ``.venv/bin/python bench/throughput.py`` (about seven minutes) or ``--quick`` (two).

Starts five servers as processes of their own and drives them from this process with
an asynchronous gRPC client, in interleaved rounds (so a noisy machine hits every
variant alike), at concurrency 1, 8, 32 and 64, batch-1 requests of 27 KB:
  1 echo      a bare gRPC server answering Predict without a model (the floor)
  2 naive     model.predict per request (what tutorials write)
  3 off       flatscope Predict, batching off
  4 on        flatscope Predict, batching on
  5 inspect   flatscope Inspect, batching on (18,432 extra floats per reply)
  6 echo-insp the echo answering Inspect with a reply of the same size (the floor
              for Inspect: 73 KB replies instead of 60 bytes)
  7 ceiling   flatscope Predict, batching on, serving a model that does almost no
              work (the same input, Flatten, Dense(10)): what flatscope itself costs,
              the best any model could do
Every round starts the servers afresh, in an order that rotates: on this shared
machine a server keeps the luck of its start for its whole life (two identical
servers differ by 5-10 %, and the first started runs slowest); the order of turns
rotates as well.
Prints requests/s, p50 and p99 (medians over rounds), the ratios the project
tracks, the server's CPU time per request (steadier than throughput on a shared
machine), the compiled forward pass p50 measured in this process (with the model
threads the server uses), and server RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    cpu_seconds,
    drive,
    flatscope,
    free_port,
    predict_request,
    rotated,
    rss_bytes,
    server_process,
    summary,
)

from flatscope.v1 import model_service_pb2 as pb  # noqa: E402

CONCURRENCY = (1, 8, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round of 1.5 s per cell")
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.5, 1

    predict = predict_request()
    inspect = pb.InspectRequest(inputs=predict.inputs)
    forward_p50 = _forward_pass_p50()
    with tempfile.TemporaryDirectory() as tmp:
        ceiling_model = _ceiling_model(Path(tmp))
        servers = {
            "echo": [sys.executable, str(HERE / "echo_server.py"), "0"],
            "naive": [sys.executable, str(HERE / "naive_server.py"), "0"],
            "off": flatscope("--metrics-port", str(free_port()), "--batching", "false"),
            "on": flatscope("--metrics-port", str(free_port())),
            "ceiling": flatscope("--metrics-port", str(free_port()), "--model", ceiling_model),
        }
        cells = {  # name: (server, method, request)
            "echo": ("echo", "Predict", predict),
            "naive": ("naive", "Predict", predict),
            "off": ("off", "Predict", predict),
            "on": ("on", "Predict", predict),
            "inspect": ("on", "Inspect", inspect),
            "echo-insp": ("echo", "Inspect", inspect),
            "ceiling": ("ceiling", "Predict", predict),
        }
        rss_loaded: dict[str, list[int]] = {}
        rss_peak: dict[str, list[int]] = {}
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            with contextlib.ExitStack() as stack:
                running = {
                    name: stack.enter_context(server_process(servers[name]))
                    for name in rotated(list(servers), round_)
                }
                for name, server in running.items():
                    rss_loaded.setdefault(name, []).append(rss_bytes(server.pid))
                    rss_peak.setdefault(name, []).append(rss_bytes(server.pid))
                # The order of turns rotates too: a server runs slower right after
                # the naive one (its threads wind down for a while).
                turns = rotated(list(cells), 2 * round_)
                for concurrency in CONCURRENCY:
                    for name in turns:
                        server_name, method, request = cells[name]
                        server = running[server_name]
                        # The naive server manages ~15 requests/s: fewer seconds keep
                        # the run short without changing its figures.
                        seconds = args.seconds / 2 if name == "naive" else args.seconds
                        cpu_before = cpu_seconds(server.pid)
                        latencies = asyncio.run(
                            drive(server.target, method, request, concurrency, seconds)
                        )
                        cpu.setdefault((name, concurrency), []).append(
                            (cpu_seconds(server.pid) - cpu_before) / len(latencies) * 1e6
                        )
                        results.setdefault((name, concurrency), []).append(
                            summary(latencies, seconds)
                        )
                        peak = rss_peak[server_name]
                        peak[-1] = max(peak[-1], rss_bytes(server.pid))

    table = {
        key: tuple(statistics.median(r[i] for r in rounds) for i in range(3))
        for key, rounds in results.items()
    }
    print(f"\n{'server':<8} " + " ".join(f"{'c=' + str(c):>22}" for c in CONCURRENCY))
    print(f"{'':<8} " + " ".join(f"{'req/s  p50 ms  p99 ms':>22}" for _ in CONCURRENCY))
    for name in cells:
        row = " ".join(
            f"{rps:>7.0f} {p50:>7.2f} {p99:>7.2f}"
            for rps, p50, p99 in (table[(name, c)] for c in CONCURRENCY)
        )
        print(f"{name:<8} {row}")
    print("\nratios (throughput)")
    for c in CONCURRENCY:
        on_rps, echo_rps = table[("on", c)][0], table[("echo", c)][0]
        print(
            f"  c={c:<3} on/echo {on_rps / echo_rps:.2f}   "
            f"on/naive {on_rps / table[('naive', c)][0]:.1f}   "
            f"on/off {on_rps / table[('off', c)][0]:.2f}   "
            f"inspect/on {table[('inspect', c)][0] / on_rps:.2f}   "
            f"(echo: {table[('echo-insp', c)][0] / echo_rps:.2f})   "
            f"ceiling/echo {table[('ceiling', c)][0] / echo_rps:.2f}"
        )
    print("\nserver CPU per request (us; medians over rounds)")
    print(f"{'server':<8} " + " ".join(f"{'c=' + str(c):>8}" for c in CONCURRENCY))
    for name in cells:
        row = " ".join(f"{statistics.median(cpu[(name, c)]):>8.0f}" for c in CONCURRENCY)
        print(f"{name:<8} {row}")
    print(
        "  on/echo "
        + " ".join(
            f"{statistics.median(cpu[('on', c)]) / statistics.median(cpu[('echo', c)]):>8.2f}"
            for c in CONCURRENCY
        )
    )
    echo_p50 = table[("echo", 1)][1]
    on_p50 = table[("on", 1)][1]
    print(
        f"\nidle latency: on p50 {on_p50:.2f} ms vs echo p50 {echo_p50:.2f} ms + "
        f"forward pass p50 {forward_p50:.2f} ms = {on_p50 / (echo_p50 + forward_p50):.2f}x"
    )
    print("\nserver RSS (MiB, medians over rounds): after load -> peak under load (ratio)")
    for name in servers:
        loaded = statistics.median(rss_loaded[name]) / 2**20
        peak = statistics.median(rss_peak[name]) / 2**20
        print(f"  {name:<8} {loaded:7.0f} -> {peak:7.0f} ({peak / loaded:.2f})")


def _ceiling_model(folder: Path) -> str:
    """A model on the default model's input that does almost no work, saved in ``folder``."""
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


def _forward_pass_p50(calls: int = 200) -> float:
    """p50 in ms of the compiled batch-1 forward pass, in this process."""
    from flatscope.inference import load_served_model

    served = load_served_model(None)
    x = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        served.runner.run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    main()
