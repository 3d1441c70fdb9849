"""KServe v2 (the Open Inference Protocol) parts shared by its gRPC and REST bindings.

Classification strings, BYTES tensors, the layout as response parameters, and the check
that refuses parameters the server would otherwise ignore. numpy only: no protobuf, no
HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from flatscope.errors import InvalidInputError
from flatscope.layout import FlattenLayout
from flatscope.metadata import ModelDescription, TensorSpec

FP32 = "FP32"
BYTES = "BYTES"
CLASSIFICATION = "classification"


def classification(array: np.ndarray, count: int, labels: tuple[str, ...] = ()) -> np.ndarray:
    """Triton's classification of each example: its ``count`` largest values, largest
    first, as "score:index[:label]" strings (the score printed as C++ ``std::to_string``).

    Args:
        array: (N, ...) scores; each example's values are taken in row-major order.
        count: How many classes per example; more than there are gives them all.
        labels: Labels by index; an index with none gets no label.

    Returns:
        An (N, k) array of bytes objects.
    """
    scores = np.asarray(array, dtype=np.float32).reshape(len(array), -1)
    k = min(count, scores.shape[1])
    # Ties keep the lower index first (Triton's sort leaves their order unspecified).
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = []
    for example, indices in zip(scores, order, strict=True):
        row = []
        for index in indices.tolist():
            text = f"{example[index]:f}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            row.append(text.encode())
        rows.append(row)
    return np.asarray(rows, dtype=object).reshape(len(array), k)


def bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw contents: each element as a 4-byte little-endian length, then it."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel())


def layout_parameters(layout: FlattenLayout) -> dict[str, str | int]:
    """The FlattenLayout fields under their flatscope.v1 names; lists comma-separated."""
    return {
        name: joined(value) if isinstance(value, tuple) else value
        for name, value in layout.fields().items()
    }


def platform(description: ModelDescription) -> str:
    """The ``platform`` that model metadata and config report."""
    return f"keras_{description.backend}"


def tensor_metadata(spec: TensorSpec) -> dict[str, str | list[int]]:
    """A tensor's metadata (name, datatype, shape with -1 for any size), as both bindings
    send it; FP32 whatever the model declares: the server takes and sends float32 only."""
    return {
        "name": spec.name,
        "datatype": FP32,
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def check_parameters(
    what: str, parameters: Iterable[str], reads: str, honoured: tuple[str, ...] = ()
) -> None:
    """Refuses parameters this server would otherwise ignore (sequence_id, priority, ...).

    Args:
        what: The part of the request that sets them, e.g. "the request".
        parameters: Their names.
        reads: What the binding reads, for the message ("only an output's ...").
        honoured: The names accepted here.

    Raises:
        InvalidInputError: A parameter is not in ``honoured``.
    """
    refused = sorted(key for key in parameters if key not in honoured)
    if refused:
        names = ", ".join(f"'{key}'" for key in refused)
        raise InvalidInputError(
            f"{what} sets parameter {names}, which this server does not honour; it reads {reads}"
        )


def joined(values) -> str:
    """``values`` comma-separated, as KServe parameters carry lists."""
    return ",".join(str(v) for v in values)


def requested_twice(name: str, counts: tuple[int, int]) -> InvalidInputError:
    """The error for an output asked for twice in one request with different class counts
    (a repeated name is answered once, so one of them would be dropped)."""
    first, second = (f"'classification' {c}" if c else "no 'classification'" for c in counts)
    return InvalidInputError(
        f"output '{name}' is requested twice, with {first} and with {second}; its answer "
        "has it once: request it once, or ask for the class count once"
    )
