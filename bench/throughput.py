"""Throughput and latency under load, against the transport's floor and a naive server.

Run: ``.venv/bin/python bench/throughput.py`` (about six minutes) or ``--quick`` (two);
``--driver python`` drives with the asynchronous Python gRPC client instead of h2load.

Starts five servers as processes of their own and drives them, in interleaved rounds
(so a noisy machine hits every variant alike), at 1, 8, 32 and 64 calls in flight,
batch-1 requests of 27 KB. The default driver is h2load (nghttp2's C HTTP/2 load
generator, one connection with that many streams, a fixed gRPC-framed body built from
the protos): a Python client on the same two cores bounds every ratio by its own cost.
Cells:
  1 echo      a bare gRPC server answering Predict without a model (the floor)
  2 naive     model.predict per request (what tutorials write)
  3 off       flatscope Predict, batching off
  4 on        flatscope Predict, batching on (the default policy)
  5 inspect   flatscope Inspect, batching on (18,432 extra floats per reply)
  6 echo-insp the echo answering Inspect with a reply of the same size (the floor
              for Inspect: 73 KB replies instead of 60 bytes)
  7 ceiling   flatscope Predict, batching on, serving a model that does almost no
              work (the same input, Flatten, Dense(10)): what flatscope itself costs,
              the best any model could do
  8 before    with ``--before DIR``: cell 4 served by another ``service/`` tree (run
              with ``PYTHONPATH=DIR``, e.g. an older commit's, from ``git archive``)
Every round starts the servers afresh, in an order that rotates: on this shared
machine a server keeps the luck of its start for its whole life (two identical
servers differ by 5-10 %, and the first started runs slowest); the order of turns
rotates as well.
Prints requests/s, p50 and p99 (medians over rounds), the ratios the project
tracks, the server's CPU time per request (steadier than throughput on a shared
machine), the compiled forward pass p50 and CPU measured in this process (with the
model threads the server uses), the servers' idle CPU before any traffic, and server
RSS. With h2load, every flatscope call is checked to have ended with grpc-status OK
(the server's grpc_server_handled_total).
"""

from __future__ import annotations

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
    ceiling_model,
    cpu_seconds,
    flatscope,
    free_port,
    load_arguments,
    load_parser,
    measure,
    predict_request,
    rotated,
    rss_bytes,
    server_process,
)

from flatscope.v1 import model_service_pb2 as pb  # noqa: E402

CONCURRENCY = (1, 8, 32, 64)
IDLE_SECONDS = 10.0
SERVICE = "flatscope.v1.ModelService"


