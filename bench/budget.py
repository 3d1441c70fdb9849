"""Where a Predict request's CPU goes: flatscope's request path cut layer by layer.

Run: ``.venv/bin/python bench/budget.py`` (about four minutes; ``--quick`` one).

Five servers answer batch-1 Predict calls (27 KB), each one layer more of flatscope
than the one before, side by side in interleaved rounds (fresh servers every round,
rotated order), driven by h2load at 1, 8 and 64 in flight:

  echo        a bare gRPC server with a fixed reply (bench/echo_server.py): the transport
  grpc-layer  flatscope's gRPC layer with the echo's reply: server options, interceptor
              (receive timeout, admission, metrics), generic handlers; no core
  inline      the whole request path (decode and checks, batcher, reply) serving a model
              that does almost no work, its passes run on the event loop's thread
  ceiling     the same with the passes on the model's thread, as flatscope runs them
  model       flatscope as it serves: the default model

(the first two and ``inline`` come from ``bench/layer_server.py``). The budget is what
each layer adds to the server's CPU time per request (all threads, from /proc; and the
event loop's thread alone), medians over rounds: a neighbour's load slows a server but
adds little to its CPU time, so these differences hold better than throughput does on
a shared machine. Prints requests/s too, with each server's ratio to the echo.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    ceiling_model,
    flatscope,
    free_port,
    interleaved_predict,
    load_arguments,
    load_parser,
    predict_request,
)

CONCURRENCY = (1, 8, 64)
# (row, the server with the layer, the server without it)
LAYERS = (
    ("transport (gRPC, HTTP/2, the kernel)", "echo", None),
    ("flatscope's gRPC layer", "grpc-layer", "echo"),
    ("decode, checks, batcher, reply, no-work pass", "inline", "grpc-layer"),
    ("hand-off to the model's thread and back", "ceiling", "inline"),
    ("the default model's pass (batch as formed)", "model", "ceiling"),
)


def main() -> None:
    args = load_arguments(load_parser(__doc__, CONCURRENCY))
    concurrency = tuple(args.concurrency)
    predict = predict_request()
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = ceiling_model(Path(tmp))
        layer = [sys.executable, str(HERE / "layer_server.py")]
        servers = {
            "echo": [sys.executable, str(HERE / "echo_server.py"), "0"],
            "grpc-layer": [*layer, "grpc-layer", *_serve_flags()],
            "inline": [*layer, "inline", *_serve_flags("--model", ceiling)],
            "ceiling": flatscope("--metrics-port", str(free_port()), "--model", ceiling),
            "model": flatscope("--metrics-port", str(free_port())),
        }
        median = interleaved_predict(servers, args, predict)

    print(f"\ndriver: {args.driver}; medians over {args.rounds} round(s) of {args.seconds} s")
    columns = " ".join(f"{'c=' + str(c):>26}" for c in concurrency)
    print(f"{'server':<11} {columns}")
    heads = " ".join(f"{'req/s  /echo  CPU us  loop':>26}" for _ in concurrency)
    print(f"{'':<11} {heads}")
    for name in servers:
        row = " ".join(
            f"{median(name, c, 'rps'):>7.0f} "
            f"{median(name, c, 'rps') / median('echo', c, 'rps'):>6.2f} "
            f"{median(name, c, 'cpu_us'):>7.0f} {median(name, c, 'loop_cpu_us'):>5.0f}"
            for c in concurrency
        )
        print(f"{name:<11} {row}")

    print("\nbudget: CPU per request each layer adds, in us (all threads / the event loop's)")
    width = max(len(layer) for layer, _, _ in LAYERS)
    print(f"{'':<{width}} " + " ".join(f"{'c=' + str(c):>13}" for c in concurrency))
    for label, name, below in LAYERS:
        cells = []
        for c in concurrency:
            cpu, loop = median(name, c, "cpu_us"), median(name, c, "loop_cpu_us")
            if below is not None:
                cpu -= median(below, c, "cpu_us")
                loop -= median(below, c, "loop_cpu_us")
            cells.append(f"{cpu:>7.0f} {loop:>5.0f}")
        print(f"{label:<{width}} " + " ".join(cells))
    totals = " ".join(
        f"{median('model', c, 'cpu_us'):>7.0f} {median('model', c, 'loop_cpu_us'):>5.0f}"
        for c in concurrency
    )
    print(f"{'total (model)':<{width}} {totals}")


def _serve_flags(*flags: str) -> list[str]:
    """``flatscope serve``'s flags as :func:`common.flatscope` gives them."""
    return [*flatscope("--metrics-port", str(free_port()), *flags)[4:]]


if __name__ == "__main__":
    main()
