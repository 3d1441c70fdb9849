"""What dispatching a call costs the event loop, measured in one process, side by side.

Run: ``.venv/bin/python bench/dispatch.py [--rounds 5]``.

1. grpc.aio's wait for the next call: it keeps one pending task per *registered* method
   and waits on all of them (``asyncio.wait``, FIRST_COMPLETED) each time a call
   arrives. Compared: 2 tasks (flatscope's services as generic handlers, reflection's one
   registered method) and 23 (every method of its services registered, as the generated
   ``add_..._to_server`` does).
2. A forward pass's hop from the event loop to the model's thread and back, with no work
   in the thread: through a ThreadPoolExecutor (as the batcher runs passes) and through a
   bare thread and queue.

Prints microseconds of wall and CPU time per wait or hop (medians over rounds) and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import queue
import statistics
import threading
import time

from flatscope.cli import event_loop_factory

CALLS = 3000


async def _wait_on(tasks_count: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(tasks_count)]
    tasks = [asyncio.ensure_future(f) for f in futures]
    start, cpu = time.perf_counter(), time.process_time()
    for k in range(CALLS):
        slot = k % tasks_count
        waiting = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED))
        await asyncio.sleep(0)
        futures[slot].set_result(None)  # a call arrives for one method
        await waiting
        futures[slot] = loop.create_future()
        tasks[slot] = asyncio.ensure_future(futures[slot])
    for task in tasks:
        task.cancel()
    return _per_call(start, cpu)


async def _hop_pool() -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(CALLS):
            answer = loop.create_future()

            def done(ran: concurrent.futures.Future, answer=answer) -> None:
                loop.call_soon_threadsafe(answer.set_result, ran.result())

            pool.submit(int).add_done_callback(done)
            await answer
        return _per_call(start, cpu)


async def _hop_thread() -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    work: queue.SimpleQueue = queue.SimpleQueue()

    def serve() -> None:
        while (item := work.get()) is not None:
            function, answer = item
            loop.call_soon_threadsafe(answer.set_result, function())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(CALLS):
        answer = loop.create_future()
        work.put((int, answer))
        await answer
    result = _per_call(start, cpu)
    work.put(None)
    thread.join()
    return result


def _per_call(start: float, cpu: float) -> tuple[float, float]:
    return (
        (time.perf_counter() - start) / CALLS * 1e6,
        (time.process_time() - cpu) / CALLS * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "wait, 2 tasks": lambda: _wait_on(2),
        "wait, 23 tasks": lambda: _wait_on(23),
        "hop, thread pool": _hop_pool,
        "hop, bare thread": _hop_thread,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
        for _ in range(args.rounds):
            for name, case in cases.items():
                results[name].append(runner.run(case()))
    medians = {
        name: (statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows))
        for name, rows in results.items()
    }
    print(f"{'case':<18} {'wall us':>8} {'CPU us':>8}")
    for name, (wall, cpu) in medians.items():
        print(f"{name:<18} {wall:>8.1f} {cpu:>8.1f}")
    for many, few in (
        ("wait, 23 tasks", "wait, 2 tasks"),
        ("hop, thread pool", "hop, bare thread"),
    ):
        print(f"{many} / {few}: CPU {medians[many][1] / medians[few][1]:.2f}x")


if __name__ == "__main__":
    main()
