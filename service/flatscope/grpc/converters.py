"""Conversions between flatscope.v1 messages and numpy arrays or core dataclasses.

Used both ways: by the servicer (requests in, replies out) and by the client.
"""

from __future__ import annotations

import functools

import numpy as np
from google.protobuf.message import Message

from flatscope.errors import InvalidInputError, ResourceExhaustedError
from flatscope.layout import FlattenLayout
from flatscope.metadata import LayerRow, ModelDescription, TensorSpec
from flatscope.results import InspectResult, Prediction
from flatscope.tensors import DTYPES, TensorPayload
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import tensor_pb2

RAW = tensor_pb2.TENSOR_ENCODING_RAW
TYPED = tensor_pb2.TENSOR_ENCODING_TYPED


_DTYPE_NAMES = {number: name for name, number in tensor_pb2.DataType.items()}
_ENCODINGS = frozenset(tensor_pb2.TensorEncoding.values())


def request_payload(tensor: tensor_pb2.Tensor) -> TensorPayload:
    """Wraps a request tensor for the core, which checks it (raw bytes are not copied)."""
    number = tensor.dtype
    # proto3 enums are open: any number arrives.
    dtype = _DTYPE_NAMES.get(number) or f"DataType({number})"
    return TensorPayload(dtype, tensor.shape, tensor.raw_data, tensor.float_values)


def reply_encoding(value: int) -> int:
    """Checks a request's ``output_encoding`` (proto3 enums accept any number).

    Raises:
        InvalidInputError: It is not a known TensorEncoding.
    """
    if value not in _ENCODINGS:
        known = ", ".join(tensor_pb2.TensorEncoding.keys())
        raise InvalidInputError(f"output_encoding {value} is not one of {known}")
    return value


ASK_FOR_LESS = (
    "send fewer examples per request, leave include_source off, or use TENSOR_ENCODING_RAW"
)


def within_limit(reply: Message, limit: int, ask_for_less: str = ASK_FOR_LESS) -> Message:
    """Returns ``reply`` if it fits in ``limit`` bytes.

    Args:
        reply: The reply message.
        limit: The largest reply the server may send.
        ask_for_less: How a client of this API asks for a smaller reply.

    Raises:
        ResourceExhaustedError: It does not fit; the message says how to ask for less.
    """
    size = reply.ByteSize()
    if size > limit:
        raise ResourceExhaustedError(
            f"the reply would be {size} bytes, above this server's limit of {limit} "
            f"(--max-send-message-bytes); {ask_for_less}"
        )
    return reply


def to_tensor(array: np.ndarray, encoding: int = RAW) -> tensor_pb2.Tensor:
    """Encodes a float32 array as a Tensor, as raw little-endian bytes or typed values."""
    message = tensor_pb2.Tensor()
    fill_tensor(message, array, encoding)
    return message


def fill_tensor(message: tensor_pb2.Tensor, array: np.ndarray, encoding: int = RAW) -> None:
    """Writes a float32 array into an empty Tensor field of a message being built.

    Filling the field in place spares copying a built Tensor into the reply (for an
    Inspect reply, 72 KB per example).
    """
    array = np.ascontiguousarray(array, dtype="<f4")
    message.dtype = tensor_pb2.FLOAT32
    message.shape.extend(array.shape)
    if encoding == TYPED:
        message.float_values.extend(array.ravel().tolist())
    else:
        message.raw_data = array.tobytes()


def from_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """Decodes a reply tensor of any supported dtype into a numpy array."""
    shape = tuple(tensor.shape)
    if tensor.float_values:
        return np.asarray(tensor.float_values, dtype=np.float32).reshape(shape)
    dtype = DTYPES[tensor_pb2.DataType.Name(tensor.dtype)]
    return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)


def predict_response(result: Prediction, encoding: int) -> pb.PredictResponse:
    """Builds the PredictResponse for a core Prediction."""
    reply = pb.PredictResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        classes=result.classes.tolist(),
    )
    fill_tensor(reply.outputs, result.outputs, encoding)
    return reply


def prediction(reply: pb.PredictResponse) -> Prediction:
    """Reads a PredictResponse back into a Prediction."""
    return Prediction(
        model_name=reply.model_name,
        model_version=reply.model_version,
        outputs=from_tensor(reply.outputs),
        classes=np.asarray(reply.classes, dtype=np.int64),
    )


def inspect_response(result: InspectResult, encoding: int) -> pb.InspectResponse:
    """Builds the InspectResponse for a core InspectResult."""
    reply = pb.InspectResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        layout=layout_message(result.layout, result.coordinate_start, result.coordinates),
        classes=result.classes.tolist(),
    )
    fill_tensor(reply.flattened, result.flattened, encoding)
    fill_tensor(reply.outputs, result.outputs, encoding)
    if result.source is not None:
        fill_tensor(reply.source, result.source, encoding)
    return reply


