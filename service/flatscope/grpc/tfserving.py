"""The TF Serving servicers: ``tensorflow.serving.PredictionService`` and ``ModelService``.

The messages are generated from TF Serving's protos and the TensorFlow protos they import
(``TensorProto``, ``SignatureDef``), vendored in protos/vendor: neither TensorFlow nor
``tensorflow-serving-api`` is needed. Predict, GetModelMetadata and
GetModelStatus are served; Classify, Regress and MultiInference answer UNIMPLEMENTED
naming Predict, HandleReloadConfigRequest plain UNIMPLEMENTED.

Signatures: see :mod:`flatscope.tfserving_signatures`. As in TF
Serving, a Predict without ``output_filter`` returns every output of its signature; the
filter may name any output of the model, whatever the signature. Replies carry typed
``float_val``, as TF Serving's do by default (its example clients read ``float_val``);
``--tfserving-tensor-content`` makes them ``tensor_content``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import numpy as np

from flatscope.errors import (
    InvalidInputError,
    UnimplementedError,
)
from flatscope.grpc import converters
from flatscope.grpc.methods import PartialServicer
from flatscope.grpc.servicer import call_deadline
from flatscope.metadata import ModelDescription, TensorSpec, version_number
from flatscope.protocols.tensorflow.core.framework import tensor_shape_pb2, types_pb2
from flatscope.protocols.tensorflow.core.protobuf import meta_graph_pb2
from flatscope.protocols.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording
from flatscope.tfserving_signatures import (
    PREDICT_METHOD,
    SIGNATURE,
    no_version_labels,
    signature_names,
    signature_outputs,
)

if TYPE_CHECKING:
    from flatscope.core import ModelCore

SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
SERVICE_NAME = SERVICE.full_name
METHODS = ("Predict", "GetModelMetadata", "Classify", "Regress", "MultiInference")
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
MODEL_SERVICE_NAME = MODEL_SERVICE.full_name
SIGNATURE_DEF = "signature_def"
WORDING = Wording(dtype="DT_FLOAT", raw="tensor_content", values="float_val", nested=False)
ASK_FOR_LESS = "send fewer examples per request, or leave '<layer>/source' out of output_filter"


class PredictionServicer(PartialServicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Serves TF Serving's Predict and GetModelMetadata from a ModelCore.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
        tensor_content: Reply tensors as ``tensor_content`` instead of ``float_val``.
    """

    service = SERVICE
    methods = METHODS

    def __init__(self, core: ModelCore, max_reply_bytes: int, tensor_content: bool = False):
        super().__init__(core, max_reply_bytes)
        self._tensor_content = tensor_content

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        name, version = addressed(request.model_spec)
        signature = self._core.signature(name, version)
        chosen = signature_outputs(signature, request.model_spec.signature_name)
        outputs = list(request.output_filter) or [output.spec.name for output in chosen]
        inputs = predict_inputs(request)
        result = await self._core.infer(name, inputs, outputs, version, call_deadline(context))
        reply = predict_response(result, self._tensor_content)
        return converters.encoded(reply, self._max_reply_bytes, ASK_FOR_LESS)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version = addressed(request.model_spec)
        check_metadata_fields(request.metadata_field)
        description = self._core.metadata(name, version)
        signature = self._core.signature(name, version)
        signature_outputs(signature, request.model_spec.signature_name)
        return metadata_response(description, signature)

    async def Classify(self, request, context):
        raise UnimplementedError(NOT_A_CLASSIFIER.format(method="Classify"))

    async def Regress(self, request, context):
        raise UnimplementedError(NOT_A_CLASSIFIER.format(method="Regress"))

    async def MultiInference(self, request, context):
        raise UnimplementedError(NOT_A_CLASSIFIER.format(method="MultiInference"))


NOT_A_CLASSIFIER = (
    "{method} is not served: it takes tf.Example inputs through a classify or regress "
    f"signature, and this model has predict signatures only; send a Predict request "
    f"(signature '{SIGNATURE}') with the input as a DT_FLOAT tensor and read the class "
    "scores from its output"
)


class ModelStatusServicer(PartialServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Serves TF Serving's GetModelStatus (the usual readiness poll) from a ModelCore.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
    """

    service = MODEL_SERVICE
    methods = ("GetModelStatus",)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        # As TF Serving, the signature is not looked at; while the model loads, this is
        # UNAVAILABLE as every model call is (a poll retries it).
        name, version = addressed(request.model_spec)
        description = self._core.metadata(name, version)
        status = get_model_status_pb2.ModelVersionStatus(
            state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            status=status_pb2.StatusProto(),  # OK, set as TF Serving sets it
        )
        number = version_number(description.version)
        if number is not None:
            status.version = number
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])


def addressed(spec: model_pb2.ModelSpec) -> tuple[str, str]:
    """The model name and version (as a string, "" for any) a ModelSpec addresses.

    Raises:
        NotFoundError: It names a version label (this server has none).
    """
    if spec.version_label:
        raise no_version_labels(spec.version_label)
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


def predict_inputs(request: predict_pb2.PredictRequest) -> list[tuple[str, TensorPayload]]:
    """The (name, tensor) pairs of a PredictRequest.

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
    return inputs


def predict_response(result: NamedResult, raw: bool = False) -> predict_pb2.PredictResponse:
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
    """The GetModelMetadataResponse: every signature (see :func:`signature_outputs`)."""
    definitions = get_model_metadata_pb2.SignatureDefMap()
    for name in signature_names(signature):
        definition = definitions.signature_def[name]
        definition.method_name = PREDICT_METHOD
        definition.inputs[signature.input.name].CopyFrom(_tensor_info(signature.input))
        for output in signature_outputs(signature, name):
            definition.outputs[output.spec.name].CopyFrom(_tensor_info(output.spec))
    reply = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=_spec(description.name, description.version)
    )
    reply.metadata[SIGNATURE_DEF].Pack(definitions)
    return reply


def _spec(name: str, version: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=SIGNATURE)
    number = version_number(version)
    if number is not None:  # TF Serving versions are numbers; another label is left out
        spec.version.value = number
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
