"""The TF Serving servicer: ``tensorflow.serving.PredictionService`` Predict and GetModelMetadata.

The message classes are the ones ``tensorflow-serving-api`` ships; its ``TensorProto``
and ``SignatureDef`` come from TensorFlow's own protos (importing them imports the
``tensorflow`` package, which the server has loaded anyway). Classify, Regress and
MultiInference answer UNIMPLEMENTED.

The model has one signature, ``serving_default``. Without ``output_filter`` a Predict
returns the prediction only; the Flatten tensors are returned when named in it. Replies
carry ``tensor_content`` when a request input did, else typed ``float_val``.
"""

from __future__ import annotations

import grpc
import numpy as np
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from flatscope.errors import InvalidInputError, NotFoundError
from flatscope.grpc import converters
from flatscope.grpc.methods import PartialServicer
from flatscope.grpc.servicer import call_deadline
from flatscope.metadata import ModelDescription, TensorSpec
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
SERVICE_NAME = SERVICE.full_name
METHODS = ("Predict", "GetModelMetadata")
SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF = "signature_def"
WORDING = Wording(dtype="DT_FLOAT", raw="tensor_content", values="float_val", nested=False)
ASK_FOR_LESS = "send fewer examples per request, or leave '<layer>/source' out of output_filter"


class PredictionServicer(PartialServicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Serves TF Serving's Predict and GetModelMetadata from a ModelCore.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
    """

    service = SERVICE
    methods = METHODS

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        name, version = addressed(request.model_spec)
        inputs, raw = predict_inputs(request)
        outputs = list(request.output_filter)
        result = await self._core.infer(name, inputs, outputs, version, call_deadline(context))
        reply = predict_response(result, raw)
        return converters.encoded(reply, self._max_reply_bytes, ASK_FOR_LESS)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version = addressed(request.model_spec)
        check_metadata_fields(request.metadata_field)
        description = self._core.metadata(name, version)
        return metadata_response(description, self._core.signature(name, version))


def addressed(spec: model_pb2.ModelSpec) -> tuple[str, str]:
    """The model name and version (as a string, "" for any) a ModelSpec addresses.

    Raises:
        NotFoundError: It names a signature other than ``serving_default``, or a version
            label (this server has none).
    """
    if spec.signature_name not in ("", SIGNATURE):
        raise NotFoundError(
            f"signature '{spec.signature_name}' is not served; the model has one "
            f"signature, '{SIGNATURE}'"
        )
    if spec.version_label:
        raise NotFoundError(
            f"version label '{spec.version_label}' is not served; this server has no "
            "version labels (address a version number, or none)"
        )
    return spec.name, str(spec.version.value) if spec.HasField("version") else ""


def check_metadata_fields(fields) -> None:
    """Accepts ``signature_def`` (also when no field is named).

    Raises:
        InvalidInputError: Another field is asked for.
    """
    for field in fields:
        if field != SIGNATURE_DEF:
            raise InvalidInputError(
                f"metadata_field '{field}' is not supported; ask for '{SIGNATURE_DEF}'"
            )


def predict_inputs(
    request: predict_pb2.PredictRequest,
) -> tuple[list[tuple[str, TensorPayload]], bool]:
    """(name, tensor) pairs of a PredictRequest, and whether any came as tensor_content.

    Raises:
        InvalidInputError: A dtype other than DT_FLOAT, or a shape of unknown rank.
    """
    inputs = []
    for name, proto in request.inputs.items():
        if proto.dtype != types_pb2.DT_FLOAT:
            raise InvalidInputError(
                f"input '{name}' has dtype {_dtype_name(proto.dtype)}; the model takes "
                "DT_FLOAT (as little-endian float32 in tensor_content, or float_val)"
            )
        if proto.tensor_shape.unknown_rank:
            raise InvalidInputError(
                f"input '{name}' has tensor_shape.unknown_rank set; send its dims"
            )
        shape = [dim.size for dim in proto.tensor_shape.dim]
        payload = TensorPayload(
            ACCEPTED_DTYPE, shape, proto.tensor_content, proto.float_val, WORDING
        )
        inputs.append((name, payload))
    return inputs, any(payload.raw_data for _, payload in inputs)


def predict_response(result: NamedResult, raw: bool) -> predict_pb2.PredictResponse:
    """The PredictResponse for named outputs, as tensor_content when ``raw`` else float_val."""
    reply = predict_pb2.PredictResponse(model_spec=_spec(result.model_name, result.model_version))
    for name, array in result.outputs.items():
        array = np.ascontiguousarray(array, dtype="<f4")
        tensor = reply.outputs[name]
        tensor.dtype = types_pb2.DT_FLOAT
        tensor.tensor_shape.CopyFrom(_shape(array.shape))
        if raw:
            tensor.tensor_content = array.tobytes()
        else:
            converters.add_floats(tensor, "float_val", array)
    return reply


def metadata_response(
    description: ModelDescription, signature: Signature
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The GetModelMetadataResponse: ``serving_default`` with the input and every output."""
    definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    definition.inputs[signature.input.name].CopyFrom(_tensor_info(signature.input))
    for output in signature.outputs:
        definition.outputs[output.spec.name].CopyFrom(_tensor_info(output.spec))
    definitions = get_model_metadata_pb2.SignatureDefMap()
    definitions.signature_def[SIGNATURE].CopyFrom(definition)
    reply = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_spec(description.name, description.version)
    )
    reply.metadata[SIGNATURE_DEF].Pack(definitions)
    return reply


def _spec(name: str, version: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=SIGNATURE)
    if version.isdigit():  # TF Serving versions are numbers; another label is left out
        spec.version.value = int(version)
    return spec


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    # DT_FLOAT whatever the model declares: the server takes and sends float32 only.
    shape = [-1 if d is None else d for d in spec.shape]
    return meta_graph_pb2.TensorInfo(
        name=spec.name, dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(shape)
    )


def _shape(dims) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )


def _dtype_name(value: int) -> str:
    try:
        return types_pb2.DataType.Name(value)
    except ValueError:  # proto3 enums are open: any number arrives
        return f"DataType({value})"
