"""deploy/prometheus and the Grafana dashboard, against a real Prometheus scraping real servers.

Two ``flatscope serve`` processes run: one under load (good and bad calls), one idle; a third
scrape target is a closed port. A real Prometheus scrapes them every second with
deploy/prometheus/rules.yml loaded, and every PromQL expression of the dashboard and of the
rules must return data through its HTTP API: a panel that would be empty fails the test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_cli import ServerProcess

from flatscope.client import Client
from flatscope.metrics import LATENCY_BUCKETS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "flatscope.json"

METRICS_LOG = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
PROMETHEUS_START = 30.0  # seconds for Prometheus to report ready
LOAD_LIMIT = 60.0  # seconds the load thread runs at most, even if nobody stops it
EVALUATION_TIMEOUT = 45.0  # seconds for every expression to return data once scraping started
HTTP_TIMEOUT = 10.0
# What Grafana substitutes for the dashboard's variables: every job, instance and method, and
# a rate window for a 1 s scrape interval (Grafana takes at least 4 scrape intervals).
VARIABLES = {"job": ".*", "instance": ".*", "grpc_method": ".*", "__rate_interval": "10s"}
# Alerts whose condition the test makes true, with the labels their alert must carry; the
# other alerts' signals are evaluated without their thresholds.
BUSY, IDLE, DEAD = "busy", "idle", "dead"
MADE_TRUE = {
    "FlatscopeHighErrorRatio": {},
    "FlatscopeTargetDown": {"instance": DEAD},
    "FlatscopeInstanceWithoutTraffic": {"instance": IDLE},
}


def tool(name: str) -> str:
    """The path of a Prometheus binary; CI installs them (.ci/run), elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        return response.read()


class MetricsServer:
    """A ``flatscope serve`` process with its /metrics on a known port, and more ``flags``."""

    def __init__(self, log_path: Path, *flags: str):
        self.metrics_port = free_port()
        self.process = ServerProcess(log_path, "--metrics-port", str(self.metrics_port), *flags)

    def start(self) -> MetricsServer:
        self.process.start()
        assert int(self.process.wait_for_log(METRICS_LOG).group(1)) == self.metrics_port
        return self

    @property
    def target(self) -> str:
        return self.process.target

    @property
    def scrape_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            self.process.kill()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MetricsServer]]:
    """Two servers, busy and idle, started side by side (loading a model takes a while)."""
    logs = tmp_path_factory.mktemp("servers")
    started: dict[str, MetricsServer] = {}
    try:
        for name in (BUSY, IDLE):
            started[name] = MetricsServer(logs / f"{name}.log")
        for server in started.values():
            server.start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def call_mix(client: Client, rng: np.random.Generator) -> None:
    """One round of calls: three good ones, and one Inspect of a Conv2D (INVALID_ARGUMENT)."""
    images = rng.random((int(rng.integers(1, 9)), 48, 48, 3), dtype=np.float32)
    client.predict(images)
    client.inspect(images[:1])
    client.metadata()
    with pytest.raises(grpc.RpcError) as caught:
        client.inspect(images[:1], layer="conv")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class Load:
    """Rounds of :func:`call_mix` on a background thread until stopped, for LOAD_LIMIT s at most.

    A quarter of the calls fail, well above the error-ratio alert's 5 %.
    """

    def __init__(self, target: str):
        self.rounds = 0
        self.error: BaseException | None = None
        self._target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=HTTP_TIMEOUT + 5)
        assert not self._thread.is_alive(), "the load thread did not stop"

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + LOAD_LIMIT
        try:
            with Client(self._target, timeout=HTTP_TIMEOUT) as client:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    call_mix(client, rng)
                    self.rounds += 1
                    self._stop.wait(0.02)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


class Prometheus:
    """A real Prometheus on 127.0.0.1 and a free port, and its HTTP API.

    ``labels`` gives a target labels of its own, as service discovery would.
    """

    def __init__(
        self, workdir: Path, targets: list[str], labels: dict[str, dict[str, str]] | None = None
    ):
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "flatscope",
                    "static_configs": [
                        {"targets": [target], "labels": (labels or {}).get(target, {})}
                        for target in targets
                    ],
                }
            ],
        }
        # JSON is YAML: no YAML library needed to write the configuration.
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PROMETHEUS_START
        while True:
            with contextlib.suppress(OSError):
                http_get(f"{self.url}/-/ready")
                return
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after {PROMETHEUS_START} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict | list:
        """GET /api/v1/``path``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as exc:  # 400 for a bad query, with Prometheus' reason
            pytest.fail(f"{path} {params}: {exc.code} {exc.read().decode(errors='replace')}")
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query; its samples."""
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=HTTP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=HTTP_TIMEOUT)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: list[str], labels: dict[str, dict[str, str]] | None = None
) -> Iterator[Prometheus]:
    prometheus = Prometheus(workdir, targets, labels)
    try:
        prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()


