"""deploy/kserve: the ServingRuntime and InferenceService that run flatscope under KServe.

Both are validated against the type tables of KServe's Python SDK (kserve 0.21.0,
``kserve.models``, generated from KServe's OpenAPI definitions), dumped from the installed
package by deploy/kserve/schemas/dump_sdk_types.py into kserve-sdk-types.json (the README there
says how; tests/test_installs.py checks the file is the SDK's). kserve_schemas.py walks each
manifest from its kind's model (V1beta1InferenceService, V1alpha1ServingRuntime) strictly: an
unknown field, a value of the wrong type or a missing required field (one whose SDK setter
refuses None, e.g. the runtime's ``containers``) fails. The parts typed with Kubernetes' models
(metadata, the container with its probes, ports, resources and security) are validated against
Kubernetes' strict schemas (kubernetes-validate's definitions, as the PodMonitor's in
test_k8s_manifests.py).

Not checked: what only a CRD's openAPIV3Schema holds, as KServe's CRDs are not vendored:
minimums (a supported model format's ``priority`` of 0), patterns and enumerations (a memory
limit of "2 GiB": Kubernetes' schemas type a quantity as an integer or a string only), and
fields the CRD requires but the SDK does not (a supported model format's ``name``). Mutated copies
show that each check that is made can fail. The probes' paths are asked of a live server, and
the environment is read by the server's own Settings.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import requests
import yaml
from kserve_schemas import manifest_errors, sdk_errors, sdk_tables
from processes import ServerProcess

from flatscope.settings import Settings

KSERVE = Path(__file__).resolve().parents[2] / "deploy" / "kserve"


def load(name: str) -> dict:
    (obj,) = yaml.safe_load_all((KSERVE / name).read_text())
    return obj


def runtime_container() -> dict:
    (container,) = load("servingruntime.yaml")["spec"]["containers"]
    return container


def mutated(obj: dict, path: tuple, value) -> dict:
    """A deep copy of ``obj`` with the item at ``path`` set to ``value`` (None: removed)."""
    changed = copy.deepcopy(obj)
    *parents, last = path
    target = changed
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return changed


def test_manifests_validate_against_the_sdk_types():
    assert sdk_tables()["kserve"] == "0.21.0"
    for name in ("servingruntime.yaml", "inferenceservice.yaml"):
        assert manifest_errors(load(name)) == [], name


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "protocolVersion"), "v2", "spec.protocolVersion: unknown field"),
        (("spec", "supportedModelFormats", 0, "autoselect"), True, "[0].autoselect: unknown"),
        (("spec", "protocolVersions"), "v2", "'v2' is not a list"),
        (("spec", "multiModel"), "false", "'false' is not a bool"),
        (("spec", "supportedModelFormats", 0, "priority"), "1", "'1' is not a int"),
        (("spec", "containers"), None, "required field 'containers'"),
        (("metadata", "label"), {}, "Additional properties are not allowed ('label'"),
        (("spec", "containers", 0, "readinesProbe"), {}, "('readinesProbe' was unexpected)"),
        (
            ("spec", "containers", 0, "startupProbe", "httpGet", "paht"),
            "/",
            "containers[0].startupProbe.httpGet: Additional properties",
        ),
        (
            ("spec", "containers", 0, "ports", 0, "containerPort"),
            [8501],
            "containers[0].ports[0].containerPort: [8501] is not of type 'integer'",
        ),
    ],
)
def test_a_runtime_of_the_wrong_shape_fails(path: tuple, value, error: str):
    broken = mutated(load("servingruntime.yaml"), path, value)
    (found,) = manifest_errors(broken)
    assert error in found


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "predictor", "minReplica"), 1, "spec.predictor.minReplica: unknown field"),
        (("spec", "predictor", "model", "runtimes"), "flatscope", "runtimes: unknown field"),
        (("spec", "predictor", "maxReplicas"), "4", "'4' is not a int"),
        (("spec", "predictor", "model", "modelFormat", "version"), 3, "3 is not a str"),
        (("spec", "predictor", "model", "modelFormat"), "keras", "is not an object"),
        (("spec", "predictor", "model", "modelFormat"), None, "required field 'modelFormat'"),
        (("spec", "predictor", "model", "args"), "--verbose", "is not a list"),
        (("spec", "predictor", "minReplicas"), True, "True is not a int"),
        (("metadata", "annotation"), {}, "Additional properties are not allowed"),
        (("spec", "predictor", "model", "ports"), [{"containerPort": "8500"}], "V1ContainerPort"),
    ],
)
def test_an_inference_service_of_the_wrong_shape_fails(path: tuple, value, error: str):
    broken = mutated(load("inferenceservice.yaml"), path, value)
    (found,) = manifest_errors(broken)
    assert error in found


def test_every_kubernetes_type_of_the_sdk_is_a_kubernetes_definition():
    for type_name in sdk_tables()["kubernetes_types"]:
        # a number is wrong for each of them: its one definition was found and applied
        assert list(sdk_errors(0, type_name)), type_name


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
