"""What Predict and Inspect answer, as plain dataclasses (shared by server and client)."""

from __future__ import annotations

import dataclasses

import numpy as np

from flatscope.layout import FlattenLayout


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The answer to Predict."""

    model_name: str
    model_version: str
    outputs: np.ndarray
    classes: np.ndarray


@dataclasses.dataclass(frozen=True)
class DenseKernel:
    """The kernel of the Dense layer that reads a Flatten layer's output.

    Attributes:
        layer_name: The Dense layer's name.
        kernel: Its weights, (F, units): row ``f`` holds flat feature ``f``'s weights.
            ``layout.unflatten(kernel.T)`` lays each unit's weights onto the source.
    """

    layer_name: str
    kernel: np.ndarray


@dataclasses.dataclass(frozen=True)
class InspectResult:
    """The answer to Inspect: one forward pass seen at a Flatten layer.

    ``source`` and ``dense`` are None unless asked for; ``coordinates`` has one row
    per flat index from ``coordinate_start``, each the source index it came from.
    """

    model_name: str
    model_version: str
    outputs: np.ndarray
    classes: np.ndarray
    flattened: np.ndarray
    source: np.ndarray | None
    layout: FlattenLayout
    coordinate_start: int
    coordinates: np.ndarray
    dense: DenseKernel | None = None