def inspection(reply: pb.InspectResponse) -> InspectResult:
    """Reads an InspectResponse back into an InspectResult."""
    layout, start, coordinates = layout_from_message(reply.layout)
    return InspectResult(
        model_name=reply.model_name,
        model_version=reply.model_version,
        outputs=from_tensor(reply.outputs),
        classes=np.asarray(reply.classes, dtype=np.int64),
        flattened=from_tensor(reply.flattened),
        source=from_tensor(reply.source) if reply.HasField("source") else None,
        layout=layout,
        coordinate_start=start,
        coordinates=coordinates,
    )


def layout_message(
    layout: FlattenLayout, coordinate_start: int, coordinates: np.ndarray
) -> pb.FlattenLayout:
    """Builds the FlattenLayout message, with one Coordinate per row of ``coordinates``."""
    message = pb.FlattenLayout()
    message.CopyFrom(_layout_fields(layout))
    if len(coordinates):
        message.coordinates.extend(
            pb.Coordinate(flat_index=coordinate_start + k, source_index=row)
            for k, row in enumerate(coordinates.tolist())
        )
    return message


@functools.lru_cache(maxsize=64)
def _layout_fields(layout: FlattenLayout) -> pb.FlattenLayout:
    """The layout's fixed fields, built once per layout (every Inspect reply has them)."""
    return pb.FlattenLayout(
        layer_name=layout.layer_name,
        data_format=layout.data_format,
        source_shape=layout.source_shape,
        axis_names=layout.axis_names,
        strides=layout.strides,
        flat_size=layout.flat_size,
        formula=layout.formula,
        flat_order=layout.flat_order,
        source_data_format=layout.source_data_format,
        note=layout.note,
    )


def layout_from_message(message: pb.FlattenLayout) -> tuple[FlattenLayout, int, np.ndarray]:
    """Reads a FlattenLayout message: the layout, the first listed flat index, the rows."""
    layout = FlattenLayout(
        layer_name=message.layer_name,
        data_format=message.data_format,
        source_shape=tuple(message.source_shape),
        axis_names=tuple(message.axis_names),
        strides=tuple(message.strides),
        source_data_format=message.source_data_format,
        note=message.note,
    )
    rows = [tuple(c.source_index) for c in message.coordinates]
    coordinates = np.asarray(rows, dtype=np.int64).reshape(len(rows), layout.rank)
    start = message.coordinates[0].flat_index if message.coordinates else 0
    return layout, start, coordinates


def metadata_response(description: ModelDescription) -> pb.GetModelMetadataResponse:
    """Builds the GetModelMetadataResponse for a model description."""
    return pb.GetModelMetadataResponse(
        model_name=description.name,
        model_version=description.version,
        backend=description.backend,
        device=description.device,
        inputs=[_spec_message(s) for s in description.inputs],
        outputs=[_spec_message(s) for s in description.outputs],
        layers=[
            pb.LayerInfo(
                name=row.name,
                type=row.type,
                output_shape=_dims(row.output_shape),
                param_count=row.param_count,
                data_format=row.data_format,
            )
            for row in description.layers
        ],
        total_params=description.total_params,
        trainable_params=description.trainable_params,
        non_trainable_params=description.non_trainable_params,
        flatten_layers=description.flatten_layers,
        max_batch_size=description.max_batch_size,
        source=description.source,
    )


def description(reply: pb.GetModelMetadataResponse) -> ModelDescription:
    """Reads a GetModelMetadataResponse back into a ModelDescription."""
    return ModelDescription(
        name=reply.model_name,
        version=reply.model_version,
        source=reply.source,
        backend=reply.backend,
        device=reply.device,
        inputs=tuple(_spec(s) for s in reply.inputs),
        outputs=tuple(_spec(s) for s in reply.outputs),
        layers=tuple(
            LayerRow(
                name=row.name,
                type=row.type,
                output_shape=_shape(row.output_shape),
                param_count=row.param_count,
                data_format=row.data_format,
            )
            for row in reply.layers
        ),
        total_params=reply.total_params,
        trainable_params=reply.trainable_params,
        non_trainable_params=reply.non_trainable_params,
        flatten_layers=tuple(reply.flatten_layers),
        max_batch_size=reply.max_batch_size,
    )


def _spec_message(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    dtype = spec.dtype.upper()
    return tensor_pb2.TensorSpec(
        name=spec.name,
        dtype=tensor_pb2.DataType.Value(dtype) if dtype in DTYPES else 0,
        shape=_dims(spec.shape),
    )


def _spec(message: tensor_pb2.TensorSpec) -> TensorSpec:
    return TensorSpec(
        name=message.name,
        dtype=tensor_pb2.DataType.Name(message.dtype).lower(),
        shape=_shape(message.shape),
    )


def _dims(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in shape]


def _shape(dims) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else d for d in dims)