def substitute(expr: str) -> str:
    """The expression as Grafana sends it, with the test's VARIABLES."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


def dashboard_queries() -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """``{what: PromQL}`` of every panel target, ``{variable: (label, selector)}``."""
    board = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # the panels of collapsed rows
    exprs = {}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            exprs[f"panel {panel['title']!r} {target['refId']}"] = substitute(target["expr"])
    variables = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"])
            assert match, variable["query"]
            variables[variable["name"]] = (match.group(2), substitute(match.group(1)))
    return exprs, variables


def rule_names_in_file() -> set[str]:
    return set(re.findall(r"^\s*- (?:record|alert): (\S+)$", RULES.read_text(), re.MULTILINE))


def signal_without_threshold(name: str, expr: str) -> str:
    """``S`` of an alert written ``S > T``, with T a latency bucket boundary.

    The test cannot make every alert's condition true: p99 above the 0.25 s SLO would need
    calls slower than the SLO, which healthy servers do not make. For such an alert it
    evaluates the signal that the threshold compares, without the comparison: if the signal
    returns data, the alert watches series that exist, and only the threshold decides.
    """
    match = re.fullmatch(r"(.+\S)\s*>\s*([0-9.]+)", expr.strip(), re.DOTALL)
    assert match, f"alert {name}: expected 'SIGNAL > THRESHOLD', got {expr!r}"
    assert float(match.group(2)) in LATENCY_BUCKETS, f"alert {name}: SLO off the bucket boundaries"
    return match.group(1)


def has_value(samples: list[dict]) -> bool:
    """Whether a sample has a number a panel would draw (NaN draws nothing)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in samples)


def unmet(
    prom: Prometheus,
    exprs: dict[str, str],
    variable_queries: dict[str, tuple[str, str]],
    instances: dict[str, str],
) -> list[str]:
    """What is still missing: empty expressions, empty variables, alerts not active."""
    problems = []
    devices = {s["metric"]["device"] for s in prom.query("flatscope_model_info")}
    for what, expr in exprs.items():
        samples = prom.query(expr)  # fails the test at once on a query Prometheus rejects
        # GPU memory exists only on a GPU: empty (the panel says "no GPU") on CPU servers.
        if "flatscope_gpu_memory_used_bytes" in expr and devices == {"cpu"}:
            continue
        if not has_value(samples):
            problems.append(f"{what}: no data from {expr}")
    for name, (label, selector) in variable_queries.items():
        if not prom.api(f"label/{label}/values", **{"match[]": selector}):
            problems.append(f"variable {name}: no values of {label} in {selector}")
    for rule in [r for g in prom.api("rules")["groups"] for r in g["rules"]]:
        if rule["health"] != "ok":
            problems.append(f"rule {rule['name']}: {rule['health']} {rule.get('lastError')}")
    active = prom.api("alerts")["alerts"]
    for name, labels in MADE_TRUE.items():
        found = [
            alert
            for alert in active
            if alert["labels"]["alertname"] == name
            and alert["state"] in ("pending", "firing")
            and all(instances.get(alert["labels"].get(k)) == v for k, v in labels.items())
        ]
        if not found:
            problems.append(f"alert {name} with {labels}: not pending or firing")
    return problems


# promtool on the committed files and on real /metrics.


def test_promtool_check_rules():
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_names_in_file())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules():
    # Cases a live Prometheus here cannot show: traffic of other APIs and protocols than
    # the load's, and no target at all (rules_test.yml).
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(RULES.with_name("rules_test.yml"))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config():
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_on_scraped_text(servers: dict[str, MetricsServer]):
    server = servers[BUSY]
    with Client(server.target, timeout=HTTP_TIMEOUT) as client:
        call_mix(client, np.random.default_rng(1))
    # An aborted call's status reaches the client before the server's interceptor counts it.
    deadline = time.monotonic() + HTTP_TIMEOUT
    while True:
        text = http_get(f"http://{server.scrape_target}/metrics")
        if b'grpc_code="INVALID_ARGUMENT"' in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert b'grpc_code="INVALID_ARGUMENT"' in text

    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()


# A real Prometheus: every dashboard and rule expression returns data.


def test_every_dashboard_and_rule_expression_returns_data(
    servers: dict[str, MetricsServer], tmp_path: Path
):
    tool("prometheus")
    dead = f"127.0.0.1:{free_port()}"  # bound, noted, closed: nobody listens there
    instances = {servers[BUSY].scrape_target: BUSY, servers[IDLE].scrape_target: IDLE}
    instances[dead] = DEAD
    panel_exprs, variable_queries = dashboard_queries()

    with Load(servers[BUSY].target) as load, running_prometheus(tmp_path, [*instances]) as prom:
        groups = prom.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == rule_names_in_file()
        exprs = dict(panel_exprs)
        for rule in rules:
            expr = rule["query"]
            if rule["type"] == "alerting" and expr.startswith("absent("):
                continue  # no data while targets exist: rules_test.yml covers it
            if rule["type"] == "alerting" and rule["name"] not in MADE_TRUE:
                expr = signal_without_threshold(rule["name"], expr)
            exprs[f"{rule['type']} rule {rule['name']}"] = expr

        deadline = time.monotonic() + EVALUATION_TIMEOUT
        while True:
            assert load.error is None, repr(load.error)
            problems = unmet(prom, exprs, variable_queries, instances)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        rounds = load.rounds

    assert load.error is None, repr(load.error)
    assert rounds > 0
    assert not problems, "\n".join(problems) + f"\n(after {rounds} rounds of calls)"
