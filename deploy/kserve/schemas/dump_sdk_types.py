"""Writes the KServe Python SDK's type tables for an InferenceService and a ServingRuntime as JSON.

Run with a Python that has the ``kserve`` SDK installed (tests/test_installs.py builds one
under .cache/venvs/beside)::

    .cache/venvs/beside/bin/python deploy/kserve/schemas/dump_sdk_types.py \
        > deploy/kserve/schemas/kserve-sdk-types.json

The SDK's models (``kserve.models``) are generated from KServe's OpenAPI definitions: each class
lists its fields (``attribute_map``: Python name to JSON name) and their types
(``openapi_types``: ``str``, ``int``, ``bool``, ``list[T]``, ``dict(str, T)`` or a model's
name). This script walks them from ``V1beta1InferenceService`` and ``V1alpha1ServingRuntime``
and writes, for every KServe model reached, its JSON field names and types, and the fields it
requires. Types from the ``kubernetes`` client (V1Container, V1ObjectMeta, ...) are listed by
name only: the tests validate those parts against Kubernetes' own schemas. Types the SDK names
but does not define are listed under "undefined".

A field is required when the model's setter refuses ``None``: the generated setters check the
OpenAPI definition's required fields (with client-side validation, the default) and, in
kserve 0.21.0, check nothing else (every ``raise`` in ``kserve.models`` is "must not be
`None`").
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys

import kserve.models
import kubernetes.client.models
from kserve.configuration import Configuration

ROOTS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}
PRIMITIVES = {"str", "int", "bool", "float", "object", "date", "datetime"}


def element_types(type_name: str) -> list[str]:
    """The model or primitive names inside a type (``list[V1EnvVar]`` gives ``V1EnvVar``)."""
    if match := re.fullmatch(r"list\[(.*)\]", type_name):
        return element_types(match.group(1))
    if match := re.fullmatch(r"dict\(str, (.*)\)", type_name):
        return element_types(match.group(1))
    return [type_name]


def required_fields(cls) -> list[str]:
    """The JSON names of the fields whose setter refuses None (with client-side validation)."""
    instance = cls.__new__(cls)
    instance.local_vars_configuration = Configuration()
    assert instance.local_vars_configuration.client_side_validation
    required = []
    for attribute in cls.openapi_types:
        try:
            setattr(instance, attribute, None)
        except ValueError:
            required.append(cls.attribute_map[attribute])
    return sorted(required)


def tables(roots: dict[str, str]) -> dict:
    models: dict[str, dict[str, str]] = {}
    required: dict[str, list[str]] = {}
    kubernetes_types: set[str] = set()
    undefined: set[str] = set()
    pending = list(roots.values())
    while pending:
        name = pending.pop()
        if name in models or name in kubernetes_types or name in undefined:
            continue
        if hasattr(kserve.models, name):
            cls = getattr(kserve.models, name)
            fields = {cls.attribute_map[a]: t for a, t in cls.openapi_types.items()}
            models[name] = dict(sorted(fields.items()))
            if fields_required := required_fields(cls):
                required[name] = fields_required
            pending.extend(
                e for t in fields.values() for e in element_types(t) if e not in PRIMITIVES
            )
        elif hasattr(kubernetes.client.models, name):
            kubernetes_types.add(name)
        else:
            undefined.add(name)
    return {
        "kserve": importlib.metadata.version("kserve"),
        "kubernetes": importlib.metadata.version("kubernetes"),
        "roots": roots,
        "models": dict(sorted(models.items())),
        "required": dict(sorted(required.items())),
        "kubernetes_types": sorted(kubernetes_types),
        "undefined": sorted(undefined),
    }


if __name__ == "__main__":
    json.dump(tables(ROOTS), sys.stdout, indent=1)
    sys.stdout.write("\n")
