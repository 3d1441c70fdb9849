"""Soak: steady load on a real server for a long while, with faults mixed in.

Run: ``.venv/bin/python bench/soak.py --seconds 600`` (the note's 10 minutes; default 120).

Starts ``flatscope serve`` (the embedded model) as a process and drives it from this process
with an asynchronous gRPC client: ``--concurrency`` callers, each calling as soon as its last
answer came. Most calls are good Predict (and one in ten Inspect) requests of 1-4 examples;
a fraction ``--faults`` of the calls each are
  cancel    cancelled by the client 0-20 ms after it was sent    expect CANCELLED (or OK)
  deadline  sent with a deadline of 1-50 ms                      expect DEADLINE_EXCEEDED (or OK)
  bad       a wrong input shape                                  expect INVALID_ARGUMENT
(some faults reach the server before their end and are dropped there, which it counts).
Prints, per time window, the calls answered, requests/s, p50 and p99 of the good calls, the
statuses that were not OK, and the server's RSS (from /proc); then totals, every status by
kind with the unexpected ones marked, what the server counted as dropped, and RSS after the
first window (allocators warm) and at the end, with its growth.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import flatscope, free_port, rss_bytes, server_process  # noqa: E402

from flatscope.grpc import converters  # noqa: E402
from flatscope.v1 import model_service_pb2 as pb  # noqa: E402
from flatscope.v1 import model_service_pb2_grpc  # noqa: E402

EXPECTED = {
    "good": {"OK"},
    "cancel": {"CANCELLED", "OK"},
    "deadline": {"DEADLINE_EXCEEDED", "OK"},
    "bad": {"INVALID_ARGUMENT"},
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    end: float  # seconds since the load started
    kind: str
    code: str
    seconds: float


def requests(rng: np.random.Generator) -> dict[str, list]:
    """Prepared messages: good Predict and Inspect requests of 1-4 examples, and bad ones."""
    good = []
    for batch in (1, 2, 3, 4):
        tensor = converters.to_tensor(rng.random((batch, 48, 48, 3), dtype=np.float32))
        good.append(("Predict", pb.PredictRequest(inputs=tensor)))
        good.append(("Inspect", pb.InspectRequest(inputs=tensor)))
    wrong = converters.to_tensor(rng.random((1, 28, 28, 1), dtype=np.float32))
    return {"good": good, "bad": [("Predict", pb.PredictRequest(inputs=wrong))]}


async def load(target: str, args: argparse.Namespace) -> list[Outcome]:
    outcomes: list[Outcome] = []
    rng = random.Random(args.seed)
    messages = requests(np.random.default_rng(args.seed))
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [model_service_pb2_grpc.ModelServiceStub(channel) for channel in channels]
    start = time.monotonic()
    stop = start + args.seconds

    def pick() -> tuple[str, str, object]:
        roll = rng.random()
        faults = ("cancel", "deadline", "bad")
        for i, kind in enumerate(faults):
            if roll < args.faults * (i + 1):
                if kind == "bad":
                    return (kind, *messages["bad"][0])
                return (kind, *messages["good"][2 * rng.randrange(4)])
        # Predict nine times in ten, Inspect once.
        method, message = messages["good"][2 * rng.randrange(4) + (rng.random() < 0.1)]
        return "good", method, message

    async def caller(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while (now := time.monotonic()) < stop:
            kind, method, message = pick()
            timeout = rng.uniform(0.001, 0.05) if kind == "deadline" else 30.0
            call = getattr(stub, method)(message, timeout=timeout)
            try:
                if kind == "cancel":
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    call.cancel()
                await call
                code = "OK"
            except asyncio.CancelledError:
                code = "CANCELLED"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            end = time.monotonic()
            outcomes.append(Outcome(end - start, kind, code, end - now))

    try:
        await asyncio.gather(*(caller(i) for i in range(args.concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to load")
    parser.add_argument("--window", type=float, default=0.0, help="report window (s)")
    parser.add_argument("--concurrency", type=int, default=16, help="callers")
    parser.add_argument("--faults", type=float, default=0.01, help="fraction of each fault")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    window = args.window or max(args.seconds / 10, 1.0)

    metrics_port = free_port()
    with server_process(flatscope("--metrics-port", str(metrics_port))) as server:
        rss: list[tuple[float, int]] = []
        sampling = True

        async def sample() -> None:
            began = time.monotonic()
            while sampling:
                rss.append((time.monotonic() - began, rss_bytes(server.pid)))
                await asyncio.sleep(1.0)

        async def run() -> list[Outcome]:
            nonlocal sampling
            sampler = asyncio.create_task(sample())
            try:
                return await load(server.target, args)
            finally:
                sampling = False
                await sampler

        print(
            f"soak: {args.seconds:.0f} s, {args.concurrency} callers, "
            f"{args.faults:.1%} each of cancel/deadline/bad, windows of {window:.0f} s"
        )
        outcomes = asyncio.run(run())
        metrics = scrape(metrics_port)

    report(outcomes, rss, window, args.seconds)
    print("\nserver counters:")
    for line in metrics.splitlines():
        if line.startswith("flatscope_requests_dropped_total") or (
            line.startswith("grpc_server_handled_total{") and "ModelService" in line
        ):
            print("  " + line)


def report(outcomes: list[Outcome], rss: list[tuple[float, int]], window: float, seconds: float):
    windows = collections.defaultdict(list)
    for outcome in outcomes:
        windows[min(int(outcome.end // window), int(seconds // window) - 1)].append(outcome)
    header = ("calls", "req/s", "p50 ms", "p99 ms")
    print(f"\n{'window s':>11} " + " ".join(f"{h:>7}" for h in header) + "  RSS MiB  not OK")
    for index in sorted(windows):
        rows = windows[index]
        good = [o.seconds for o in rows if o.kind == "good" and o.code == "OK"]
        errors = collections.Counter(o.code for o in rows if o.code != "OK")
        end = (index + 1) * window
        memory = [b for t, b in rss if t <= end] or [rss[0][1]]
        print(
            f"{index * window:>5.0f}-{end:<5.0f} {len(rows):>7} {len(rows) / window:>7.0f} "
            f"{percentile(good, 50) * 1e3:>7.2f} {percentile(good, 99) * 1e3:>7.2f} "
            f"{memory[-1] / 2**20:>8.1f}  {dict(errors)}"
        )
    good = [o.seconds for o in outcomes if o.kind == "good" and o.code == "OK"]
    print(f"\ncalls {len(outcomes)}, served OK {sum(o.code == 'OK' for o in outcomes)}")
    p50, p99 = percentile(good, 50) * 1e3, percentile(good, 99) * 1e3
    print(f"good calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    unexpected = 0
    by_kind = collections.Counter((o.kind, o.code) for o in outcomes)
    for (kind, code), count in sorted(by_kind.items()):
        mark = "" if code in EXPECTED[kind] else "   <- unexpected"
        unexpected += count if mark else 0
        print(f"  {kind:<9} {code:<18} {count:>8}{mark}")
    print(f"unexpected statuses: {unexpected}")
    after_warmup = next((b for t, b in rss if t >= window), rss[0][1])
    first, last = rss[0][1], rss[-1][1]
    print(
        f"RSS: {first / 2**20:.1f} MiB at start, {after_warmup / 2**20:.1f} MiB after the "
        f"first window, {last / 2**20:.1f} MiB at the end "
        f"({(last - after_warmup) / after_warmup:+.1%} since the first window)"
    )


if __name__ == "__main__":
    main()
