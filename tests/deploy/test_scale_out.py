"""Scale-out, simulated on loopback: three replicas behind gRPC's client-side load balancing.

In Kubernetes a client resolves the headless Service (dns:///flatscope-headless...:8500) to the
IPs of every ready pod and spreads its calls with the round_robin policy. Here three
``flatscope serve`` processes stand in for the pods, and one gRPC channel lists them in its
target (ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3) with the same service config,
deploy/grpc-service-config.json: round_robin, client-side health checking and retries of
UNAVAILABLE. A real Prometheus scrapes the three /metrics endpoints, as the PodMonitor would,
labelled with a namespace and a pod.

The tests run in file order on the same three replicas; the last one terminates a replica.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_prometheus import MetricsServer, http_get, running_prometheus, tool

from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIG = ROOT / "deploy" / "grpc-service-config.json"
ADAPTER_VALUES = ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml"
SERVICE = "flatscope.v1.ModelService"
REPLICAS = 3
NAMESPACE = "flatscope-test"  # the namespace label Prometheus gives every replica's series
SHUTDOWN_GRACE = "3"  # seconds a terminated replica drains (the server's default is 10)
LOAD_THREADS = 4
LOAD_LIMIT = 60.0  # seconds a load runs at most, even if nobody stops it
MAX_CALLS = 100_000  # calls a load makes at most
CALL_TIMEOUT = 10.0  # seconds per call, retries included
WAIT_TIMEOUT = 45.0  # seconds for any condition the tests wait for
CALLS_PER_REPLICA = 100  # calls each replica serves before shares are compared
MIN_SHARE = 0.2  # of all calls, for each of the three replicas (round_robin: about 1/3)


def pod(index: int) -> str:
    return f"flatscope-{index}"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MetricsServer]]:
    """Three servers, started side by side (loading a model takes a while)."""
    logs = tmp_path_factory.mktemp("replicas")
    started: list[MetricsServer] = []
    try:
        for index in range(REPLICAS):
            flags = ("--shutdown-grace", SHUTDOWN_GRACE)
            started.append(MetricsServer(logs / f"{pod(index)}.log", *flags))
        for server in started:
            server.start()
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def balanced_channel(replicas: list[MetricsServer]) -> Iterator[grpc.Channel]:
    """One channel over all replicas, configured as a Kubernetes client would be."""
    target = "ipv4:" + ",".join(server.target for server in replicas)
    options = [
        ("grpc.service_config", json.dumps(json.loads(SERVICE_CONFIG.read_text()))),
        ("grpc.enable_retries", 1),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        yield channel


class Load:
    """Predict calls from LOAD_THREADS threads over one channel, until stopped.

    Bounded: LOAD_LIMIT seconds and MAX_CALLS calls at most. Every failure is kept.
    """

    def __init__(self, channel: grpc.Channel):
        self.ok = 0
        self.failures: list[str] = []
        self._stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed,), daemon=True)
            for seed in range(LOAD_THREADS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CALL_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def _run(self, seed: int) -> None:
        images = np.random.default_rng(seed).random((1, 48, 48, 3), dtype=np.float32)
        request = pb.PredictRequest(inputs=converters.to_tensor(images))
        deadline = time.monotonic() + LOAD_LIMIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._stub.Predict(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
            else:
                with self._lock:
                    self.ok += 1
            if self.ok + len(self.failures) >= MAX_CALLS:
                return


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_TIMEOUT} s: {what}")
        time.sleep(0.2)


def scrape(server: MetricsServer) -> list:
    """The samples of one replica's /metrics."""
    text = http_get(f"http://{server.scrape_target}/metrics").decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def predict_ok(server: MetricsServer) -> int:
    """Predict calls the replica answered with OK, by its own counter."""
    return sum(
        int(s.value)
        for s in scrape(server)
        if s.name == "grpc_server_handled_total"
        and s.labels["grpc_service"] == SERVICE
        and s.labels["grpc_method"] == "Predict"
        and s.labels["grpc_code"] == "OK"
    )


def served_since(servers: list[MetricsServer], before: list[int]) -> list[int]:
    """Predict calls each server answered with OK since its count was ``before``."""
    return [predict_ok(server) - b for server, b in zip(servers, before, strict=True)]


