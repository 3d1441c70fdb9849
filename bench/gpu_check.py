"""Checks flatscope on a GPU: it runs there, agrees with the CPU, and how fast it is.

Run on the GPU machine through ``bench/gpu_check.sh``; ``--device cpu`` runs the same
checks on a machine without one. For each backend it starts two real servers, one on
the device and one on the CPU (the reference), then:
  - checks that metadata reports the device and the backend;
  - compares Predict and Inspect on random inputs with the CPU server (1e-4);
  - measures batch-1 p50/p99 and samples/s at the largest batch (one client,
    sequential calls, so the figures are the server's, not the client's concurrency);
  - reads the GPU memory in use from the server's /metrics.
Prints one summary table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import flatscope, free_port, server_process  # noqa: E402

from flatscope.client import Client  # noqa: E402

MAX_BATCH = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--calls", type=int, default=300, help="batch-1 calls timed")
    args = parser.parse_args()

    rows = []
    for backend in args.backends:
        os.environ["KERAS_BACKEND"] = backend
        metrics_port = free_port()
        device_flags = ("--device", args.device, "--metrics-port", str(metrics_port))
        common_flags = ("--max-batch-size", str(MAX_BATCH))
        cpu_env = {"KERAS_TORCH_DEVICE": "cpu"} if backend == "torch" else {}
        try:
            with server_process(flatscope(*device_flags, *common_flags)) as device:
                os.environ.update(cpu_env)
                with server_process(
                    flatscope("--device", "cpu", "--metrics-port", "0", *common_flags)
                ) as cpu:
                    rows.append(check(backend, device.target, cpu.target, metrics_port, args))
                for name in cpu_env:
                    os.environ.pop(name)
        except Exception as exc:  # one backend failing must not hide the other's table
            rows.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"[:300]})

    print("\nbackend  device  agrees  batch-1 p50 ms  p99 ms  samples/s @256  GPU MiB")
    for row in rows:
        if "error" in row:
            print(f"{row['backend']:<8} FAILED: {row['error']}")
            continue
        print(
            f"{row['backend']:<8} {row['device']:<7} {row['agrees']!s:<7} "
            f"{row['p50']:>14.2f} {row['p99']:>7.2f} {row['throughput']:>15.0f} "
            f"{row['gpu_mib']:>8}"
        )


def check(backend: str, target: str, reference: str, metrics_port: int, args) -> dict:
    rng = np.random.default_rng(0)
    batch = rng.random((8, 48, 48, 3), dtype=np.float32)
    with Client(target, timeout=120) as client, Client(reference, timeout=120) as cpu:
        meta = client.metadata()
        assert meta.backend == backend, meta.backend
        expected_device = "cpu" if args.device == "cpu" else "gpu:0"
        assert meta.device == expected_device, f"runs on {meta.device}, not {expected_device}"
        predicted, reference_prediction = client.predict(batch), cpu.predict(batch)
        inspected = client.inspect(batch, include_source=True)
        reference_inspection = cpu.inspect(batch, include_source=True)
        agrees = bool(
            np.allclose(predicted.outputs, reference_prediction.outputs, atol=1e-4)
            and np.allclose(inspected.flattened, reference_inspection.flattened, atol=1e-4)
            and np.allclose(inspected.source, reference_inspection.source, atol=1e-4)
            and (predicted.classes == reference_prediction.classes).all()
        )
        one = batch[:1]
        for _ in range(20):
            client.predict(one)
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            client.predict(one)
            times.append(time.perf_counter() - start)
        big = rng.random((MAX_BATCH, 48, 48, 3), dtype=np.float32)
        client.predict(big)
        start = time.perf_counter()
        rounds = 20
        for _ in range(rounds):
            client.predict(big)
        throughput = rounds * MAX_BATCH / (time.perf_counter() - start)
    return {
        "backend": backend,
        "device": meta.device,
        "agrees": agrees,
        "p50": statistics.median(times) * 1e3,
        "p99": statistics.quantiles(times, n=100)[-1] * 1e3,
        "throughput": throughput,
        "gpu_mib": _gpu_mib(metrics_port),
    }


def _gpu_mib(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r"^flatscope_gpu_memory_used_bytes (\S+)$", text, re.MULTILINE)
    return f"{float(found.group(1)) / 2**20:.0f}" if found else "-"


if __name__ == "__main__":
    main()
