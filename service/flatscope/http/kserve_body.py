"""KServe v2 REST bodies: JSON tensors and the binary tensor data extension.

A body with binary data starts with the JSON header, whose length the
``Inference-Header-Content-Length`` header gives; the binary tensors follow in the order
of the tensors whose ``binary_data_size`` parameter says their length (Triton's
extension, which ``tritonclient.http`` speaks). Replies send an output as binary when its
``binary_data`` parameter is true, or, when not set, the request's ``binary_data_output``
is; else as a JSON ``data`` list (row-major, flat).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from flatscope.errors import InvalidInputError
from flatscope.http import jsonio
from flatscope.http.bodies import float_array
from flatscope.open_inference import (
    BYTES,
    CLASSIFICATION,
    FP32,
    bytes_tensor,
    check_parameters,
    classification,
    layout_parameters,
    requested_twice,
)
from flatscope.signature import NamedResult
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY = "binary_data"
BINARY_OUTPUT = "binary_data_output"
WORDING = Wording(dtype=FP32, raw="binary data", values="data", nested=False)
READS = (
    f"only an input's '{BINARY_SIZE}', an output's '{BINARY}' and '{CLASSIFICATION}' "
    f"(a class count), and the request's '{BINARY_OUTPUT}'"
)
EXPECTED = "a KServe v2 inference request object with 'inputs'"


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A KServe v2 REST inference request, read.

    Attributes:
        id: The request's ``id``, echoed in the reply.
        inputs: (name, tensor) pairs.
        outputs: Requested output name -> its class count (0: the tensor itself).
        binary: Requested output name -> whether it goes as binary data.
        binary_default: Whether outputs not named in ``binary`` go as binary data.
    """

    id: str
    inputs: list[tuple[str, TensorPayload]]
    outputs: dict[str, int]
    binary: dict[str, bool]
    binary_default: bool


