"""Decoding and checking tensors that arrive from clients (numpy only, no protobuf)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def decode(
    field: str,
    dtype: str,
    shape: Sequence[int],
    raw_data: bytes,
    float_values: Sequence[float],
) -> np.ndarray:
    """Turns the parts of a Tensor message into a float32 array, without copying raw bytes.

    Args:
        field: Name of the request field, for error messages.
        dtype: The ``DataType`` enum name sent by the client.
        shape: The declared shape.
        raw_data: Packed little-endian row-major bytes, or empty.
        float_values: Typed values, or empty.

    Returns:
        A read-only float32 array of the declared shape.

    Raises:
        InvalidInputError: The parts disagree with each other or use another dtype.
    """
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"{field}.shape {shape} has a negative dimension")
    count = math.prod(shape)
    has_raw, has_values = len(raw_data) > 0, len(float_values) > 0
    if has_raw and has_values:
        raise InvalidInputError(
            f"{field} sets both raw_data and float_values; set exactly one of them"
        )
    if has_values and dtype not in (ACCEPTED_DTYPE, UNSPECIFIED_DTYPE):
        raise InvalidInputError(
            f"{field}.float_values holds FLOAT32 values but dtype is {dtype}; "
            f"set dtype to {ACCEPTED_DTYPE}"
        )
    if has_raw and dtype != ACCEPTED_DTYPE:
        raise InvalidInputError(
            f"{field}.dtype is {dtype}; the model takes {ACCEPTED_DTYPE} "
            "(send raw_data as little-endian float32)"
        )
    if not has_raw and not has_values and count > 0:
        raise InvalidInputError(
            f"{field} has neither raw_data nor float_values; set one of them "
            f"with the {count} elements of shape {shape}"
        )
    if has_raw:
        itemsize = DTYPES[ACCEPTED_DTYPE].itemsize
        if len(raw_data) != count * itemsize:
            raise InvalidInputError(
                f"{field}.raw_data has {len(raw_data)} bytes; shape {shape} of "
                f"{ACCEPTED_DTYPE} needs {count} x {itemsize} = {count * itemsize} bytes"
            )
        return np.frombuffer(raw_data, dtype=DTYPES[ACCEPTED_DTYPE]).reshape(shape)
    if len(float_values) != count:
        raise InvalidInputError(
            f"{field}.float_values has {len(float_values)} values; "
            f"shape {shape} needs {count}"
        )
    return np.asarray(float_values, dtype=np.float32).reshape(shape)


def check_batch(
    field: str, array: np.ndarray, example_shape: Sequence[int], max_batch_size: int
) -> None:
    """Checks that ``array`` is a non-empty batch of finite examples the model takes.

    Args:
        field: Name of the request field, for error messages.
        array: The decoded batch.
        example_shape: The model's input shape without the batch axis; None or -1
            entries accept any size.
        max_batch_size: Largest number of examples accepted.

    Raises:
        InvalidInputError: The batch does not fit.
    """
    expected = "(batch, " + ", ".join(_dim(d) for d in example_shape) + ")"
    if array.ndim != len(example_shape) + 1:
        raise InvalidInputError(
            f"{field} shape {array.shape} has rank {array.ndim}; expected {expected}"
        )
    for got, want in zip(array.shape[1:], example_shape):
        if want not in (None, -1) and got != want:
            raise InvalidInputError(f"{field} shape {array.shape} does not match {expected}")
    batch = array.shape[0]
    if batch == 0:
        raise InvalidInputError(f"{field} is an empty batch; send at least one example")
    if batch > max_batch_size:
        raise InvalidInputError(
            f"{field} has a batch of {batch}; this server takes at most {max_batch_size} "
            "examples per request (split the batch)"
        )
    if not np.isfinite(array).all():
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InvalidInputError(
            f"{field} holds NaN or infinite values (first in example {bad}); "
            "expected finite numbers"
        )


def _dim(d: int | None) -> str:
    return "any" if d in (None, -1) else str(d)
