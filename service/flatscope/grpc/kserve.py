"""The Open Inference Protocol (KServe v2) servicer: ``inference.GRPCInferenceService``.

The message classes are the ones ``tritonclient`` ships (Triton's ``grpc_service.proto``
is the KServe v2 ``grpc_predict_v2.proto`` plus Triton's own methods, with the same
field numbers for every message used here; ``tests/grpc/test_kserve.py`` checks them).
Only the six KServe v2 methods below are served; the rest answer UNIMPLEMENTED.

Replies carry every tensor in ``raw_output_contents``, whatever encoding the request used,
as Triton does: ``tritonclient``'s ``as_numpy`` reads only those.
"""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

import flatscope
from flatscope.errors import InvalidInputError
from flatscope.grpc import converters
from flatscope.grpc.methods import PartialServicer
from flatscope.grpc.servicer import call_deadline
from flatscope.layout import FlattenLayout
from flatscope.metadata import ModelDescription, TensorSpec
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
)
FP32 = "FP32"
WORDING = Wording(
    dtype=FP32, raw="raw_input_contents", values="contents.fp32_contents", nested=False
)
ASK_FOR_LESS = "send fewer examples per request, or leave '<layer>/source' out of the outputs"
# Parameters that ask for what this server does not do; others are ignored.
UNSUPPORTED_PARAMETERS = {
    "classification": "classification (top-k) outputs",
    "shared_memory_region": "shared-memory tensors",
    "shared_memory_byte_size": "shared-memory tensors",
    "shared_memory_offset": "shared-memory tensors",
}


class InferenceServicer(PartialServicer, service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves the KServe v2 methods from a ModelCore.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
    """

    service = SERVICE
    methods = METHODS

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._core.is_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="flatscope", version=flatscope.__version__)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context
    ) -> pb.ModelMetadataResponse:
        description = self._core.metadata(request.name, request.version)
        return model_metadata(description, self._core.signature(request.name, request.version))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        inputs, outputs = infer_request(request)
        result = await self._core.infer(
            request.model_name, inputs, outputs, request.model_version, call_deadline(context)
        )
        reply = infer_response(result, request.id)
        return converters.encoded(reply, self._max_reply_bytes, ASK_FOR_LESS)


def model_metadata(description: ModelDescription, signature: Signature) -> pb.ModelMetadataResponse:
    """The ModelMetadataResponse: the input, the prediction and every Flatten tensor."""
    return pb.ModelMetadataResponse(
        name=description.name,
        versions=[description.version],
        platform=f"keras_{description.backend}",
        inputs=[_tensor_metadata(signature.input)],
        outputs=[_tensor_metadata(output.spec) for output in signature.outputs],
    )


def infer_request(
    request: pb.ModelInferRequest,
) -> tuple[list[tuple[str, TensorPayload]], list[str]]:
    """Reads a ModelInferRequest: (name, tensor) pairs and the requested output names.

    Raises:
        InvalidInputError: A datatype other than FP32, typed contents other than
            ``fp32_contents``, a ``raw_input_contents`` count that does not match the
            inputs, or a parameter asking for what this server does not do.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of inputs"
        )
    inputs = []
    for k, tensor in enumerate(request.inputs):
        name = tensor.name
        _check_parameters(f"input '{name}'", tensor.parameters)
        if tensor.datatype != FP32:
            raise InvalidInputError(
                f"input '{name}' has datatype '{tensor.datatype}'; the model takes {FP32} "
                "(as little-endian float32 in raw_input_contents, or contents.fp32_contents)"
            )
        values = ()
        if tensor.HasField("contents"):
            for field, _ in tensor.contents.ListFields():
                if field.name != "fp32_contents":
                    raise InvalidInputError(
                        f"input '{name}' carries contents.{field.name}; {FP32} values go "
                        "in contents.fp32_contents (or raw_input_contents)"
                    )
            values = tensor.contents.fp32_contents
        payload = TensorPayload(
            ACCEPTED_DTYPE, tensor.shape, raw[k] if raw else b"", values, WORDING
        )
        inputs.append((name, payload))
    outputs = []
    for output in request.outputs:
        _check_parameters(f"output '{output.name}'", output.parameters)
        outputs.append(output.name)
    return inputs, outputs


def infer_response(result: NamedResult, request_id: str) -> pb.ModelInferResponse:
    """The ModelInferResponse: the outputs in the order asked for, in ``raw_output_contents``,
    and the layout as parameters.

    Args:
        result: The core's answer.
        request_id: The request's ``id``, echoed.
    """
    reply = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=request_id
    )
    for name, array in result.outputs.items():
        array = np.ascontiguousarray(array, dtype="<f4")
        reply.outputs.add(name=name, datatype=FP32, shape=array.shape)
        reply.raw_output_contents.append(array.tobytes())
    if result.layout is not None:
        for key, value in layout_parameters(result.layout).items():
            if isinstance(value, int):
                reply.parameters[key].int64_param = value
            else:
                reply.parameters[key].string_param = value
    return reply


def layout_parameters(layout: FlattenLayout) -> dict[str, str | int]:
    """The FlattenLayout fields under their flatscope.v1 names; lists comma-separated."""
    return {
        "layer_name": layout.layer_name,
        "data_format": layout.data_format,
        "source_shape": _joined(layout.source_shape),
        "axis_names": _joined(layout.axis_names),
        "strides": _joined(layout.strides),
        "flat_size": layout.flat_size,
        "flat_order": _joined(layout.flat_order),
        "formula": layout.formula,
        "source_data_format": layout.source_data_format,
        "note": layout.note,
    }


def _check_parameters(what: str, parameters) -> None:
    for key in parameters:
        if key in UNSUPPORTED_PARAMETERS:
            raise InvalidInputError(
                f"{what} sets parameter '{key}'; this server does not do "
                f"{UNSUPPORTED_PARAMETERS[key]}"
            )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    # FP32 whatever the model declares: the server takes and sends float32 only.
    shape = [-1 if d is None else d for d in spec.shape]
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=FP32, shape=shape)


def _joined(values) -> str:
    return ",".join(str(v) for v in values)
