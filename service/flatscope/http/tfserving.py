"""TF Serving's REST API: model status, metadata and Predict in the row and columnar formats.

``instances`` (row format) is a list with one entry per example: the input's value, or an
object of input name -> value; the answer is ``predictions``, a list with one entry per
example: the output's value, or, when the signature has several outputs, an object of
output name -> value. ``inputs`` (columnar format) is the batch as one value, or an
object of input name -> batch; the answer is ``outputs``, likewise. Signatures as over
gRPC (see :mod:`flatscope.tfserving_signatures`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from flatscope.errors import InvalidInputError
from flatscope.http import jsonio
from flatscope.http.bodies import json_tensor, parse_json, read_body
from flatscope.http.serving import SERVING, answer, encoded_answer
from flatscope.metadata import ModelDescription, TensorSpec
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import TensorPayload, Wording
from flatscope.tfserving_signatures import (
    PREDICT_METHOD,
    no_version_labels,
    signature_names,
    signature_outputs,
)

ROUTES = web.RouteTableDef()
NAME = "{name:[^/:]+}"
MODEL = f"/v1/models/{NAME}"
VERSION = f"/v1/models/{NAME}/versions/{{version:[^/:]+}}"
LABEL = f"/v1/models/{NAME}/labels/{{label:[^/:]+}}"
WORDING = Wording(dtype="DT_FLOAT", raw="b64", values="values", nested=False)
EXPECTED = "a TF Serving predict request: an object with 'instances' or 'inputs'"
ASK_FOR_LESS = "send fewer instances per request, or a signature with fewer outputs"


@ROUTES.get(MODEL)
@ROUTES.get(VERSION)
@ROUTES.get(LABEL)
async def model_status(request: web.Request) -> web.Response:
    core = request.app[SERVING].core
    name, version = _addressed(request)
    description = core.metadata(name, version)
    return answer(
        {
            "model_version_status": [
                {
                    "version": description.version,
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
    )


@ROUTES.get(MODEL + "/metadata")
@ROUTES.get(VERSION + "/metadata")
@ROUTES.get(LABEL + "/metadata")
async def model_metadata(request: web.Request) -> web.Response:
    core = request.app[SERVING].core
    name, version = _addressed(request)
    description = core.metadata(name, version)
    return answer(metadata(description, core.signature(name, version)))


@ROUTES.post(MODEL + ":predict")
@ROUTES.post(VERSION + ":predict")
@ROUTES.post(LABEL + ":predict")
async def predict(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    core = serving.core
    name, version = _addressed(request)
    signature = core.signature(name, version)
    body, (rows, inputs) = await parse_json(
        await read_body(request, serving.limits),
        EXPECTED,
        lambda body: (body, predict_inputs(body, signature)),
    )
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidInputError("'signature_name' is not a string; expected a signature's name")
    outputs = [output.spec.name for output in signature_outputs(signature, signature_name)]
    result = await core.infer(name, inputs, outputs, version)
    size = sum(array.size for array in result.outputs.values())
    return await encoded_answer(serving, size, ASK_FOR_LESS, predict_answer, result, rows)


def predict_inputs(
    body: dict[str, Any], signature: Signature
) -> tuple[bool, list[tuple[str, TensorPayload]]]:
    """Whether the request is in the row format, and its (name, tensor) pairs.

    Raises:
        InvalidInputError: Neither or both formats, or values that are no rectangular
            list of numbers.
    """
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInputError(
            "the request must have exactly one of 'instances' (row format) and 'inputs' "
            "(columnar format)"
        )
    only = signature.input.name
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInputError("'instances' is not a non-empty list; send one per example")
        if all(isinstance(instance, dict) for instance in instances):
            names = list(dict.fromkeys(key for instance in instances for key in instance))
            columns = {}
            for key in names:
                missing = [k for k, instance in enumerate(instances) if key not in instance]
                if missing:
                    raise InvalidInputError(
                        f"instances {missing[:8]} have no '{key}'; every instance must name "
                        "the same inputs"
                    )
                columns[key] = [instance[key] for instance in instances]
            return True, [(key, _tensor(key, value)) for key, value in columns.items()]
        return True, [(only, _tensor(only, instances))]
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        return False, [(key, _tensor(key, value)) for key, value in inputs.items()]
    return False, [(only, _tensor(only, inputs))]


def predict_answer(result: NamedResult, rows: bool) -> bytes:
    """The JSON answer: ``predictions`` for the row format, else ``outputs``."""
    arrays = {
        name: np.ascontiguousarray(array, dtype=np.float32)
        for name, array in result.outputs.items()
    }
    if rows:
        count = len(next(iter(arrays.values())))
        if len(arrays) == 1:
            body: Any = {"predictions": next(iter(arrays.values()))}
        else:
            body = {"predictions": [{n: v[k] for n, v in arrays.items()} for k in range(count)]}
    elif len(arrays) == 1:
        body = {"outputs": next(iter(arrays.values()))}
    else:
        body = {"outputs": arrays}
    return jsonio.dumps(body)


def metadata(description: ModelDescription, signature: Signature) -> dict[str, Any]:
    """GetModelMetadata's answer in TF Serving's JSON: every signature's inputs and outputs."""
    definitions = {}
    for name in signature_names(signature):
        definitions[name] = {
            "inputs": {signature.input.name: _tensor_info(signature.input)},
            "outputs": {
                output.spec.name: _tensor_info(output.spec)
                for output in signature_outputs(signature, name)
            },
            "method_name": PREDICT_METHOD,
        }
    return {
        "model_spec": {
            "name": description.name,
            "signature_name": "",
            "version": description.version,
        },
        "metadata": {"signature_def": {"signature_def": definitions}},
    }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    # int64 dims as strings: TF Serving's REST API prints its protos in proto3 JSON.
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape]
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name,
    }


def _tensor(name: str, value: Any) -> TensorPayload:
    return json_tensor(f"input '{name}'", value, WORDING)


def _addressed(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    if "label" in info:
        raise no_version_labels(info["label"])
    return info["name"], info.get("version", "")
