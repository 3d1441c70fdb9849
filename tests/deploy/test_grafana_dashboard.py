"""The Grafana dashboard: generated from deploy/grafana/dashboard.py, wired to its variables.

Whether its queries return data is tested against a real Prometheus in test_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "deploy" / "grafana" / "dashboard.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "flatscope.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "flatscope.yaml"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flatscope_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_committed_json_is_a_fresh_generation(generator: ModuleType):
    assert DASHBOARD.read_text() == generator.render(), (
        "deploy/grafana/dashboards/flatscope.json is stale: run python deploy/grafana/dashboard.py"
    )


def test_generation_is_deterministic(tmp_path: Path):
    outputs = []
    for seed in ("1", "2"):  # another hash seed: no set or dict order may leak into the JSON
        out = tmp_path / f"seed-{seed}.json"
        result = subprocess.run(
            [sys.executable, str(GENERATOR), str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == DASHBOARD.read_bytes()


def test_every_panel_queries_prometheus_through_the_datasource_variable(board: dict):
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "grpc_method"} <= variables.keys()

    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert 'job=~"$job"' in target["expr"], panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_dashboard_shows_what_the_service_exports(board: dict):
    exprs = " ".join(t["expr"] for panel in panels(board) for t in panel["targets"])
    for metric in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "flatscope_queue_seconds_bucket",
        "flatscope_inference_seconds_bucket",
        "flatscope_batch_size_bucket",
        "flatscope_batch_size_sum",
        "flatscope_requests_in_flight",
        "flatscope_request_bytes_bucket",
        "flatscope_response_bytes_bucket",
        "flatscope_model_info",
        "flatscope_gpu_memory_used_bytes",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in exprs, metric
    # Quantiles over summed bucket rates aggregate across replicas; p50, p90 and p99 per method.
    for q in ("0.5", "0.9", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, grpc_method) "
            "(rate(grpc_server_handling_seconds_bucket{" in exprs
        )


def alert_threshold(name: str) -> float:
    match = re.search(
        rf"- alert: {name}\n\s+expr: .* > ([0-9.]+)\n", RULES.read_text(), re.MULTILINE
    )
    assert match, name
    return float(match.group(1))


def test_threshold_lines_are_the_alert_thresholds(generator: ModuleType):
    assert alert_threshold("FlatscopeHighErrorRatio") == generator.ERROR_RATIO_ALERT
    assert alert_threshold("FlatscopeLatencyP99AboveSLO") == generator.LATENCY_SLO_SECONDS


def test_provisioning_files_name_the_dashboard_folder_and_prometheus():
    provider = PROVIDER.read_text()
    assert "type: file" in provider
    assert re.search(r"^\s+path: /\S+$", provider, re.MULTILINE)
    datasource = DATASOURCE.read_text()
    assert "type: prometheus" in datasource
    assert re.search(r"^\s+url: http://\S+$", datasource, re.MULTILINE)
