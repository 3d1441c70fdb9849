"""Decoding and checking tensors that arrive from clients (numpy only, no protobuf)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from flatscope.errors import InvalidInputError

# dtype name (as in the proto enum) -> numpy dtype, little-endian.
DTYPES: dict[str, np.dtype] = {
    "FLOAT32": np.dtype("<f4"),
    "FLOAT64": np.dtype("<f8"),
    "FLOAT16": np.dtype("<f2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
}
ACCEPTED_DTYPE = "FLOAT32"
UNSPECIFIED_DTYPE = "DATA_TYPE_UNSPECIFIED"


@dataclasses.dataclass(frozen=True)
class Wording:
    """How a protocol names the parts of a tensor, so that messages use the client's words.

    Attributes:
        dtype: The accepted element type, e.g. "FLOAT32" (flatscope.v1) or "FP32" (KServe).
        raw: The field carrying packed little-endian bytes.
        values: The field carrying typed float32 values.
        nested: True when ``raw`` and ``values`` are fields of the tensor message
            ("inputs.raw_data"); False when a message names them beside it
            ("input 'image': raw_input_contents").
    """

    dtype: str = ACCEPTED_DTYPE
    raw: str = "raw_data"
    values: str = "float_values"
    nested: bool = True

    def part(self, field: str, name: str) -> str:
        """``name`` as a part of the tensor called ``field``, for a message."""
        return f"{field}.{name}" if self.nested else f"{field}: {name}"


FLATSCOPE_WORDING = Wording()


@dataclasses.dataclass(frozen=True)
class TensorPayload:
    """A tensor as a client sent it, before it is checked.

    Attributes:
        dtype: The ``DataType`` enum name, e.g. "FLOAT32"; other protocols map their
            spelling of float32 to "FLOAT32".
        shape: The declared shape.
        raw_data: Packed little-endian row-major bytes, or empty.
        float_values: Typed values, or empty.
        wording: The protocol's names for these fields, used in error messages.
    """

    dtype: str
    shape: Sequence[int]
    raw_data: bytes = b""
    float_values: Sequence[float] = ()
    wording: Wording = FLATSCOPE_WORDING


def to_batch(
    field: str,
    payload: TensorPayload,
    example_shape: Sequence[int],
    max_batch_size: int,
) -> np.ndarray:
    """Decodes a request tensor and checks that it is a batch the model takes.

    The declared shape is checked before any data is touched, so a hostile shape
    costs nothing; raw bytes are not copied.

    Args:
        field: Name of the request field, for error messages.
        payload: The tensor as sent.
        example_shape: The model's input shape without the batch axis.
        max_batch_size: Largest number of examples accepted.

    Returns:
        A read-only float32 array of shape (N, *example_shape), N >= 1, all finite.

    Raises:
        InvalidInputError: The tensor is malformed or does not fit; the message says
            what was expected.
    """
    shape = tuple(map(int, payload.shape))
    if len(shape) != len(example_shape) + 1 or shape[1:] != tuple(example_shape):
        _reject_shape(field, payload, shape, example_shape)
    batch = shape[0]
    if batch == 0:
        raise InvalidInputError(f"{field} is an empty batch; send at least one example")
    if batch < 0:
        _reject_shape(field, payload, shape, example_shape)
    if batch > max_batch_size:
        raise InvalidInputError(
            f"{field} has a batch of {batch}; this server takes at most {max_batch_size} "
            "examples per request (split the batch)"
        )
    raw_data, float_values = payload.raw_data, payload.float_values
    array = _decode(field, payload.dtype, shape, raw_data, float_values, payload.wording)
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InvalidInputError(
            f"{field} holds NaN or infinite values (first in example {bad}); "
            "expected finite numbers"
        )
    return array


def _reject_shape(
    field: str, payload: TensorPayload, shape: tuple[int, ...], example_shape: Sequence[int]
) -> NoReturn:
    """Raises the error that says how ``shape`` differs from (batch, *example_shape)."""
    expected = "(batch, " + ", ".join(str(d) for d in example_shape) + ")"
    if not shape and not payload.raw_data and not payload.float_values:
        raise InvalidInputError(
            f"{field} is not set; expected a {payload.wording.dtype} tensor of shape {expected}"
        )
    if any(d < 0 for d in shape):
        raise InvalidInputError(
            f"{field}.shape {_short(shape)} has a negative dimension; expected {expected}"
        )
    if len(shape) != len(example_shape) + 1:
        raise InvalidInputError(
            f"{field} shape {_short(shape)} has rank {len(shape)}; expected {expected}"
        )
    raise InvalidInputError(f"{field} shape {_short(shape)} does not match {expected}")


def _decode(
    field: str,
    dtype: str,
    shape: tuple[int, ...],
    raw_data: bytes,
    float_values,
    wording: Wording,
) -> np.ndarray:
    count = math.prod(shape)
    has_raw, has_values = len(raw_data) > 0, len(float_values) > 0
    raw, values, accepted = wording.raw, wording.values, wording.dtype
    if has_raw and has_values:
        raise InvalidInputError(f"{field} sets both {raw} and {values}; set exactly one of them")
    if has_values and dtype not in (ACCEPTED_DTYPE, UNSPECIFIED_DTYPE):
        raise InvalidInputError(
            f"{wording.part(field, values)} holds {accepted} values but dtype is {dtype}; "
            f"set dtype to {accepted}"
        )
    if has_raw and dtype != ACCEPTED_DTYPE:
        raise InvalidInputError(
            f"{field}.dtype is {dtype}; the model takes {accepted} "
            f"(send {raw} as little-endian float32)"
        )
    if not has_raw and not has_values:
        raise InvalidInputError(
            f"{field} has neither {raw} nor {values}; set one of them "
            f"with the {count} elements of shape {shape}"
        )
    if has_raw:
        itemsize = DTYPES[ACCEPTED_DTYPE].itemsize
        if len(raw_data) != count * itemsize:
            raise InvalidInputError(
                f"{wording.part(field, raw)} has {len(raw_data)} bytes; shape {shape} of "
                f"{accepted} needs {count} x {itemsize} = {count * itemsize} bytes"
            )
        return np.frombuffer(raw_data, dtype=DTYPES[ACCEPTED_DTYPE]).reshape(shape)
    if len(float_values) != count:
        raise InvalidInputError(
            f"{wording.part(field, values)} has {len(float_values)} values; "
            f"shape {shape} needs {count}"
        )
    return np.asarray(float_values, dtype=np.float32).reshape(shape)


def _short(shape: tuple[int, ...]) -> str:
    """A shape for a message, cut short when a hostile client sent thousands of axes."""
    if len(shape) <= 8:
        return str(shape)
    return "(" + ", ".join(str(d) for d in shape[:8]) + f", ... {len(shape)} axes)"
