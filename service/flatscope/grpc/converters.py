"""Conversions between flatscope.v1 messages and numpy arrays or core dataclasses.

Used both ways: by the servicer (requests in, replies out) and by the client.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
from google.protobuf.message import Message

from flatscope.errors import InvalidInputError, reply_too_large
from flatscope.layout import FlattenLayout
from flatscope.metadata import LayerRow, ModelDescription, TensorSpec
from flatscope.results import DenseKernel, InspectResult, Prediction
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


def encoded(
    reply: Message,
    limit: int,
    ask_for_less: str = ASK_FOR_LESS,
    payloads: Payloads | None = None,
) -> bytes:
    """``reply`` serialized, followed by ``payloads``, if it fits in ``limit`` bytes.

    A model reply is serialized here, once, to learn its size (``ByteSize()`` serializes
    too); the gRPC layer sends these bytes as they are.

    Args:
        reply: The reply message.
        limit: The largest reply the server may send.
        ask_for_less: How a client of this API asks for a smaller reply.
        payloads: Tensor elements that follow the message (see :class:`Payloads`).

    Raises:
        ResourceExhaustedError: It does not fit; the message says how to ask for less.
    """
    extra = payloads.size if payloads is not None else 0
    data = _serialized(reply, limit, ask_for_less, extra)
    if not extra:
        return data
    return b"".join((data, *payloads.parts))


async def encoded_off_loop(reply: Message, limit: int, payloads: Payloads) -> bytes:
    """:func:`encoded`, with payloads of :data:`OFF_LOOP_BYTES` or more joined in a thread.

    ``bytes.join`` lets go of the GIL while it copies, but only when every piece is
    ``bytes``; so the array views are first copied into ``bytes`` in pieces of
    :data:`COPY_CHUNK`, each of which holds the GIL briefly. A 38 MB reply held the event
    loop ~25 ms for its join; this way other calls wait at most one chunk's copy at a time.
    """
    if payloads.size < OFF_LOOP_BYTES:
        return encoded(reply, limit, payloads=payloads)
    data = _serialized(reply, limit, ASK_FOR_LESS, payloads.size)
    return await asyncio.to_thread(_joined, data, payloads.parts)


OFF_LOOP_BYTES = 4 * 2**20
COPY_CHUNK = 2**20


def _serialized(reply: Message, limit: int, ask_for_less: str, extra: int) -> bytes:
    data = reply.SerializeToString()
    size = len(data) + extra
    if size > limit:
        raise reply_too_large(size, limit, ask_for_less)
    return data


def _joined(head: bytes, parts: list[bytes | memoryview]) -> bytes:
    pieces = [head]
    for part in parts:
        if type(part) is bytes:
            pieces.append(part)
        else:
            size = len(part)
            pieces += (part[at : at + COPY_CHUNK].tobytes() for at in range(0, size, COPY_CHUNK))
    return b"".join(pieces)


def to_tensor(array: np.ndarray, encoding: int = RAW) -> tensor_pb2.Tensor:
    """Encodes a float32 array as a Tensor, as raw little-endian bytes or typed values."""
    message = tensor_pb2.Tensor()
    fill_tensor(message, array, encoding)
    return message


def fill_tensor(
    message: tensor_pb2.Tensor,
    array: np.ndarray,
    encoding: int = RAW,
    payloads: Payloads | None = None,
    field: str = "",
) -> None:
    """Writes a float32 array into an empty Tensor field of a message being built.

    Filling the field in place spares copying a built Tensor into the reply (for an
    Inspect reply, 72 KB per example).

    Args:
        message: The empty Tensor field.
        array: The values.
        encoding: RAW or TYPED.
        payloads: Where the elements of a large array go instead, to follow the reply's
            own bytes on the wire (see :class:`Payloads`); None puts them in ``message``.
        field: The name of ``message``'s field in the reply, when ``payloads`` is set.
    """
    array = np.ascontiguousarray(array, dtype="<f4")
    message.dtype = tensor_pb2.FLOAT32
    message.shape.extend(array.shape)
    elements = "float_values" if encoding == TYPED else "raw_data"
    if payloads is not None and array.nbytes >= SPLICE_BYTES:
        payloads.add(field, elements, array)
    elif encoding == TYPED:
        add_floats(message, elements, array)
    else:
        message.raw_data = array.tobytes()


SPLICE_BYTES = 64 * 1024


class Payloads:
    """Tensor elements that follow a reply's serialized bytes instead of going into it.

    On the wire a message field may come more than once, and parsers merge the pieces;
    and ``raw_data`` (bytes) and ``float_values`` (packed floats) have the same
    encoding: a tag, a length, the little-endian float32 bytes. So a large tensor's
    elements can be joined after the serialized reply, straight from the array's memory,
    rather than copied into the message, copied again when it is serialized and once
    more when it is sent: the event loop, which does all three, stays free for other
    calls (a 38 MB Inspect reply held it ~0.1 s the other way).

    Args:
        reply: The reply's message class.
    """

    def __init__(self, reply: type[Message]):
        self._reply = reply.DESCRIPTOR
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def add(self, field: str, elements: str, array: np.ndarray) -> None:
        """Appends ``array`` as the ``elements`` field of the reply's Tensor ``field``."""
        outer = self._reply.fields_by_name[field].number
        inner = _TENSOR_FIELDS[elements]
        data = memoryview(array).cast("B")
        inner_head = _varint(inner << 3 | _LENGTH_DELIMITED) + _varint(data.nbytes)
        outer_head = _varint(outer << 3 | _LENGTH_DELIMITED)
        outer_head += _varint(len(inner_head) + data.nbytes)
        self.parts += (outer_head, inner_head, data)
        self.size += len(outer_head) + len(inner_head) + data.nbytes


