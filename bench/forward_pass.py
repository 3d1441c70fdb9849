"""Where a batch-1 request's time goes: model.predict vs the compiled calls vs gRPC.

Run: ``.venv/bin/python bench/forward_pass.py [--rounds 10 --calls 20]``.

Measures, interleaved round by round so that a noisy machine hits every variant alike:
  predict()   Keras' model.predict on one example (what tutorials write);
  compiled    flatscope's compiled forward pass (prediction only);
  compiled+   flatscope's compiled pass that also returns the Flatten tensors;
  grpc        Predict over gRPC on 127.0.0.1 through a real server process;
  grpc-insp   Inspect over gRPC (18,432 extra floats per example).
Prints p50 / p90 per variant and ratios to the compiled call, from one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import flatscope, server_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    args = parser.parse_args()

    import keras

    from flatscope.client import Client
    from flatscope.default_model import model_path
    from flatscope.inference import load_served_model

    served = load_served_model(None)
    model = keras.saving.load_model(model_path(), compile=False)
    x = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)

    with server_process(flatscope("--metrics-port", "0")) as server:
        client = Client(server.target)
        client.wait_ready()
        variants = {
            "predict()": lambda: model.predict(x, verbose=0),
            "compiled": lambda: served.runner.run(x),
            "compiled+": lambda: served.runner.run(x, extras=True),
            "grpc": lambda: client.predict(x),
            "grpc-insp": lambda: client.inspect(x),
        }
        for fn in variants.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                calls = max(1, args.calls // 10) if name == "predict()" else args.calls
                for _ in range(calls):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        client.close()

    base = statistics.median(times["compiled"])
    print(f"{'variant':<11} {'calls':>6} {'p50 ms':>8} {'p90 ms':>8} {'p50 / compiled':>15}")
    for name, samples in times.items():
        p50 = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        ms = f"{p50 * 1e3:>8.2f} {p90 * 1e3:>8.2f}"
        print(f"{name:<11} {len(samples):>6} {ms} {p50 / base:>15.1f}")


if __name__ == "__main__":
    main()
