"""Prometheus metrics, all on an injected registry, in base units."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
        self.rpcs = RpcCollector()
        registry.register(self.rpcs)
        self.http = HttpCollector()
        registry.register(self.http)
        # Written by the batcher, one forward pass at a time.
        self.inference_seconds = SingleWriterHistogram(
            "flatscope_inference_seconds",
            "Time of one forward pass over a batch, in seconds.",
            ("model",),
            LATENCY_BUCKETS,
            registry,
        )
        self.queue_seconds = SingleWriterHistogram(
            "flatscope_queue_seconds",
            "Time a request waits before its forward pass starts, in seconds.",
            ("model",),
            LATENCY_BUCKETS,
            registry,
        )
        self.batch_size = SingleWriterHistogram(
            "flatscope_batch_size",
            "Examples in one forward pass.",
            ("model",),
            BATCH_BUCKETS,
            registry,
        )
        self.in_flight = Gauge(
            "flatscope_requests_in_flight",
            "Model requests accepted and not yet answered.",
            ("model",),
            registry=registry,
        )
        self.dropped = Counter(
            "flatscope_requests_dropped",
            "Model requests refused or dropped before their forward pass, by reason "
            "(queue_full, cancelled, deadline, concurrency, memory, receive_timeout, "
            "stream_idle, too_large, draining, connections).",
            ("model", "reason"),
            registry=registry,
        )
        self.memory_held = Gauge(
            "flatscope_memory_budget_used_bytes",
            "Bytes of --memory-budget held by model calls (estimated from message sizes).",
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


class Buckets:
    """A histogram's numbers: a count per bucket and the sum of what was observed.

    Args:
        bounds: Upper bounds of the buckets, ascending; +Inf is added.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Counts ``value`` in the first bucket whose bound is >= it (Prometheus' ``le``)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative ``le`` buckets ending with +Inf, sum), from a copy of the counts."""
        counts, total = list(self.counts), self.total
        cumulative = list(itertools.accumulate(counts))
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        return list(zip(edges, cumulative, strict=True)), total


class SingleWriterHistogram(Collector):
    """A labelled histogram for values observed by one thread at a time.

    Its children are plain :class:`Buckets`: no lock, a C bisect instead of a Python
    walk over the buckets (see :class:`RpcMetrics` for what that saves).

    Args:
        name: Metric name, e.g. "flatscope_queue_seconds".
        documentation: The HELP text.
        labelnames: Label names; :meth:`labels` takes their values in this order.
        buckets: Upper bounds of the buckets, ascending.
        registry: Where it is exported; None when another collector exports it.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ):
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(buckets)
        self._children: dict[tuple[str, ...], Buckets] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> Buckets:
        """The child for these label values, made on first use."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Buckets(self._bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, *child.exposition())
        yield family


class RpcMetrics:
    """One method's RPC metrics: plain numbers, updated by the event loop's thread only.

    prometheus_client's metric objects take a lock and walk the buckets in Python on
    every update; in the server at 64 calls in flight its five updates per call cost
    ~35 us of CPU (4-5 % of all the server's CPU per call; measured by turning them
    into no-ops). The gRPC aio server runs every handler and (de)serializer on the
    loop's thread, so no lock is needed; the scrape (another thread) reads copies.
    """

    __slots__ = ("labels", "started", "handled", "seconds", "request_bytes", "response_bytes")

    def __init__(
        self,
        labels: tuple[str, str, str],
        seconds: Buckets,
        request_bytes: Buckets,
        response_bytes: Buckets,
    ):
        self.labels = labels
        self.started = 0
        self.handled: dict[str, int] = {}
        self.seconds = seconds
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes

    def finished(self, code: str, seconds: float) -> None:
        """Records a call that ended with status ``code`` after ``seconds``."""
        self.seconds.observe(seconds)
        self.handled[code] = self.handled.get(code, 0) + 1


class RpcCollector(Collector):
    """Exports every method's :class:`RpcMetrics` with the gRPC ecosystem's names.

    ``grpc_server_started_total``, ``grpc_server_handled_total`` and
    ``grpc_server_handling_seconds`` by (grpc_service, grpc_method, grpc_type), and
    ``flatscope_request_bytes`` / ``flatscope_response_bytes`` by grpc_method (methods
    of the same name in different services share them).
    """

    def __init__(self):
        self._methods: dict[str, RpcMetrics] = {}
        self._seconds = SingleWriterHistogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            RPC_LABELS,
            LATENCY_BUCKETS,
            None,
        )
        self._request_bytes = SingleWriterHistogram(
            "flatscope_request_bytes",
            "Size of request messages on the wire, in bytes.",
            ("grpc_method",),
            BYTE_BUCKETS,
            None,
        )
        self._response_bytes = SingleWriterHistogram(
            "flatscope_response_bytes",
            "Size of response messages on the wire, in bytes.",
            ("grpc_method",),
            BYTE_BUCKETS,
            None,
        )

    def method(self, full_method: str, kind: str) -> RpcMetrics:
        """The metrics of ``/package.Service/Method``, made on first use."""
        found = self._methods.get(full_method)
        if found is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            labels = (service, method, kind)
            found = self._methods[full_method] = RpcMetrics(
                labels,
                self._seconds.labels(*labels),
                self._request_bytes.labels(method),
                self._response_bytes.labels(method),
            )
        return found

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=RPC_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            labels=(*RPC_LABELS, "grpc_code"),
        )
        for rpc in list(self._methods.values()):
            started.add_metric(rpc.labels, rpc.started)
            for code, count in list(rpc.handled.items()):
                handled.add_metric((*rpc.labels, code), count)
        yield started
        yield handled
        for histogram in (self._seconds, self._request_bytes, self._response_bytes):
            yield from histogram.collect()


HTTP_LABELS = ("route", "method")


class HttpCollector(Collector):
    """HTTP requests by route template (e.g. ``/v2/models/{name}/infer``), method and code.

    ``flatscope_http_requests_total`` (with ``code``) and
    ``flatscope_http_request_duration_seconds``; requests that match no route count
    under the route "unmatched", so clients cannot add label values. Updated by the event
    loop's thread only, as :class:`RpcMetrics`.
    """

    def __init__(self):
        self._counts: dict[tuple[str, str, str], int] = {}
        self._seconds = SingleWriterHistogram(
            "flatscope_http_request_duration_seconds",
            "Time from an HTTP request's headers to its response, in seconds.",
            HTTP_LABELS,
            LATENCY_BUCKETS,
            None,
        )

    def finished(self, route: str, method: str, code: int, seconds: float) -> None:
        """Records a request to ``route`` answered with ``code`` after ``seconds``."""
        key = (route, method, str(code))
        self._counts[key] = self._counts.get(key, 0) + 1
        self._seconds.labels(route, method).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "flatscope_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            labels=(*HTTP_LABELS, "code"),
        )
        for labels, count in list(self._counts.items()):
            requests.add_metric(labels, count)
        yield requests
        yield from self._seconds.collect()


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