def add_floats(message: Message, field: str, array: np.ndarray) -> None:
    """Appends ``array``'s values, as float32, to the repeated float ``field`` of ``message``.

    The values go in as the field's own wire encoding (its tag, a length, then the
    little-endian floats: a packed repeated float), parsed into the message by
    protobuf's C parser. ``extend()`` would make a Python float of every value: 1.5 s on
    the event loop for a 38 MB Inspect reply, against 0.05 s this way.
    """
    number = message.DESCRIPTOR.fields_by_name[field].number
    values = np.ascontiguousarray(array, dtype="<f4").ravel()
    encoded = bytearray(_varint(number << 3 | _LENGTH_DELIMITED))
    encoded += _varint(values.nbytes)
    encoded += memoryview(values).cast("B")
    message.MergeFromString(encoded)


_LENGTH_DELIMITED = 2  # the wire type of bytes, messages and packed repeated fields
_TENSOR_FIELDS = {
    name: tensor_pb2.Tensor.DESCRIPTOR.fields_by_name[name].number
    for name in ("raw_data", "float_values")
}


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def from_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """Decodes a reply tensor of any supported dtype into a numpy array."""
    shape = tuple(tensor.shape)
    if tensor.float_values:
        return np.asarray(tensor.float_values, dtype=np.float32).reshape(shape)
    dtype = DTYPES[tensor_pb2.DataType.Name(tensor.dtype)]
    return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)


def predict_response(
    result: Prediction, encoding: int, payloads: Payloads | None = None
) -> pb.PredictResponse:
    """Builds the PredictResponse for a core Prediction (large tensors into ``payloads``)."""
    reply = pb.PredictResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        classes=result.classes.tolist(),
    )
    fill_tensor(reply.outputs, result.outputs, encoding, payloads, "outputs")
    return reply


def prediction(reply: pb.PredictResponse) -> Prediction:
    """Reads a PredictResponse back into a Prediction."""
    return Prediction(
        model_name=reply.model_name,
        model_version=reply.model_version,
        outputs=from_tensor(reply.outputs),
        classes=np.asarray(reply.classes, dtype=np.int64),
    )


def inspect_response(
    result: InspectResult, encoding: int, payloads: Payloads | None = None
) -> pb.InspectResponse:
    """Builds the InspectResponse for a core InspectResult (large tensors into ``payloads``)."""
    reply = pb.InspectResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        layout=layout_message(result.layout, result.coordinate_start, result.coordinates),
        classes=result.classes.tolist(),
    )
    fill_tensor(reply.flattened, result.flattened, encoding, payloads, "flattened")
    fill_tensor(reply.outputs, result.outputs, encoding, payloads, "outputs")
    if result.source is not None:
        fill_tensor(reply.source, result.source, encoding, payloads, "source")
    if result.dense is not None:
        reply.dense_layer = result.dense.layer_name
        fill_tensor(reply.dense_kernel, result.dense.kernel, encoding, payloads, "dense_kernel")
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
        dense=(
            DenseKernel(reply.dense_layer, from_tensor(reply.dense_kernel))
            if reply.HasField("dense_kernel")
            else None
        ),
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
    return pb.FlattenLayout(**layout.fields())


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
