"""The default (adaptive) batching policy against the two fixed timeouts, under h2load.

Run: ``.venv/bin/python bench/batching_policy.py`` (about four minutes) or ``--quick``.

Three flatscope servers, side by side in rotating order (see throughput.py): the default
policy, ``--batch-timeout 0`` (a pass starts whenever the model is free) and
``--batch-timeout 0.002`` (requests that arrive while a pass runs wait up to 2 ms for
their batch to fill). Batch-1 Predict at 1, 4, 8, 16 and 64 calls in flight. The
default should match the better fixed value at every load (within 3 %, in throughput
and in mean latency).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    flatscope,
    free_port,
    interleaved_predict,
    load_arguments,
    load_parser,
    predict_request,
)

CONCURRENCY = (1, 4, 8, 16, 64)


def main() -> None:
    parser = load_parser(__doc__, CONCURRENCY)
    args = load_arguments(parser)
    concurrency = tuple(args.concurrency)
    servers = {
        "default": flatscope("--metrics-port", str(free_port())),
        "t0": flatscope("--metrics-port", str(free_port()), "--batch-timeout", "0"),
        "t2ms": flatscope("--metrics-port", str(free_port()), "--batch-timeout", "0.002"),
    }
    request = predict_request()
    median = interleaved_predict(servers, args, request)

    print(f"\ndriver: {args.driver}; medians over {args.rounds} round(s) of {args.seconds} s")
    header = " ".join(f"{name + ' req/s mean ms cpu us':>30}" for name in servers)
    print(f"{'in flight':>9} {header}")
    for c in concurrency:
        row = " ".join(
            f"{median(name, c, 'rps'):>14.0f} {median(name, c, 'mean_ms'):>7.2f} "
            f"{median(name, c, 'cpu_us'):>7.0f}"
            for name in servers
        )
        print(f"{c:>9} {row}")
    print("\ndefault vs the better fixed timeout (throughput ratio; mean latency ratio)")
    for c in concurrency:
        best = max(("t0", "t2ms"), key=lambda name: median(name, c, "rps"))
        rps = median("default", c, "rps") / median(best, c, "rps")
        latency = median("default", c, "mean_ms") / median(best, c, "mean_ms")
        print(f"  c={c:<3} best fixed: {best:<5} throughput {rps:.2f}   mean latency {latency:.2f}")


if __name__ == "__main__":
    main()
