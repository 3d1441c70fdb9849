"""h2load (nghttp2's C HTTP/2 load generator) as a gRPC load driver.

A gRPC unary call is an HTTP/2 POST whose body is the message framed by a 5-byte prefix
(a compressed flag, then the length, big-endian): h2load sends one fixed body from a
file, so the driver costs a few microseconds of C per request instead of a Python
client's hundreds, and the servers' own costs show. h2load counts an HTTP 200 as a
success, but gRPC errors come with a 200 too, in the ``grpc-status`` trailer: callers
check the server's own count of OK replies (see :func:`grpc_ok_count`).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families


def h2load_binary() -> str:
    """The h2load on PATH; it comes with Debian's ``nghttp2-client``."""
    found = shutil.which("h2load")
    if found is None:
        raise SystemExit("no h2load: apt-get install nghttp2-client (or use --driver python)")
    return found


def grpc_frame(message: Message) -> bytes:
    """``message`` as a gRPC length-prefixed message: flag 0 (uncompressed), length, bytes."""
    payload = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(payload)) + payload


@dataclasses.dataclass(frozen=True)
class Result:
    """One h2load run.

    Attributes:
        requests: Responses received in the measured period (HTTP 200).
        failed: Streams that failed or answered another HTTP status.
        seconds: The measured period.
        latencies: Seconds per request, from h2load's per-request log.
    """

    requests: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        """The ``q``-th percentile latency in ms."""
        if len(self.latencies) < 2:
            return (self.latencies or [0.0])[0] * 1e3
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1e3

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies) * 1e3 if self.latencies else 0.0


def run(
    target: str,
    path: str,
    message: Message,
    in_flight: int,
    seconds: float,
) -> Result:
    """Sends ``message`` to ``path`` on ``target`` with ``in_flight`` calls open, for ``seconds``.

    One connection (as one gRPC channel) with ``in_flight`` concurrent streams.

    Args:
        target: "host:port".
        path: The gRPC method's path, "/package.Service/Method".
        message: The request.
        in_flight: Concurrent streams.
        seconds: The measured period (h2load counts from its first connection).
    """
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "log"
        command = [
            h2load_binary(),
            f"http://{target}{path}",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-c",
            "1",
            "-m",
            str(in_flight),
            "-D",
            f"{max(1, round(seconds * 1000))}ms",
            f"--log-file={log}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return _parse(done.stdout, log.read_text(), seconds)


def _parse(output: str, log: str, seconds: float) -> Result:
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if counts is None:
        raise RuntimeError(f"h2load output not understood:\n{output}")
    latencies = []
    failed = 0
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if fields[1] != "200":
            failed += 1
            continue
        latencies.append(int(fields[2]) / 1e6)
    finished = re.search(r"finished in ([\d.]+)(ms|s|us)", output)
    if finished is not None:  # the measured period as h2load timed it
        scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[finished.group(2)]
        seconds = float(finished.group(1)) * scale
    return Result(
        requests=int(counts.group(2)), failed=failed, seconds=seconds, latencies=latencies
    )


def grpc_codes(metrics_port: int, method: str) -> collections.Counter[str]:
    """flatscope's ``grpc_server_handled_total`` for ``method``, by grpc_code."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    codes: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["grpc_method"] == method:
                codes[sample.labels["grpc_code"]] += int(sample.value)
    return codes
