"""Loading a Keras model and describing it: signature, layer table, Flatten layouts."""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path

import keras
import numpy as np

from flatscope import default_model
from flatscope.errors import ModelLoadError, one_line
from flatscope.inference.archive import check_archive, check_hdf5
from flatscope.layout import FlattenLayout, flatten_layout
from flatscope.metadata import LayerRow, ModelDescription, TensorSpec
from flatscope.results import DenseKernel

log = logging.getLogger(__name__)


# What loads, and how to get there from what does not.
FORMATS = ".keras (Keras 3) and legacy .h5/.hdf5 (Keras 2's HDF5) model files"
CONVERT = (
    "to convert, load the model where it loads (Keras 2: tf.keras.models.load_model) "
    'and save it with model.save("model.keras")'
)
H5_SUFFIXES = (".h5", ".hdf5")


def load(path: Path | None) -> tuple[keras.Model, str]:
    """Loads a ``.keras`` or legacy ``.h5`` file with safe mode on, or the embedded model.

    Safe mode refuses what would run code from the file (a ``Lambda`` layer's pickled
    function) in both formats.

    Returns:
        The model and a description of where it came from.

    Raises:
        ModelLoadError: The file is missing, unreadable, in another format, past a size
            cap (see :mod:`flatscope.inference.archive`), or not a model we can serve.
    """
    source = str(path) if path else f"embedded:{default_model.MODEL_FILE}"
    file = path or default_model.model_path()
    check_format(file)
    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; all mean "cannot serve this".
        raise ModelLoadError(f"cannot load {file}: {one_line(str(exc))}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{file} holds a {type(model).__name__}, not a keras.Model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(
            f"{file}: model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "flatscope serves models with exactly one of each"
        )
    shape = tuple(model.inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ModelLoadError(
            f"{file}: model input shape {shape} has unknown dimensions besides the batch; "
            "flatscope serves fixed-size inputs (rebuild it with keras.Input(shape=...))"
        )
    if model.inputs[0].dtype != "float32":
        raise ModelLoadError(
            f"{file}: model input dtype is {model.inputs[0].dtype}; flatscope serves float32"
        )
    return model, source


def check_format(file: Path) -> None:
    """Refuses a file that is not a model flatscope loads, saying what loads and how to convert.

    Raises:
        ModelLoadError: The file is missing, a directory, of another format, or past a
            size cap.
    """
    if file.is_dir():
        kind = "a TensorFlow SavedModel" if (file / "saved_model.pb").is_file() else "a"
        raise ModelLoadError(
            f"cannot load {file}: it is {kind} directory; flatscope loads {FORMATS}; {CONVERT}"
        )
    if not file.is_file():
        raise ModelLoadError(f"model file {file} does not exist")
    name = file.name.lower()
    if name.endswith((".weights.h5", ".weights.json")):
        raise ModelLoadError(
            f"cannot load {file}: it holds weights only (model.save_weights), without the "
            f"architecture; flatscope loads {FORMATS}: build the model, load_weights, "
            'and save it with model.save("model.keras")'
        )
    if file.suffix in H5_SUFFIXES:
        check_hdf5(file)
        return
    if file.suffix != ".keras":
        raise ModelLoadError(
            f"cannot load {file}: {file.suffix or 'a name without a suffix'} is not a model "
            f"format flatscope loads; it loads {FORMATS}; {CONVERT}"
        )
    if not zipfile.is_zipfile(file):
        raise ModelLoadError(
            f"cannot load {file}: not a Keras v3 archive (a .keras file is a zip; "
            "this one is truncated or in another format)"
        )
    check_archive(file)


def flatten_layers(model: keras.Model) -> list[keras.layers.Flatten]:
    """The model's top-level Flatten layers, in layer order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Flatten)]


# Layers that hand their input on unchanged at inference: a Dense behind one of them still
# reads the Flatten's indices (keras.io's MNIST convnet puts Dropout between the two).
INFERENCE_IDENTITY = (
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)


def _calls(layer: keras.layers.Layer) -> list:
    """The layer's call nodes: where Keras keeps which tensors each call read and wrote
    (as in _axes_decided_by)."""
    return list(getattr(layer, "_inbound_nodes", ()))


def dense_after(model: keras.Model, flatten: keras.layers.Flatten) -> DenseKernel | None:
    """The kernel of the Dense layer that reads ``flatten``'s output, directly or through
    layers that are the identity at inference (Dropout and the like), if one does.

    Follows tensors, not layers: a Dropout called on the Flatten's output and elsewhere
    passes on only the first call's values. A Dense reading the output directly wins
    over one behind such layers.
    """
    carrying = {id(t) for node in _calls(flatten) for t in node.output_tensors}
    for _ in range(len(model.layers) + 1):  # one more identity layer of depth per round
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense) and any(
                id(t) in carrying for node in _calls(layer) for t in node.input_tensors
            ):
                kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float32)
                return DenseKernel(layer_name=layer.name, kernel=kernel)
        further = {
            id(t)
            for layer in model.layers
            if isinstance(layer, INFERENCE_IDENTITY)
            for node in _calls(layer)
            if any(id(t) in carrying for t in node.input_tensors)
            for t in node.output_tensors
        }
        if further <= carrying:
            return None
        carrying |= further
    return None


def layout_of(layer: keras.layers.Flatten) -> FlattenLayout:
    """Derives the index layout of one Flatten layer from the layer and its producer."""
    source_shape = tuple(layer.input.shape[1:])
    if any(d is None for d in source_shape):
        raise ModelLoadError(
            f"Flatten layer '{layer.name}' takes shape {(None, *source_shape)}; a layout "
            "needs every dimension but the batch to be known"
        )
    source_data_format, moved_by = _axes_decided_by(layer.input)
    return flatten_layout(
        layer.name,
        source_shape,
        layer.data_format,
        source_data_format=source_data_format,
        axes_moved_by=moved_by,
    )


def describe(model: keras.Model, source: str, name: str, version: str) -> ModelDescription:
    """Builds the signature and layer table of a model."""
    layers = tuple(
        LayerRow(
            name=layer.name,
            type=type(layer).__name__,
            output_shape=_output_shape(layer),
            param_count=int(layer.count_params()) if layer.built else 0,
            data_format=str(getattr(layer, "data_format", "") or ""),
        )
        for layer in model.layers
    )
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    output_layer = model.layers[-1].name if model.layers else "output"
    return ModelDescription(
        name=name or model.name,
        version=version,
        source=source,
        backend=keras.backend.backend(),
        device="",
        inputs=tuple(_spec(t, t.name) for t in model.inputs),
        outputs=tuple(_spec(t, output_layer) for t in model.outputs),
        layers=layers,
        total_params=trainable + non_trainable,
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        flatten_layers=tuple(layer.name for layer in flatten_layers(model)),
    )


def _spec(tensor, name: str) -> TensorSpec:
    return TensorSpec(name=name, dtype=str(tensor.dtype), shape=tuple(tensor.shape))


def _output_shape(layer: keras.layers.Layer) -> tuple[int | None, ...]:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # never called, or shared by several calls
        return ()
    if isinstance(output, (list, tuple)):
        output = output[0]
    return tuple(output.shape)


# Layers whose output axes mean what their (first) input's axes meant.
_AXIS_PRESERVING = (
    *INFERENCE_IDENTITY,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)
# Layers after which an axis may mean what another axis meant.
_AXIS_MOVING = (keras.layers.Permute, keras.layers.Reshape, keras.layers.Lambda)


def _axes_decided_by(tensor) -> tuple[str, str]:
    """What decides the meaning of ``tensor``'s axes: ``(data_format, "")`` of the nearest
    layer upstream that has one, ``("", name)`` of a layer that moves axes (Permute,
    Reshape, Lambda) met first, or ``("", "")`` (the input, or any other layer).

    Walks back through layers that keep every axis' meaning (activations, dropout,
    normalisation, element-wise merges).
    """
    # Keras has no public "producer of this tensor" API; ``_keras_history`` is what its
    # own graph code follows. ``layer.output`` is no substitute: layers of a Sequential
    # model have several call nodes and it answers for the first one only.
    for _ in range(1000):  # bounded: a graph is acyclic, this only guards odd models
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return "", ""
        layer = history.operation
        data_format = getattr(layer, "data_format", None)
        if data_format:
            return str(data_format), ""
        if isinstance(layer, _AXIS_MOVING):
            return "", layer.name
        if not isinstance(layer, _AXIS_PRESERVING):
            return "", ""
        try:
            inputs = layer._inbound_nodes[history.node_index].input_tensors
        except (AttributeError, IndexError):
            return "", ""
        if not inputs:
            return "", ""
        tensor = inputs[0]
    return "", ""
