"""What a served model looks like from outside: signature and layer table."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output; None marks any size."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One row of the layer table, as ``model.summary()`` prints it."""

    name: str
    type: str
    output_shape: tuple[int | None, ...]
    param_count: int
    data_format: str = ""


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What GetModelMetadata returns about the served model.

    ``labels`` names the prediction's classes, by index (the embedded model's are the
    digits); empty when unknown. KServe classification replies append them.
    """

    name: str
    version: str
    source: str
    backend: str
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    flatten_layers: tuple[str, ...]
    max_batch_size: int = 0
    labels: tuple[str, ...] = ()


def version_number(version: str) -> int | None:
    """``version`` as TF Serving's and Triton's int64 fields carry it; None for a label
    that is no such number ("v2", "²", 20 digits)."""
    if version.isascii() and version.isdigit() and int(version) < 2**63:
        return int(version)
    return None
