"""Prometheus metrics, all on an injected registry, in base units."""

from __future__ import annotations

from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# 100 us to 10 s, about three buckets per decade.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# 256 B to 64 MiB, a factor of 4 apart.
BYTE_BUCKETS = tuple(256 * 4**k for k in range(10))

RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")


class Metrics:
    """Every metric flatscope exports.

    Args:
        registry: Where the metrics live; tests pass a fresh ``CollectorRegistry()``.
        process: Also export process CPU and memory (the client library's collector).
    """

    def __init__(self, registry: CollectorRegistry, process: bool = True):
        self.registry = registry
        self.rpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            RPC_LABELS,
            registry=registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*RPC_LABELS, "grpc_code"),
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "flatscope_request_bytes",
            "Size of request messages on the wire, in bytes.",
            ("grpc_method",),
            buckets=BYTE_BUCKETS,
            registry=registry,
        )
        self.response_bytes = Histogram(
            "flatscope_response_bytes",
            "Size of response messages on the wire, in bytes.",
            ("grpc_method",),
            buckets=BYTE_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "flatscope_inference_seconds",
            "Time of one forward pass over a batch, in seconds.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "flatscope_queue_seconds",
            "Time a request waits before its forward pass starts, in seconds.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "flatscope_batch_size",
            "Examples in one forward pass.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "flatscope_requests_in_flight",
            "Model requests accepted and not yet answered.",
            ("model",),
            registry=registry,
        )
        self.dropped = Counter(
            "flatscope_requests_dropped",
            "Model requests dropped before their forward pass, by reason "
            "(queue_full, cancelled, deadline).",
            ("model", "reason"),
            registry=registry,
        )
        self.model_info = Gauge(
            "flatscope_model_info",
            "The served model; always 1.",
            ("model", "version", "backend", "device"),
            registry=registry,
        )
        if process:
            ProcessCollector(registry=registry)

    def set_model(self, model: str, version: str, backend: str, device: str) -> None:
        """Records the served model in ``flatscope_model_info``."""
        self.model_info.clear()
        self.model_info.labels(model, version, backend, device).set(1)

    def watch_gpu_memory(self, read_bytes: Callable[[], int]) -> None:
        """Exports ``flatscope_gpu_memory_used_bytes`` read from ``read_bytes`` at scrape."""
        self.registry.register(_GpuMemoryCollector(read_bytes))


class _GpuMemoryCollector(Collector):
    def __init__(self, read_bytes: Callable[[], int]):
        self._read_bytes = read_bytes

    def collect(self):
        family = GaugeMetricFamily(
            "flatscope_gpu_memory_used_bytes", "GPU memory in use by the model's framework."
        )
        family.add_metric([], float(self._read_bytes()))
        yield family


def serve_metrics(metrics: Metrics, host: str, port: int) -> WSGIServer:
    """Serves ``/metrics`` over HTTP on a background thread; returns the server.

    Its ``server_port`` is the bound port (useful with ``port=0``); call ``shutdown()``
    and ``server_close()`` to stop it.
    """
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
