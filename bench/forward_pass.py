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
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    args = parser.parse_args()

    import keras

    from flatscope.client import Client
    from flatscope.inference import load_served_model

    served = load_served_model(None)
    model = keras.saving.load_model(_default_path(), compile=False)
    x = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp, _server(Path(tmp)) as target:
        client = Client(target)
        client.wait_ready()
        variants = {
            "predict()": lambda: model.predict(x, verbose=0),
            "compiled": lambda: served.runner.predict(x),
            "compiled+": lambda: served.runner.inspect(x, "flatten"),
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


def _default_path() -> Path:
    from flatscope.default_model import model_path

    return model_path()


class _server:
    """A real `flatscope serve` process on 127.0.0.1 with an OS-assigned port."""

    def __init__(self, tmp: Path):
        self._log = tmp / "server.log"

    def __enter__(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flatscope", "serve", "--port", "0", "--metrics-port", "0"],
            stdout=self._log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"listening on (127\.0\.0\.1:\d+)", self._log.read_text())
            if found:
                return found.group(1)
            if self._process.poll() is not None:
                break
            time.sleep(0.1)
        self._process.kill()
        raise RuntimeError(f"server did not start:\n{self._log.read_text()}")

    def __exit__(self, *exc_info) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


if __name__ == "__main__":
    main()
