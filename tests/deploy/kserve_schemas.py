"""The checks of a KServe manifest against the KServe Python SDK's type tables.

deploy/kserve/schemas/kserve-sdk-types.json holds the tables of ``kserve.models`` (kserve
0.21.0, generated from KServe's OpenAPI definitions; dumped from the installed package by
dump_sdk_types.py): for every model reachable from ``V1beta1InferenceService`` and
``V1alpha1ServingRuntime``, its fields' JSON names and types, and the fields whose setter
refuses None (required). ``sdk_errors`` walks a manifest through them strictly: a field the
model does not list, a value of the wrong type, or a missing required field is an error.
Parts typed with the ``kubernetes`` client's models (V1ObjectMeta, V1Container, ...) are
validated against Kubernetes' strict schemas (kubernetes-validate's definitions, no unknown
fields). What the tables do not hold is not checked: minimums, patterns and enumerations of
KServe's own fields (a CRD's openAPIV3Schema has them; KServe's CRDs are not vendored), and
fields of the types the SDK names but does not define (``undefined``: reported as uncheckable).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from test_k8s_manifests import definitions_validator, kubernetes_definitions

SDK_TABLES = (
    Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "schemas" / "kserve-sdk-types.json"
)


@functools.cache
def sdk_tables() -> dict:
    return json.loads(SDK_TABLES.read_text())


def kubernetes_definition(type_name: str) -> str:
    """The Kubernetes definition a kubernetes-client model stands for (V1Container: ...Container).

    The client names a definition by its version and kind; the one definition ending in them.
    """
    version, kind = re.fullmatch(r"(V\d\w*?)([A-Z]\w*)", type_name).groups()
    suffix = f".{version.lower()}.{kind}"
    (name,) = (n for n in kubernetes_definitions()["$defs"] if n.endswith(suffix))
    return name


PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "date": str,
    "datetime": str,
}


def json_path(parts) -> str:
    """``("spec", "containers", 0)`` as ``.spec.containers[0]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def manifest_errors(obj: dict) -> list[str]:
    """What is wrong with a manifest, as the SDK's model for its kind (InferenceService, ...)."""
    return list(sdk_errors(obj, sdk_tables()["roots"][obj["kind"]]))


def sdk_errors(value, type_name: str, path: str = "") -> Iterator[str]:
    """What is wrong with ``value`` as a ``type_name`` of the KServe SDK's tables."""
    tables = sdk_tables()
    where = path or "(root)"
    if match := re.fullmatch(r"list\[(.*)\]", type_name):
        if not isinstance(value, list):
            yield f"{where}: {value!r} is not a list ({type_name})"
            return
        for i, item in enumerate(value):
            yield from sdk_errors(item, match.group(1), f"{path}[{i}]")
    elif match := re.fullmatch(r"dict\(str, (.*)\)", type_name):
        if not isinstance(value, dict):
            yield f"{where}: {value!r} is not a map ({type_name})"
            return
        for key, item in value.items():
            yield from sdk_errors(item, match.group(1), f"{path}.{key}")
    elif type_name == "object":
        return
    elif type_name in PRIMITIVES:
        if isinstance(value, bool) != (type_name == "bool") or not isinstance(
            value, PRIMITIVES[type_name]
        ):
            yield f"{where}: {value!r} is not a {type_name}"
    elif type_name in tables["models"]:
        fields = tables["models"][type_name]
        if not isinstance(value, dict):
            yield f"{where}: {value!r} is not an object ({type_name})"
            return
        for key in tables["required"].get(type_name, []):
            if key not in value:
                yield f"{where}: required field {key!r} of {type_name} is missing"
        for key, item in value.items():
            inner = f"{path}.{key}" if path else key
            if key not in fields:
                yield f"{inner}: unknown field of {type_name}"
            else:
                yield from sdk_errors(item, fields[key], inner)
    elif type_name in tables["kubernetes_types"]:
        validator = definitions_validator(kubernetes_definition(type_name))
        for error in validator.iter_errors(value):
            inner = (path + json_path(error.absolute_path)).removeprefix(".") or "(root)"
            yield f"{inner}: {error.message} ({type_name})"
    else:
        yield f"{where}: {type_name} is not defined by the SDK, so it cannot be checked here"