def predict_buckets(server: MetricsServer) -> dict[float, float]:
    """The replica's cumulative Predict latency buckets, ``{upper bound: count}``."""
    return {
        float(s.labels["le"]): s.value
        for s in scrape(server)
        if s.name == "grpc_server_handling_seconds_bucket"
        and s.labels["grpc_service"] == SERVICE
        and s.labels["grpc_method"] == "Predict"
    }


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative ``{upper bound: count}`` buckets.

    The same arithmetic: the bucket that holds rank q * total, linear inside it; the highest
    finite bound when that is the +Inf bucket.
    """
    bounds = sorted(buckets)
    assert bounds[-1] == math.inf
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == math.inf:
                return lower
            return lower + (upper - lower) * (rank - below) / (buckets[upper] - below)
        lower, below = upper, buckets[upper]
    raise AssertionError("unreachable: the +Inf bucket holds every call")


def only_value(samples: list[dict]) -> float:
    assert len(samples) == 1, samples
    return float(samples[0]["value"][1])


def adapter_query() -> str:
    """The adapter rule's metricsQuery as prometheus-adapter sends it for the three pods."""
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    pods = "|".join(pod(index) for index in range(REPLICAS))
    series = rule["seriesQuery"].split("{")[0]
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{pods}"')
        .replace("<<.GroupBy>>", "pod")
    )


def test_every_replica_serves_a_share_and_prometheus_sums_a_fleet_p99(
    replicas: list[MetricsServer], balanced_channel: grpc.Channel, tmp_path: Path
):
    tool("prometheus")
    assert all(server.process.proc.poll() is None for server in replicas)
    labels = {
        server.scrape_target: {"namespace": NAMESPACE, "pod": pod(index)}
        for index, server in enumerate(replicas)
    }
    before = [predict_ok(server) for server in replicas]

    with running_prometheus(tmp_path, list(labels), labels) as prom:
        with Load(balanced_channel) as load:
            started = time.monotonic()
            # Several scrapes under load, and enough calls on every replica to compare shares.
            wait_until(
                lambda: (
                    time.monotonic() - started > 4
                    and min(served_since(replicas, before)) >= CALLS_PER_REPLICA
                ),
                f"{CALLS_PER_REPLICA} calls on every replica",
            )
            assert load.failures == []
            # prometheus-adapter's query for the HPA: one in-flight average per pod. (Prometheus
            # starts scraping new targets a few seconds after it starts.)
            pods = set(map(pod, range(REPLICAS)))
            wait_until(
                lambda: {s["metric"]["pod"] for s in prom.query(adapter_query())} == pods,
                f"the adapter's query returns {sorted(pods)}",
            )
        assert load.failures == []

        served = served_since(replicas, before)
        assert sum(served) == load.ok, "every successful call was counted by one replica"
        for index, calls in enumerate(served):
            assert calls >= MIN_SHARE * load.ok, f"{pod(index)} served {calls} of {load.ok}"

        # The fleet-wide p99 from buckets summed over the replicas, once Prometheus has scraped
        # every replica after the load stopped: it must equal the same sum taken here.
        summed: dict[float, float] = {}
        for server in replicas:
            for bound, count in predict_buckets(server).items():
                summed[bound] = summed.get(bound, 0.0) + count
        calls = 'sum(grpc_server_handling_seconds_count{grpc_method="Predict"})'
        final = f"{calls} == {summed[math.inf]}"
        wait_until(lambda: prom.query(final) != [], "Prometheus scraped the final counts")
        selector = (
            f'grpc_server_handling_seconds_bucket{{grpc_service="{SERVICE}",grpc_method="Predict"}}'
        )
        assert only_value(prom.query(f"count(count by (instance) ({selector}))")) == REPLICAS
        p99 = only_value(prom.query(f"histogram_quantile(0.99, sum by (le) ({selector}))"))
        assert p99 == pytest.approx(histogram_quantile(0.99, summed), rel=1e-9)
        assert 0 < p99 <= 10

        # The recording rule of deploy/prometheus/rules.yml: the same sum over rates, per job.
        rule = 'job_grpc_method:grpc_server_handling_seconds:p99_rate5m{grpc_method="Predict"}'
        wait_until(lambda: prom.query(rule) != [], f"{rule} has a value")
        assert 0 < only_value(prom.query(rule)) <= 10


def test_terminating_a_replica_under_load_loses_no_call(
    replicas: list[MetricsServer], balanced_channel: grpc.Channel
):
    victim, survivors = replicas[-1], replicas[:-1]
    assert victim.process.proc.poll() is None
    with Load(balanced_channel) as load:
        start = predict_ok(victim)
        wait_until(lambda: predict_ok(victim) - start >= CALLS_PER_REPLICA, "the victim serves")

        victim.process.proc.send_signal(signal.SIGTERM)
        try:
            code = victim.process.proc.wait(timeout=WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the terminated replica did not exit:\n{victim.process.log()}")

        # The survivors carry the load on.
        after = [predict_ok(server) for server in survivors]
        wait_until(
            lambda: min(served_since(survivors, after)) >= CALLS_PER_REPLICA,
            "the survivors serve after the exit",
        )
    assert load.failures == [], f"{len(load.failures)} of {load.ok} calls failed"
    assert load.ok > 0
    assert code == 0, victim.process.log()
    assert "shutting down" in victim.process.log()
