"""The served model as named tensors, for the standard protocols (KServe v2, TF Serving).

The model's one input and its prediction keep their Keras names (e.g. ``image`` and
``digit``). Each Flatten layer adds two outputs, returned only when asked for by name:

- ``<layer>``: what the Flatten layer emitted, (N, F);
- ``<layer>/source``: the tensor that entered it, (N, *S).

Pure Python: nothing here imports Keras or gRPC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from flatscope.errors import InvalidInputError
from flatscope.layout import FlattenLayout
from flatscope.metadata import ModelDescription, TensorSpec

SOURCE_SUFFIX = "/source"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NamedOutput:
    """One output a client may ask for.

    Attributes:
        spec: Its name, dtype and shape (None marks the batch).
        layer: The Flatten layer it belongs to; "" for the prediction.
        source: True for the tensor entering ``layer``, False for what it emitted.
    """

    spec: TensorSpec
    layer: str = ""
    source: bool = False


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outputs one request asked for, and the forward pass that answers them.

    Attributes:
        outputs: The outputs, in the order asked for, each once.
        layer: The Flatten layer to inspect; "" when only the prediction was asked for.
        include_source: Whether the tensor entering ``layer`` is among them.
    """

    outputs: tuple[NamedOutput, ...]
    layer: str
    include_source: bool


@dataclasses.dataclass(frozen=True)
class Signature:
    """The named input and outputs of the served model.

    Attributes:
        input: The model's input.
        outputs: The prediction first, then ``<layer>`` and ``<layer>/source`` for
            each Flatten layer.
    """

    input: TensorSpec
    outputs: tuple[NamedOutput, ...]

    @property
    def prediction(self) -> NamedOutput:
        """The model's own output."""
        return self.outputs[0]

    def only_input(self, model_name: str, inputs: Sequence[tuple[str, T]]) -> T:
        """Returns the tensor of the one (name, tensor) pair that names the model's input.

        Raises:
            InvalidInputError: There are several, none, or one of another name.
        """
        dims = ", ".join("batch" if d is None else str(d) for d in self.input.shape)
        expected = f"one input, '{self.input.name}' of shape ({dims})"
        if len(inputs) != 1:
            names = [name for name, _ in inputs]
            raise InvalidInputError(
                f"model '{model_name}' takes {expected}; got {len(inputs)}: {names}"
            )
        name, tensor = inputs[0]
        if name != self.input.name:
            raise InvalidInputError(
                f"input '{name}' is not an input of model '{model_name}'; it takes {expected}"
            )
        return tensor

    def select(self, requested: Sequence[str]) -> Selection:
        """Resolves the output names a request asked for; none asks for the prediction.

        Raises:
            InvalidInputError: A name is not an output, or names reach into two Flatten
                layers (one forward pass reports one).
        """
        if not requested:
            return Selection((self.prediction,), "", False)
        by_name = {output.spec.name: output for output in self.outputs}
        chosen: dict[str, NamedOutput] = {}
        for name in requested:
            output = by_name.get(name)
            if output is None:
                raise InvalidInputError(
                    f"output '{name}' is not an output of this model; expected one of "
                    f"{list(by_name)}"
                )
            chosen.setdefault(name, output)
        layers = sorted({output.layer for output in chosen.values() if output.layer})
        if len(layers) > 1:
            raise InvalidInputError(
                f"outputs {list(chosen)} reach into Flatten layers {layers}; ask for the "
                "tensors of one Flatten layer per request"
            )
        return Selection(
            tuple(chosen.values()),
            layers[0] if layers else "",
            any(output.source for output in chosen.values()),
        )


@dataclasses.dataclass(frozen=True)
class NamedResult:
    """The answer to a request for named outputs.

    Attributes:
        model_name: The model that answered.
        model_version: Its version.
        outputs: Name -> array, in the order asked for.
        layout: The layout of the inspected Flatten layer; None when none was.
    """

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    layout: FlattenLayout | None


def signature_of(description: ModelDescription, layouts: dict[str, FlattenLayout]) -> Signature:
    """The named tensors of a served model.

    Args:
        description: The model's description (one input, one output).
        layouts: Its Flatten layers' layouts, by layer name.
    """
    prediction = description.outputs[0]
    outputs = [NamedOutput(prediction)]
    for name in description.flatten_layers:
        layout = layouts[name]
        if name != prediction.name:  # else the Flatten layer's output is the prediction
            flat = TensorSpec(name, prediction.dtype, (None, layout.flat_size))
            outputs.append(NamedOutput(flat, name))
        outputs.append(
            NamedOutput(
                TensorSpec(name + SOURCE_SUFFIX, prediction.dtype, (None, *layout.source_shape)),
                name,
                source=True,
            )
        )
    return Signature(description.inputs[0], tuple(outputs))
