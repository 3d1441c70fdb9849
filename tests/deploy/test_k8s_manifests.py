"""deploy/k8s: each overlay rendered by kustomize and validated against Kubernetes' schemas.

Rendering uses the real kustomize, the one built into kubectl (`kubectl kustomize`): the project's
machines have kubectl, and no PyPI package renders kustomizations (the `kustomize` package
writes them from Python; `pykustomize` needs Python 3.14). Every rendered object is validated
with kubernetes-validate against the strict schemas (unknown fields are errors) of Kubernetes
KUBERNETES_VERSION. The PodMonitor is a Prometheus Operator resource with no schema there: its
metadata and label selector are validated against the Kubernetes definitions they share, and
the rest is checked field by field below, not against the Operator's CRD.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from prometheus_client import CollectorRegistry
from test_container_files import dockerfile_stages, only

import flatscope
from flatscope.metrics import Metrics
from flatscope.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
OVERLAYS = ("cpu", "gpu")
# The newest Kubernetes release whose schemas kubernetes-validate ships.
KUBERNETES_VERSION = "1.37"
KINDS = {
    ("Deployment", "flatscope"),
    ("Service", "flatscope"),
    ("Service", "flatscope-headless"),
    ("HorizontalPodAutoscaler", "flatscope"),
    ("PodDisruptionBudget", "flatscope"),
    ("PodMonitor", "flatscope"),
}
# Seconds the startup probe must allow for importing TensorFlow, loading the model and warming
# it up (a few seconds on this machine's CPU; far more on a slow node or with CUDA start-up).
STARTUP_BUDGET = {"cpu": 180, "gpu": 300}
# Seconds between the end of the drain and SIGKILL, for the process to exit.
EXIT_MARGIN = 5


def kubectl() -> str:
    """kubectl, whose `kustomize` renders the overlays; on the project's machines, else a skip."""
    path = shutil.which("kubectl")
    if path is None:
        message = "kubectl not found: it renders deploy/k8s (kubectl kustomize)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def render(directory: str) -> tuple[dict, ...]:
    """The objects of ``deploy/k8s/<directory>``, rendered by kustomize."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(objects: tuple[dict, ...], kind: str, name: str = "flatscope") -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(objects: tuple[dict, ...]) -> dict:
    (only_container,) = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return only_container


def env_values(objects: tuple[dict, ...]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def flatscope_settings(objects: tuple[dict, ...]) -> dict[str, str]:
    """The FLATSCOPE_* variables of the container, as Settings fields."""
    prefix = "FLATSCOPE_"
    return {
        name.removeprefix(prefix).lower(): value
        for name, value in env_values(objects).items()
        if name.startswith(prefix)
    }


def pod_labels(objects: tuple[dict, ...]) -> dict[str, str]:
    return find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]


def selects_pods(selector: dict[str, str], objects: tuple[dict, ...]) -> bool:
    labels = pod_labels(objects)
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@functools.cache
def kubernetes_definitions() -> dict:
    """kubernetes-validate's strict definitions of Kubernetes KUBERNETES_VERSION, one document.

    Read from its files directly: its API validates whole objects only.
    """
    directory = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    (schemas,) = directory.glob(f"v{KUBERNETES_VERSION}.*-local-strict")
    return json.loads((schemas / "_definitions.json").read_text())


@functools.cache
def definitions_validator(name: str) -> jsonschema.Validator:
    """A validator for one definition of the Kubernetes schemas (e.g. ObjectMeta)."""
    contents = kubernetes_definitions()
    resource = referencing.Resource.from_contents(contents)
    registry = referencing.Registry().with_resource(contents["$id"], resource)
    schema = {"$ref": f"{contents['$id']}#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


# Rendering and schemas.


@pytest.mark.parametrize("directory", ["base", "overlays/cpu", "overlays/gpu"])
def test_kustomize_renders_the_same_objects(directory: str):
    objects = render(directory)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == KINDS
    assert all("namespace" not in o["metadata"] for o in objects), "kubectl apply -n picks it"


def test_every_object_validates_against_kubernetes_schemas(overlay: str):
    validated = []
    for obj in render(f"overlays/{overlay}"):
        if obj["kind"] == "PodMonitor":
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            continue
        version = kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert version == KUBERNETES_VERSION
        validated.append(obj["kind"])
    assert len(validated) == len(KINDS) - 1


def test_podmonitor_metadata_and_selector_validate_against_kubernetes_definitions(overlay: str):
    monitor = find(render(f"overlays/{overlay}"), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    definitions = "io.k8s.apimachinery.pkg.apis.meta.v1."
    definitions_validator(definitions + "ObjectMeta").validate(monitor["metadata"])
    definitions_validator(definitions + "LabelSelector").validate(monitor["spec"]["selector"])


def test_schema_validation_rejects_a_misspelled_field():
    """The validation above can fail: an unknown field is an error in the strict schemas."""
    deployment = find(render("overlays/cpu"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        definitions_validator("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector").validate(
            {"matchLabel": {"app": "flatscope"}}
        )


# The Deployment.


def test_image_matches_the_overlay_and_the_package_version(overlay: str):
    image = container(render(f"overlays/{overlay}"))["image"]
    assert image == f"flatscope:{flatscope.__version__}-{overlay}"


def test_environment_names_real_settings_with_valid_values(overlay: str):
    fields = flatscope_settings(render(f"overlays/{overlay}"))
    assert set(fields) <= set(Settings.model_fields), "an unknown FLATSCOPE_ variable"
    settings = Settings(**fields)  # raises on a value the server would refuse
    assert settings.host == "0.0.0.0"


def test_probes_are_native_grpc_on_the_served_port(overlay: str):
    objects = render(f"overlays/{overlay}")
    main = container(objects)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 8500, "http": 8501, "metrics": 8502}
    settings = Settings(**flatscope_settings(objects))
    served = (settings.port, settings.http_port, settings.metrics_port)
    assert served == (ports["grpc"], ports["http"], ports["metrics"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = main[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == ports["grpc"], probe
        assert spec["grpc"].get("service", "") == "", probe  # the server's overall health
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET[overlay]


def test_termination_grace_outlasts_prestop_and_drain(overlay: str):
    objects = render(f"overlays/{overlay}")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    pause = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env_values(objects)["FLATSCOPE_SHUTDOWN_GRACE"])
    assert pause > 0
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + EXIT_MARGIN


def test_security_context_is_restrictive_and_matches_the_image_user(overlay: str):
    objects = render(f"overlays/{overlay}")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    main = container(objects)
    image_user = only(dockerfile_stages()["runtime"], "USER").arguments  # "UID:GID"
    assert pod["securityContext"]["runAsNonRoot"] is True
    pod_context = pod["securityContext"]
    assert f"{pod_context['runAsUser']}:{pod_context['runAsGroup']}" == image_user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = main["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # The one writable path, for TensorFlow's and Keras' scratch files.
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_have_requests_and_limits_and_one_gpu_only_on_gpu(overlay: str):
    objects = render(f"overlays/{overlay}")
    resources = container(objects)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    gpus = {kind: resources[kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    if overlay == "gpu":
        assert gpus == {"requests": 1, "limits": 1}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    else:
        assert gpus == {"requests": None, "limits": None}
        assert "tolerations" not in pod
    # TensorFlow's thread pool follows the CPU limit, not the node's cores.
    threads = [e for e in container(objects)["env"] if e["name"] == "TF_NUM_INTRAOP_THREADS"]
    assert threads[0]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_rollout_keeps_serving_capacity(overlay: str):
    deployment = find(render(f"overlays/{overlay}"), "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA sets the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selects_pods(deployment["spec"]["selector"]["matchLabels"], render("overlays/cpu"))


# Services, HPA, PDB, PodMonitor.


def test_services_headless_for_client_balancing_and_cluster_ip(overlay: str):
    objects = render(f"overlays/{overlay}")
    port_names = {p["name"] for p in container(objects)["ports"]}
    headless = find(objects, "Service", "flatscope-headless")["spec"]
    cluster = find(objects, "Service", "flatscope")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless.get("publishNotReadyAddresses", False) is False
    assert cluster["type"] == "ClusterIP"
    for spec in (headless, cluster):
        assert selects_pods(spec["selector"], objects)
        assert {p["targetPort"] for p in spec["ports"]} <= port_names
    grpc_ports = [p for p in headless["ports"] if p["targetPort"] == "grpc"]
    assert [(p["port"], p["appProtocol"]) for p in grpc_ports] == [(8500, "kubernetes.io/h2c")]


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def test_hpa_scales_the_deployment_on_cpu_and_in_flight_requests(overlay: str):
    objects = render(f"overlays/{overlay}")
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    target = find(objects, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": target["apiVersion"],
        "kind": "Deployment",
        "name": target["metadata"]["name"],
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    by_type = {m["type"]: m for m in hpa["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    # The pods metric is the one the adapter rule serves.
    assert by_type["Pods"]["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
    assert by_type["Pods"]["pods"]["target"]["type"] == "AverageValue"


def test_adapter_rule_reads_a_metric_the_server_exports():
    rule = adapter_rule()
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    exported = {metric.name for metric in Metrics(CollectorRegistry()).registry.collect()}
    assert series in exported
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert template in rule["metricsQuery"]


def test_pdb_allows_one_disruption_of_the_deployments_pods(overlay: str):
    objects = render(f"overlays/{overlay}")
    pdb = find(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert selects_pods(pdb["selector"]["matchLabels"], objects)
    assert find(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > pdb["maxUnavailable"]


def test_podmonitor_scrapes_the_metrics_port_as_the_job_the_rules_expect(overlay: str):
    objects = render(f"overlays/{overlay}")
    monitor = find(objects, "PodMonitor")["spec"]
    assert selects_pods(monitor["selector"]["matchLabels"], objects)
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # The job name comes from a pod label; rules.yml alerts on up{job="flatscope"}.
    job = pod_labels(objects)[monitor["jobLabel"]]
    assert f'up{{job="{job}"}}' in RULES.read_text()