def split(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary section of a body.

    Raises:
        InvalidInputError: ``Inference-Header-Content-Length`` is no length within the body.
    """
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(view):
        raise InvalidInputError(
            f"{HEADER_LENGTH} is '{header_length[:40]}'; expected the byte length of the JSON "
            f"header at the start of the body, between 0 and the body's {len(view)} bytes"
        )
    return view[:length], view[length:]


def infer_request(request: dict[str, Any], binary: memoryview) -> InferRequest:
    """Reads a parsed inference request and its binary section.

    Raises:
        InvalidInputError: A malformed tensor, a datatype other than FP32, binary sizes
            that do not add up to the binary section, or a parameter not honoured.
    """
    parameters = _parameters("the request", request)
    check_parameters("the request", parameters, READS, honoured=(BINARY_OUTPUT,))
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list):
        raise InvalidInputError(f"'inputs' is {_kind(inputs_json)}; expected a list of tensors")
    inputs = []
    offset = 0
    for k, tensor in enumerate(inputs_json):
        if not isinstance(tensor, dict):
            raise InvalidInputError(f"inputs[{k}] is {_kind(tensor)}; expected a tensor object")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInputError(f"inputs[{k}] has no string 'name'")
        what = f"input '{name}'"
        params = _parameters(what, tensor)
        check_parameters(what, params, READS, honoured=(BINARY_SIZE,))
        datatype = tensor.get("datatype")
        if datatype != FP32:
            given = "no 'datatype'" if datatype is None else f"datatype '{str(datatype)[:40]}'"
            raise InvalidInputError(
                f"{what} has {given}; the model takes {FP32} (as little-endian "
                f"float32 binary data, or a JSON 'data' list of numbers)"
            )
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise InvalidInputError(f"{what} has shape {_short(shape)}; expected a list of ints")
        raw: bytes | memoryview = b""
        values: Any = ()
        if BINARY_SIZE in params:
            size = params[BINARY_SIZE]
            if type(size) is not int or size < 0:
                raise InvalidInputError(
                    f"{what} sets '{BINARY_SIZE}' to {_short(size)}; expected a byte count"
                )
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"{what} has {BINARY_SIZE} {size} from byte {offset} of the binary data, "
                    f"which has only {len(binary)} bytes (after the {HEADER_LENGTH} bytes of "
                    "JSON); send every input's bytes, in the order of 'inputs'"
                )
            raw = binary[offset : offset + size]
            offset += size
            if "data" in tensor:
                raise InvalidInputError(f"{what} has both 'data' and {BINARY_SIZE}; send one")
        else:
            values = _values(what, tensor.get("data"))
        inputs.append((name, TensorPayload(ACCEPTED_DTYPE, shape, raw, values, WORDING)))
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary)} bytes of binary data after the JSON header, but the "
            f"inputs' {BINARY_SIZE} parameters add up to {offset}; check {HEADER_LENGTH}"
        )
    outputs, chosen = _outputs(request.get("outputs", []))
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError(
            f"'id' is {jsonio.dumps(request_id)[:60].decode(errors='replace')}; "
            "expected a JSON string (the Open Inference Protocol's request id)"
        )
    return InferRequest(
        request_id,
        inputs,
        outputs,
        chosen,
        parameters.get(BINARY_OUTPUT) is True,
    )


def _outputs(outputs_json: Any) -> tuple[dict[str, int], dict[str, bool]]:
    if not isinstance(outputs_json, list):
        raise InvalidInputError(f"'outputs' is {_kind(outputs_json)}; expected a list")
    outputs: dict[str, int] = {}
    binary: dict[str, bool] = {}
    for k, output in enumerate(outputs_json):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise InvalidInputError(f"outputs[{k}] is not an object with a string 'name'")
        what = f"output '{name}'"
        params = _parameters(what, output)
        check_parameters(what, params, READS, honoured=(BINARY, CLASSIFICATION))
        count = params.get(CLASSIFICATION, 0)
        if CLASSIFICATION in params and (type(count) is not int or count < 1):
            raise InvalidInputError(
                f"{what} sets '{CLASSIFICATION}' to {_short(count)}; expected a class count "
                "of 1 or more"
            )
        if outputs.setdefault(name, count) != count:
            raise requested_twice(name, (outputs[name], count))
        if BINARY in params:
            binary[name] = params[BINARY] is True
    return outputs, binary


def infer_response(
    result: NamedResult, request: InferRequest, labels: dict[str, tuple[str, ...]]
) -> tuple[bytes, list[bytes]]:
    """The reply: its JSON header, and the binary parts that follow it (maybe none).

    The layout of an inspected Flatten layer goes in ``parameters``, as over gRPC.
    """
    reply: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if request.id:
        reply["id"] = request.id
    if result.layout is not None:
        reply["parameters"] = layout_parameters(result.layout)
    outputs = reply["outputs"] = []
    parts: list[bytes] = []
    for name, array in result.outputs.items():
        count = request.outputs.get(name, 0)
        binary = request.binary.get(name, request.binary_default)
        if count:
            array = classification(array, count, labels.get(name, ()))
            datatype = BYTES
        else:
            array = np.ascontiguousarray(array, dtype="<f4")
            datatype = FP32
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            data = bytes_tensor(array) if count else array.tobytes()
            output["parameters"] = {BINARY_SIZE: len(data)}
            parts.append(data)
        elif count:
            output["data"] = [item.decode() for item in array.ravel()]
        else:
            output["data"] = array.ravel()
        outputs.append(output)
    return jsonio.dumps(reply), parts


def _parameters(what: str, message: dict[str, Any]) -> dict[str, Any]:
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"{what} has 'parameters' {_kind(parameters)}; expected an object")
    return parameters


def _values(what: str, data: Any) -> np.ndarray:
    if data is None:
        raise InvalidInputError(
            f"{what} has neither 'data' nor a {BINARY_SIZE} parameter; send its values "
            "in one of them"
        )
    return float_array(f"the 'data' of {what}", data).reshape(-1)


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a JSON {type(value).__name__}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
