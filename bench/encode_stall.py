"""How long encoding a large v1 reply stalls the event loop: joined on the loop vs in a thread.

Run: ``.venv/bin/python bench/encode_stall.py [--mib 36] [--rounds 3]``

A ticker on the event loop sleeps 1 ms at a time and records the gaps between its wake-ups
while a batch-256 Inspect reply's worth of float32 elements (flattened + source, 36 MiB) is
encoded ten times, by :func:`flatscope.grpc.converters.encoded` (the join on the loop) and by
:func:`~flatscope.grpc.converters.encoded_off_loop`, alternating; prints the longest gap and
the p99 gap of each, and their ratio. A gap is what a health check arriving then would wait.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb


async def _ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def _stalls(off_loop: bool, elements: np.ndarray, replies: int = 10) -> list[float]:
    gaps: list[float] = []
    stop = asyncio.Event()
    ticking = asyncio.create_task(_ticker(gaps, stop))
    await asyncio.sleep(0.05)
    for _ in range(replies):
        payloads = converters.Payloads(pb.InspectResponse)
        payloads.add("flattened", "float_values", elements)
        reply = pb.InspectResponse()
        if off_loop:
            await converters.encoded_off_loop(reply, 2**31 - 1, payloads)
        else:
            converters.encoded(reply, 2**31 - 1, payloads=payloads)
        await asyncio.sleep(0.01)
    stop.set()
    await ticking
    return sorted(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=36.0, help="reply elements, MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    elements = np.random.default_rng(0).random(int(args.mib * 2**20 / 4), dtype=np.float32)
    worst: dict[bool, list[float]] = {False: [], True: []}
    p99: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for off_loop in (False, True):
            gaps = asyncio.run(_stalls(off_loop, elements))
            worst[off_loop].append(gaps[-1] * 1e3)
            p99[off_loop].append(gaps[int(len(gaps) * 0.99)] * 1e3)
    print("| encoding | longest stall, ms (median of rounds) | p99 gap, ms |\n|---|---|---|")
    for off_loop, name in ((False, "join on the loop"), (True, "join in a thread")):
        print(
            f"| {name} | {statistics.median(worst[off_loop]):.1f} "
            f"| {statistics.median(p99[off_loop]):.1f} |"
        )
    ratio = statistics.median(worst[True]) / statistics.median(worst[False])
    print(f"\nlongest stall, thread / loop: {ratio:.2f}")


if __name__ == "__main__":
    main()
