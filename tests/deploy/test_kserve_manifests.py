"""deploy/kserve: the ServingRuntime and InferenceService that run flatscope under KServe.

Their Kubernetes parts (metadata, the container with its probes, ports and security) are
validated against Kubernetes' strict schemas (kubernetes-validate's definitions, as the
PodMonitor's in test_k8s_manifests.py); the KServe fields are checked one by one below, not
against KServe's published CRD schemas: those are not vendored yet (190 KB and 900 KB of
generated YAML that this machine had no network to fetch). The probes' paths are asked of a
live server, and the environment is read by the server's own Settings.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import requests
import yaml
from processes import ServerProcess
from test_k8s_manifests import definitions_validator

from flatscope.settings import Settings

KSERVE = Path(__file__).resolve().parents[2] / "deploy" / "kserve"
CORE = "io.k8s.api.core.v1."
META = "io.k8s.apimachinery.pkg.apis.meta.v1."


def load(name: str) -> dict:
    (obj,) = yaml.safe_load_all((KSERVE / name).read_text())
    return obj


def runtime_container() -> dict:
    (container,) = load("servingruntime.yaml")["spec"]["containers"]
    return container


def test_objects_validate_against_kubernetes_definitions():
    runtime, service = load("servingruntime.yaml"), load("inferenceservice.yaml")
    for obj in (runtime, service):
        definitions_validator(META + "ObjectMeta").validate(obj["metadata"])
    definitions_validator(CORE + "Container").validate(runtime_container())


def test_a_misspelled_container_field_is_an_error():
    broken = {**runtime_container(), "readinesProbe": {}}
    with pytest.raises(jsonschema.ValidationError):
        definitions_validator(CORE + "Container").validate(broken)


def test_runtime_speaks_v2_on_rest_and_grpc_for_keras_models():
    runtime = load("servingruntime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
    )
    spec = runtime["spec"]
    assert set(spec) <= {"supportedModelFormats", "protocolVersions", "multiModel", "containers"}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["multiModel"] is False
    (model_format,) = spec["supportedModelFormats"]
    assert model_format == {"name": "keras", "version": "3", "autoSelect": True}
    container = runtime_container()
    assert container["name"] == "kserve-container"  # the name KServe merges model fields into
    ports = [(p["name"], p["containerPort"]) for p in container["ports"]]
    assert ports == [("http1", 8501), ("h2c", 8500)]


def test_inference_service_uses_the_runtime():
    service = load("inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    model = service["spec"]["predictor"]["model"]
    runtime = load("servingruntime.yaml")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == {"name": "keras", "version": "3"}
    assert model["protocolVersion"] == "v2"
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_env_and_ports_are_real_settings():
    container = runtime_container()
    fields = {
        e["name"].removeprefix("FLATSCOPE_").lower(): e["value"]
        for e in container["env"]
        if e["name"].startswith("FLATSCOPE_")
    }
    assert set(fields) <= set(Settings.model_fields)
    settings = Settings(**fields)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.http_port, settings.port) == (ports["http1"], ports["h2c"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == settings.http_port


def test_probe_paths_answer_on_a_live_server(rest_server: ServerProcess):
    container = runtime_container()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert requests.get(rest_server.http_url + path, timeout=30).status_code == 200, path
