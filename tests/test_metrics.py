"""Metrics after known traffic: exact counts by method and code, on an injected registry."""

from __future__ import annotations

import socket
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import ServerThread, settings
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from flatscope.grpc import converters
from flatscope.metrics import LATENCY_BUCKETS, Buckets
from flatscope.v1 import model_service_pb2 as pb

SERVICE = "flatscope.v1.ModelService"
IMAGES = np.random.default_rng(0).random((3, 48, 48, 3), dtype=np.float32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def traffic():
    """A server with its own registry, after a known mix of good and bad calls."""
    registry = CollectorRegistry()
    server = ServerThread(settings(metrics_port=_free_port()), registry).load_model()
    codes = []
    with server.client() as client:
        for _ in range(4):
            client.predict(IMAGES)  # 4 OK, 3 examples each
        for _ in range(2):
            client.inspect(IMAGES[:1], include_source=True)  # 2 OK, 1 example each
        client.metadata()  # 1 OK
        for call in (
            lambda: client.inspect(IMAGES[:1], layer="conv"),  # INVALID_ARGUMENT
            lambda: client.inspect(IMAGES[:1], layer="conv"),  # INVALID_ARGUMENT
            lambda: client.predict(IMAGES[:, :24]),  # INVALID_ARGUMENT (shape)
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            codes.append(caught.value.code())
        unknown = server.client(model_name="nope")
        with pytest.raises(grpc.RpcError) as caught:
            unknown.predict(IMAGES)  # NOT_FOUND
        codes.append(caught.value.code())
        unknown.close()
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 3 + [grpc.StatusCode.NOT_FOUND]
    _wait_until_all_handled(registry, started=11)
    yield server, registry
    server.stop()


def _wait_until_all_handled(registry: CollectorRegistry, started: int) -> None:
    # The server counts a call right after it sends the status, so the client may see
    # the status a moment before the count lands.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        handled = sum(
            sample.value
            for family in registry.collect()
            if family.name == "grpc_server_handled"
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
        )
        if handled >= started:
            return
        time.sleep(0.01)
    raise AssertionError(f"only {handled} of {started} calls counted as handled")


def _value(registry: CollectorRegistry, name: str, **labels) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_rpc_counts_are_exact_by_method_and_code(traffic):
    _, registry = traffic
    expected = {
        ("Predict", "OK"): 4,
        ("Predict", "INVALID_ARGUMENT"): 1,
        ("Predict", "NOT_FOUND"): 1,
        ("Inspect", "OK"): 2,
        ("Inspect", "INVALID_ARGUMENT"): 2,
        ("GetModelMetadata", "OK"): 1,
    }
    for (method, code), count in expected.items():
        rpc = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": "unary"}
        assert _value(registry, "grpc_server_handled_total", **rpc, grpc_code=code) == count
    for method, count in (("Predict", 6), ("Inspect", 4), ("GetModelMetadata", 1)):
        rpc = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": "unary"}
        assert _value(registry, "grpc_server_started_total", **rpc) == count
        assert _value(registry, "grpc_server_handling_seconds_count", **rpc) == count
        assert _value(registry, "flatscope_request_bytes_count", grpc_method=method) == count
    # Only successful calls send a reply message.
    assert _value(registry, "flatscope_response_bytes_count", grpc_method="Predict") == 4
    assert _value(registry, "flatscope_response_bytes_count", grpc_method="Inspect") == 2


def test_payload_bytes_are_the_wire_sizes(traffic):
    _, registry = traffic

    def size(inputs, model_name=""):
        request = pb.PredictRequest(model_name=model_name, inputs=converters.to_tensor(inputs))
        return request.ByteSize()

    sent = 4 * size(IMAGES) + size(IMAGES[:, :24]) + size(IMAGES, "nope")
    assert _value(registry, "flatscope_request_bytes_sum", grpc_method="Predict") == sent
    # Inspect replies hold the flattened and source tensors: 2 x 18,432 floats each.
    inspect_replies = _value(registry, "flatscope_response_bytes_sum", grpc_method="Inspect")
    assert inspect_replies > 2 * 2 * 18432 * 4


def test_model_timings_and_batch_sizes(traffic):
    _, registry = traffic
    model = {"model": "digits"}
    # Forward passes: 4 Predict and 2 Inspect; bad requests never reach the model.
    assert _value(registry, "flatscope_inference_seconds_count", **model) == 6
    assert _value(registry, "flatscope_queue_seconds_count", **model) == 6
    assert _value(registry, "flatscope_batch_size_count", **model) == 6
    assert _value(registry, "flatscope_batch_size_sum", **model) == 4 * 3 + 2 * 1
    assert _value(registry, "flatscope_inference_seconds_sum", **model) > 0
    assert _value(registry, "flatscope_requests_in_flight", **model) == 0
    info = {"model": "digits", "version": "1", "backend": "tensorflow", "device": "cpu"}
    assert _value(registry, "flatscope_model_info", **info) == 1
    assert _value(registry, "process_resident_memory_bytes") > 0


def test_metrics_endpoint_serves_the_registry(traffic):
    server, registry = traffic
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    rpc = {"grpc_service": SERVICE, "grpc_method": "Predict", "grpc_type": "unary"}
    key = ("grpc_server_handled_total", tuple(sorted({**rpc, "grpc_code": "OK"}.items())))
    assert samples[key] == 4
    assert ("process_cpu_seconds_total", ()) in samples


def test_registries_are_separate_and_metrics_port_can_be_off(traffic):
    _, first = traffic
    registry = CollectorRegistry()
    server = ServerThread(settings(metrics_port=0), registry)
    try:
        assert server.server.metrics_port == 0
        with server.client() as client, pytest.raises(grpc.RpcError) as caught:
            client.predict(IMAGES)  # the model is not loaded yet
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        _wait_until_all_handled(registry, started=1)
        rpc = {"grpc_service": SERVICE, "grpc_method": "Predict", "grpc_type": "unary"}
        assert _value(registry, "grpc_server_handled_total", **rpc, grpc_code="UNAVAILABLE") == 1
        assert _value(first, "grpc_server_handled_total", **rpc, grpc_code="UNAVAILABLE") == 0
        assert (
            _value(
                registry,
                "flatscope_model_info",
                model="digits",
                version="1",
                backend="tensorflow",
                device="cpu",
            )
            == 0
        )
    finally:
        server.stop()


def test_metrics_port_0_measures_nothing():
    server = ServerThread(settings(metrics_port=0), measure=False).load_model()
    try:
        assert server.server.metrics is None and server.server.metrics_port == 0
        with server.client() as client:
            assert client.predict(IMAGES).classes.shape == (3,)
    finally:
        server.stop()


def test_rpc_buckets_expose_what_a_prometheus_client_histogram_would():
    """RpcMetrics keeps its numbers by hand; the client library's Histogram is the oracle."""
    rng = np.random.default_rng(5)
    values = [*LATENCY_BUCKETS, 0.0, 11.0, *rng.exponential(0.01, 500).tolist()]
    registry = CollectorRegistry()
    oracle = Histogram("oracle_seconds", "oracle", buckets=LATENCY_BUCKETS, registry=registry)
    ours = Buckets(LATENCY_BUCKETS)
    for value in values:
        oracle.observe(value)
        ours.observe(value)

    buckets, total = ours.exposition()
    expected = {
        sample.labels["le"]: sample.value
        for sample in next(iter(registry.collect())).samples
        if sample.name == "oracle_seconds_bucket"
    }
    assert dict(buckets) == expected
    assert buckets[-1] == ("+Inf", len(values))
    assert total == pytest.approx(registry.get_sample_value("oracle_seconds_sum"))
