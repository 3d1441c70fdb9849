"""Inspect over gRPC: the layout maps every flat index to the right source element."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from flatscope.layout import CHANNELS_FIRST, CHANNELS_LAST

SHAPES = [(5,), (7, 3), (3, 2, 4), (6, 1, 3), (4, 5, 6), (2, 3, 4, 5), (2, 1, 3, 2, 2)]


def _batch(model: keras.Model, n: int = 3, seed: int = 0) -> np.ndarray:
    shape = (n, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _keras_tensors(model: keras.Model, layer: str, inputs: np.ndarray):
    """What Keras itself computes at a layer: (its input, its output)."""
    target = model.get_layer(layer)
    probe = keras.Model(model.inputs[0], [target.input, target.output])
    return [keras.ops.convert_to_numpy(t) for t in probe(inputs)]


def _documented_flatten(source: np.ndarray, data_format: str) -> np.ndarray:
    """Keras' documented Flatten rule, written independently of flatscope.layout.

    channels_first moves the channels (axis 1) last, then both formats reshape row-major.
    """
    if data_format == CHANNELS_FIRST and source.ndim > 2:
        source = np.moveaxis(source, 1, -1)
    return source.reshape(source.shape[0], -1)


def _assert_layout_exact(result, inputs_source: np.ndarray, keras_flat: np.ndarray) -> None:
    layout = result.layout
    np.testing.assert_array_equal(result.source, inputs_source)
    np.testing.assert_array_equal(result.flattened, keras_flat)
    np.testing.assert_array_equal(
        _documented_flatten(result.source, layout.data_format), result.flattened
    )
    np.testing.assert_array_equal(layout.flatten(result.source), result.flattened)
    # flattened[n, sum(idx * strides)] == source[n, idx], for every idx.
    index = np.indices(layout.source_shape).reshape(layout.rank, -1)
    flat = np.tensordot(np.asarray(layout.strides), index, axes=1)
    assert sorted(flat.tolist()) == list(range(layout.flat_size))
    np.testing.assert_array_equal(result.flattened[:, flat], result.source[(slice(None), *index)])
    # The explicit coordinate rows, when asked for, say the same.
    if len(result.coordinates):
        flats = np.arange(
            result.coordinate_start, result.coordinate_start + len(result.coordinates)
        )
        np.testing.assert_array_equal(
            result.flattened[:, flats], result.source[(slice(None), *result.coordinates.T)]
        )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layout_is_exact_for_both_formats(serve_model, shape):
    inputs = keras.Input(shape, name="x")
    flats = [
        keras.layers.Flatten(data_format=CHANNELS_LAST, name="flat_last")(inputs),
        keras.layers.Flatten(data_format=CHANNELS_FIRST, name="flat_first")(inputs),
    ]
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Concatenate()(flats))
    model = keras.Model(inputs, outputs, name="rank" + str(len(shape)))
    server = serve_model(model)
    batch = _batch(model)
    flat_size = int(np.prod(shape))
    with server.client() as client:
        for layer, data_format in (("flat_last", CHANNELS_LAST), ("flat_first", CHANNELS_FIRST)):
            result = client.inspect(
                batch, layer=layer, include_source=True, coordinate_count=flat_size
            )
            source, keras_flat = _keras_tensors(model, layer, batch)
            assert result.layout.data_format == data_format
            assert result.layout.source_shape == shape
            assert result.layout.flat_size == flat_size
            _assert_layout_exact(result, source, keras_flat)


def test_classic_example(serve_model):
    inputs = keras.Input((3, 2, 4))
    model = keras.Model(
        inputs, keras.layers.Dense(2)(keras.layers.Flatten(name="flatten")(inputs)), name="m"
    )
    server = serve_model(model)
    with server.client() as client:
        result = client.inspect(
            np.arange(24, dtype=np.float32).reshape(1, 3, 2, 4),
            include_source=True,
            coordinate_start=13,
            coordinate_count=1,
        )
    np.testing.assert_array_equal(result.flattened[0], np.arange(24))
    assert result.coordinates.tolist() == [[1, 1, 1]]
    assert result.coordinate_start == 13
    assert result.layout.source_index(13) == (1, 1, 1)
    assert result.layout.formula == "flat = h*8 + w*4 + c"


def test_default_flatten_fed_channels_first_feature_maps(serve_model):
    # ZeroPadding2D runs channels_first on the CPU; the Flatten keeps its default format.
    inputs = keras.Input((3, 5, 4))
    x = keras.layers.ZeroPadding2D(1, data_format=CHANNELS_FIRST, name="pad")(inputs)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.Flatten(data_format=CHANNELS_LAST, name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name="nchw")
    server = serve_model(model)
    batch = _batch(model)
    with server.client() as client:
        result = client.inspect(batch, include_source=True, coordinate_count=3 * 7 * 6)
    layout = result.layout
    assert layout.source_data_format == CHANNELS_FIRST
    assert layout.axis_names == ("channels", "height", "width")
    assert layout.strides == (42, 6, 1)
    assert layout.formula == "flat = c*42 + h*6 + w"
    assert "width fastest" in layout.note
    _assert_layout_exact(result, *_keras_tensors(model, "flatten", batch))


def test_channels_first_flatten_after_channels_first_layer(serve_model):
    inputs = keras.Input((3, 5, 4))
    x = keras.layers.ZeroPadding2D(1, data_format=CHANNELS_FIRST, name="pad")(inputs)
    x = keras.layers.Flatten(data_format=CHANNELS_FIRST, name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name="nchw_cf")
    server = serve_model(model)
    batch = _batch(model)
    with server.client() as client:
        result = client.inspect(batch, include_source=True)
    layout = result.layout
    assert layout.axis_names == ("channels", "height", "width")
    assert layout.strides == (1, 18, 3)
    assert layout.formula == "flat = h*18 + w*3 + c"
    assert layout.note == ""
    _assert_layout_exact(result, *_keras_tensors(model, "flatten", batch))


@pytest.mark.parametrize(
    "mover",
    [
        lambda: keras.layers.Permute((3, 1, 2), name="permute"),
        lambda: keras.layers.Reshape((4, 4, 4), name="permute"),
    ],
    ids=["permute", "reshape"],
)
def test_axis_names_after_a_permute_are_not_guessed(serve_model, mover):
    # The Permute keeps the shape (4, 4, 4) but moves the axes: what was channels is now
    # axis 1 (a Reshape may regroup them). Nothing upstream decides what the axes mean
    # then, so the names are only positional.
    inputs = keras.Input((4, 4, 4))
    x = keras.layers.Conv2D(4, 1, name="conv")(inputs)
    x = mover()(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x), name="permuted")
    server = serve_model(model)
    batch = _batch(model)
    with server.client() as client:
        result = client.inspect(batch, include_source=True, coordinate_count=64)
    layout = result.layout
    assert layout.source_data_format == ""
    assert layout.data_format == CHANNELS_LAST
    assert layout.axis_names == ("axis1", "axis2", "axis3")
    assert layout.strides == (16, 4, 1)
    assert layout.formula == "flat = axis1*16 + axis2*4 + axis3"
    assert "'permute'" in layout.note and "named by position" in layout.note
    np.testing.assert_array_equal(
        result.flattened, result.source.reshape(result.source.shape[0], -1)
    )
    _assert_layout_exact(result, *_keras_tensors(model, "flatten", batch))


@pytest.mark.parametrize(
    ("layers", "example_shape", "axis_names"),
    [
        (
            lambda: [keras.layers.Conv2D(3, 3, name="conv"), keras.layers.MaxPooling2D(2)],
            (9, 7, 2),
            ("height", "width", "channels"),
        ),
        (lambda: [keras.layers.Conv1D(3, 3, name="conv")], (10, 4), ("steps", "channels")),
        (
            lambda: [keras.layers.Conv3D(2, 2, name="conv"), keras.layers.BatchNormalization()],
            (3, 4, 5, 2),
            ("depth", "height", "width", "channels"),
        ),
    ],
    ids=["conv2d-pool", "conv1d", "conv3d-batchnorm"],
)
def test_layout_after_convolutions(serve_model, layers, example_shape, axis_names):
    model = keras.Sequential(
        [
            keras.Input(example_shape),
            *layers(),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3),
        ],
        name="convnet",
    )
    server = serve_model(model)
    batch = _batch(model, n=4)
    with server.client() as client:
        result = client.inspect(batch, include_source=True, coordinate_start=5, coordinate_count=7)
    assert result.layout.axis_names == axis_names
    assert result.layout.source_data_format == CHANNELS_LAST
    _assert_layout_exact(result, *_keras_tensors(model, "flatten", batch))


def test_default_model_inspect(default_client):
    model = keras.saving.load_model(_default_model_path(), compile=False)
    batch = np.random.default_rng(3).random((5, 48, 48, 3), dtype=np.float32)
    result = default_client.inspect(
        batch, include_source=True, coordinate_start=18000, coordinate_count=432
    )
    assert result.layout.source_shape == (24, 24, 32)
    assert result.layout.formula == "flat = h*768 + w*32 + c"
    assert result.coordinates[-1].tolist() == [23, 23, 31]
    source, keras_flat = _keras_tensors(model, "flatten", batch)
    np.testing.assert_allclose(result.source, source, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.flattened, keras_flat, rtol=1e-5, atol=1e-6)
    _assert_layout_exact(result, result.source, result.flattened)
    # The same pass also gave the prediction, equal to Predict's.
    predicted = default_client.predict(batch)
    np.testing.assert_allclose(result.outputs, predicted.outputs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.classes, predicted.classes)


def test_a_reply_large_enough_to_be_joined_off_the_event_loop_is_whole(default_client):
    from flatscope.grpc.converters import OFF_LOOP_BYTES

    model = keras.saving.load_model(_default_model_path(), compile=False)
    n = OFF_LOOP_BYTES // (2 * 18432 * 4) + 2  # flattened + source: above the threshold
    batch = np.random.default_rng(4).random((n, 48, 48, 3), dtype=np.float32)
    result = default_client.inspect(batch, include_source=True)
    source, keras_flat = _keras_tensors(model, "flatten", batch)
    np.testing.assert_allclose(result.source, source, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.flattened, keras_flat, rtol=1e-5, atol=1e-6)


def test_source_only_when_asked(default_client):
    batch = np.zeros((2, 48, 48, 3), dtype=np.float32)
    result = default_client.inspect(batch)
    assert result.source is None
    assert result.flattened.shape == (2, 18432)
    assert len(result.coordinates) == 0


def _default_model_path():
    from flatscope.default_model import model_path

    return model_path()