def main() -> None:
    parser = load_parser(__doc__, CONCURRENCY)
    parser.add_argument("--cells", nargs="+", help="only these cells (default: all)")
    parser.add_argument(
        "--before", type=Path, help="a service/ tree to compare with (run as PYTHONPATH)"
    )
    args = load_arguments(parser)
    concurrency = tuple(args.concurrency)

    predict = predict_request()
    inspect = pb.InspectRequest(inputs=predict.inputs)
    forward_p50, forward_cpu = _forward_pass()
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = ceiling_model(Path(tmp))
        servers = {
            "echo": [sys.executable, str(HERE / "echo_server.py"), "0"],
            "naive": [sys.executable, str(HERE / "naive_server.py"), "0"],
            "off": flatscope("--metrics-port", str(free_port()), "--batching", "false"),
            "on": flatscope("--metrics-port", str(free_port())),
            "ceiling": flatscope("--metrics-port", str(free_port()), "--model", ceiling),
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
        if args.before:
            servers["before"] = [
                "env",
                f"PYTHONPATH={args.before.resolve()}",
                *flatscope("--metrics-port", str(free_port())),
            ]
            cells["before"] = ("before", "Predict", predict)
        if args.cells:
            cells = {name: cells[name] for name in args.cells}
            servers = {name: servers[name] for name in {cell[0] for cell in cells.values()}}
        idle: dict[str, float] = {}
        rss_loaded: dict[str, list[int]] = {}
        rss_peak: dict[str, list[int]] = {}
        results: dict[tuple[str, int], list] = {}
        for round_ in range(args.rounds):
            with contextlib.ExitStack() as stack:
                running = {
                    name: stack.enter_context(server_process(servers[name]))
                    for name in rotated(list(servers), round_)
                }
                for name, server in running.items():
                    rss_loaded.setdefault(name, []).append(rss_bytes(server.pid))
                    rss_peak.setdefault(name, []).append(rss_bytes(server.pid))
                if round_ == 0:  # no traffic yet: what the servers burn idle
                    before = {name: cpu_seconds(server.pid) for name, server in running.items()}
                    time.sleep(IDLE_SECONDS)
                    for name, server in running.items():
                        idle[name] = (cpu_seconds(server.pid) - before[name]) / IDLE_SECONDS
                # The order of turns rotates too: a server runs slower right after
                # the naive one (its threads wind down for a while).
                turns = rotated(list(cells), 2 * round_)
                for in_flight in concurrency:
                    for name in turns:
                        server_name, method, request = cells[name]
                        server = running[server_name]
                        # The naive server manages ~15 requests/s: fewer seconds keep
                        # the run short, but enough for 64 calls in flight to end.
                        seconds = max(args.seconds / 2, 6.0) if name == "naive" else args.seconds
                        results.setdefault((name, in_flight), []).append(
                            measure(
                                args.driver, server, SERVICE, method, request, in_flight, seconds
                            )
                        )
                        peak = rss_peak[server_name]
                        peak[-1] = max(peak[-1], rss_bytes(server.pid))

    def median(name: str, c: int, field: str) -> float:
        return statistics.median(getattr(cell, field) for cell in results[(name, c)])

    print(f"\ndriver: {args.driver}; medians over {args.rounds} round(s) of {args.seconds} s")
    print(f"{'server':<9} " + " ".join(f"{'c=' + str(c):>22}" for c in concurrency))
    print(f"{'':<9} " + " ".join(f"{'req/s  p50 ms  p99 ms':>22}" for _ in concurrency))
    for name in cells:
        row = " ".join(
            f"{median(name, c, 'rps'):>7.0f} {median(name, c, 'p50_ms'):>7.2f} "
            f"{median(name, c, 'p99_ms'):>7.2f}"
            for c in concurrency
        )
        print(f"{name:<9} {row}")
    print("\nratios (throughput)")
    pairs = [
        ("on/echo", "on", "echo"),
        ("on/naive", "on", "naive"),
        ("on/off", "on", "off"),
        ("inspect/on", "inspect", "on"),
        ("(echo: insp/pred)", "echo-insp", "echo"),
        ("ceiling/echo", "ceiling", "echo"),
        ("on/before", "on", "before"),
    ]
    for c in concurrency:
        shown = [
            f"{label} {median(a, c, 'rps') / median(b, c, 'rps'):.2f}"
            for label, a, b in pairs
            if a in cells and b in cells
        ]
        print(f"  c={c:<3} " + "   ".join(shown))
    print("\nserver CPU per request (us; medians over rounds)")
    print(f"{'server':<9} " + " ".join(f"{'c=' + str(c):>8}" for c in concurrency))
    for name in cells:
        row = " ".join(f"{median(name, c, 'cpu_us'):>8.0f}" for c in concurrency)
        print(f"{name:<9} {row}")
    for base in ("echo", "before"):
        if "on" in cells and base in cells:
            ratios = (median("on", c, "cpu_us") / median(base, c, "cpu_us") for c in concurrency)
            print(f"  {'on/' + base:<7} " + " ".join(f"{r:>8.2f}" for r in ratios))
    if "on" in cells and "echo" in cells:
        echo_p50 = median("echo", 1, "p50_ms") if 1 in concurrency else float("nan")
        on_p50 = median("on", 1, "p50_ms") if 1 in concurrency else float("nan")
        print(
            f"\nidle latency: on p50 {on_p50:.2f} ms vs echo p50 {echo_p50:.2f} ms + "
            f"forward pass p50 {forward_p50:.2f} ms = {on_p50 / (echo_p50 + forward_p50):.2f}x"
        )
        if 1 in concurrency:
            on_cpu, echo_cpu = median("on", 1, "cpu_us"), median("echo", 1, "cpu_us")
            print(
                f"CPU per request at 1 in flight: on {on_cpu:.0f} us vs echo {echo_cpu:.0f} us "
                f"+ the pass's own {forward_cpu:.0f} us = {on_cpu / (echo_cpu + forward_cpu):.2f}x"
            )
    print(
        f"\nidle CPU (no traffic, {IDLE_SECONDS:g} s, % of a core): "
        + "   ".join(f"{name} {share * 100:.2f}" for name, share in idle.items())
    )
    print("\nserver RSS (MiB, medians over rounds): after load -> peak under load (ratio)")
    for name in servers:
        loaded = statistics.median(rss_loaded[name]) / 2**20
        peak = statistics.median(rss_peak[name]) / 2**20
        print(f"  {name:<8} {loaded:7.0f} -> {peak:7.0f} ({peak / loaded:.2f})")


def _forward_pass(calls: int = 200) -> tuple[float, float]:
    """The compiled batch-1 forward pass in this process: p50 in ms, CPU per pass in us.

    The CPU is this process's (every thread's), with a 0.5 ms pause before each pass,
    as a server at 1 in flight runs it.
    """
    from flatscope.inference import load_served_model

    served = load_served_model(None)
    x = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)
    for _ in range(20):
        served.runner.run(x)
    times = []
    cpu = 0.0
    for _ in range(calls):
        time.sleep(0.0005)
        cpu_start, start = time.process_time(), time.perf_counter()
        served.runner.run(x)
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - cpu_start
    return statistics.median(times) * 1e3, cpu / calls * 1e6


if __name__ == "__main__":
    main()
