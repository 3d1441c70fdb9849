"""How fast ``flatscope serve`` starts: to the port open, to SERVING, and its RSS then.

Run: ``.venv/bin/python bench/startup.py [--runs 5] [--before DIR] [-- SERVE FLAGS]``.

Each run starts ``python -m flatscope serve`` on a free port with /metrics off, and times
from the process' start (Popen) to
  port     the gRPC port accepting TCP connections (polled every 5 ms);
  serving  the health check answering SERVING (polled every 20 ms);
  load     the time between the two (loading, compiling and warming up the model);
then reads the server's RSS (``VmRSS``, after the warm-up passes) and its peak
(``VmHWM``), counts the lines it wrote to stdout and stderr (all, and those at error
level), and stops it with SIGTERM. Prints the median of each per variant.

``--before DIR`` runs a second variant, with ``PYTHONPATH=DIR`` (e.g. an older
``service/`` tree from ``git archive``), interleaved run by run with this tree's, so that
a noisy machine hits both alike, and prints the ratios this/before.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port  # noqa: E402

SERVICE = Path(__file__).resolve().parent.parent / "service"
TIMEOUT = 180.0
# An error-level line: Python logging's "ERROR"/"CRITICAL", or absl/glog's E and F lines
# (TensorFlow's and gRPC's native logs: "E0000 00:00:... file.cc:123] ...").
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|^[EF]\d{4} ", re.MULTILINE)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.05)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one_run(pythonpath: Path, flags: list[str]) -> dict[str, float]:
    """Starts one server, measures it, stops it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATSCOPE_")}
    # The variant's tree first; the rest of this process' path (not this tree) after it.
    others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    others = [p for p in others if Path(p).resolve() != SERVICE]
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *others])
    command = [sys.executable, "-m", "flatscope", "serve", "--port", str(port)]
    command += ["--metrics-port", "0", *flags]
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = started + TIMEOUT
            while not port_open(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no port: {_text(log)}")
                time.sleep(0.005)
            opened = time.monotonic()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"not SERVING: {_text(log)}")
                    time.sleep(0.02)
            serving = time.monotonic()
            rss = proc_status(process.pid, "VmRSS")
            peak = proc_status(process.pid, "VmHWM")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        text = _text(log)
    return {
        "port_s": opened - started,
        "serving_s": serving - started,
        "load_s": serving - opened,
        "rss_mib": rss / 2**20,
        "peak_mib": peak / 2**20,
        "lines": len(text.splitlines()),
        "error_lines": len(ERROR_LINE.findall(text)),
    }


def _text(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts per variant")
    parser.add_argument(
        "--before", type=Path, help="a service/ tree to compare with (run as PYTHONPATH)"
    )
    parser.add_argument("flags", nargs="*", help="more serve flags (after --)")
    args = parser.parse_args()

    variants = {"this": SERVICE}
    if args.before:
        variants["before"] = args.before.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for run in range(args.runs):
        # Rotate the order, so that neither variant always starts right after the other.
        order = list(variants)[run % len(variants) :] + list(variants)[: run % len(variants)]
        for name in order:
            results[name].append(one_run(variants[name], args.flags))
            print(f"run {run + 1} {name}: {_row(results[name][-1])}", file=sys.stderr)

    keys = ("port_s", "serving_s", "load_s", "rss_mib", "peak_mib", "lines", "error_lines")
    print(f"medians of {args.runs} runs (flags: {' '.join(args.flags) or 'none'})")
    print(f"{'':8}" + "".join(f"{key:>12}" for key in keys))
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in keys}
        for name, rows in results.items()
    }
    for name, row in medians.items():
        print(f"{name:8}" + "".join(f"{row[key]:>12.2f}" for key in keys))
    if "before" in medians:
        this, before = medians["this"], medians["before"]
        ratios = "".join(
            f"{this[key] / before[key]:>12.2f}" if before[key] else f"{'-':>12}" for key in keys
        )
        print(f"{'ratio':8}" + ratios)


def _row(result: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.2f}" for key, value in result.items())


if __name__ == "__main__":
    main()
