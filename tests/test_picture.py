"""The picture of Inspect: drawn where the layout says, for both formats and the NCHW case."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from flatscope.layout import CHANNELS_FIRST, CHANNELS_LAST
from flatscope.plot import DPI, FIGURE_SIZE

# A flat index whose channel sits at the other end of the order when read wrongly.
FLAT = 29


def _channels_last() -> keras.Model:
    inputs = keras.Input((6, 5, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="last")


def _channels_first() -> keras.Model:
    # ZeroPadding2D runs channels_first on the CPU (a Conv2D would not, on TensorFlow).
    inputs = keras.Input((3, 4, 5), name="image")
    x = keras.layers.ZeroPadding2D(1, data_format=CHANNELS_FIRST, name="pad")(inputs)
    x = keras.layers.Flatten(data_format=CHANNELS_FIRST, name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="first")


def _nchw_default_flatten() -> keras.Model:
    inputs = keras.Input((3, 4, 5), name="image")
    x = keras.layers.ZeroPadding2D(1, data_format=CHANNELS_FIRST, name="pad")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)  # channels_last, fed (C, H, W)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="nchw")


MODELS = {
    "channels_last": (_channels_last, CHANNELS_LAST, ("height", "width", "channels")),
    "channels_first": (_channels_first, CHANNELS_FIRST, ("height", "width", "channels")),
    "nchw_default_flatten": (_nchw_default_flatten, CHANNELS_LAST, ("channels", "height", "width")),
}


def _with_one_large_weight(model: keras.Model, flat: int) -> keras.Model:
    """Unit 1 of the head weighs flat feature ``flat`` at 5, every other feature 0.01."""
    head = model.get_layer("head")
    kernel = np.full(tuple(head.kernel.shape), 0.01, dtype=np.float32)
    kernel[flat, 1] = 5.0
    head.kernel.assign(kernel)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_picture_highlights_where_the_layout_says(serve_model, tmp_path: Path, name: str):
    build, data_format, order = MODELS[name]
    model = _with_one_large_weight(build(), FLAT)
    server = serve_model(model)
    inputs = np.random.default_rng(1).random((2, *model.inputs[0].shape[1:]), dtype=np.float32)
    with server.client() as client:
        result = client.inspect(inputs, include_source=True, include_dense_kernel=True)
        picture = client.plot_inspect(inputs, tmp_path / "inspect.png", flat_index=FLAT)
        client.plot_inspect(inputs, tmp_path / "inspect.svg", flat_index=FLAT)
    layout = result.layout
    assert layout.data_format == data_format
    assert layout.flat_order == order
    assert (name == "nchw_default_flatten") == bool(layout.note)
    value = result.flattened[0, FLAT]

    # The highlighted source element is the one the layout names, and carries the value.
    assert picture.source_index == layout.source_index(FLAT)
    assert layout.flat_index(picture.source_index) == FLAT
    assert result.source[(0, *picture.source_index)] == value
    channels = layout.axis_names.index("channels")
    spatial = tuple(i for a, i in enumerate(picture.source_index) if a != channels)
    assert picture.channel == picture.source_index[channels]
    assert picture.cell == spatial
    # It is drawn there in the mosaic of channels, in the strip and in the zoom.
    x, y = picture.mosaic_xy
    assert picture.mosaic[y, x] == value
    height, width = picture.map_shape
    row, column = divmod(picture.channel, picture.mosaic_columns)
    assert (y - row * (height + 1), x - column * (width + 1)) == picture.cell
    sx, sy = picture.strip_xy
    assert picture.strip[sy, sx] == value
    assert picture.strip.shape[1] == max(layout.strides)
    assert picture.zoom[FLAT - picture.zoom_start] == value
    for k, label in picture.zoom_ticks:
        flat = picture.zoom_start + k
        assert flat % picture.minor == 0
        assert label == f"{flat}\n{layout.source_index(flat)}"
    assert layout.formula in picture.title and data_format in picture.title

    # The Dense weights: unit 1's one large weight lands on the cell the layout says ...
    assert picture.dense_layer == "head"
    row_of_unit = picture.units.index(1)
    maps = picture.weights[row_of_unit]
    assert maps.shape == picture.map_shape
    assert np.unravel_index(np.argmax(maps), maps.shape) == picture.cell
    # ... and read back in the wrong order, somewhere else.
    wrong = picture.scrambled[row_of_unit]
    assert np.unravel_index(np.argmax(wrong), wrong.shape) != picture.cell
    assert picture.wrong_order != picture.flat_order
    assert picture.wrong_order[0] == "channels" or picture.wrong_order[-1] == "channels"

    # The files: a non-blank PNG of the figure's size, and an SVG that parses.
    with Image.open(tmp_path / "inspect.png") as png:
        assert png.format == "PNG"
        assert png.size == (int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    root = ElementTree.parse(tmp_path / "inspect.svg").getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 100


def test_picture_without_a_dense_layer_draws_no_weights(serve_model, tmp_path: Path):
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Flatten(name="flatten")(inputs)
    model = keras.Model(inputs, keras.layers.Activation("softmax")(x), name="no_dense")
    server = serve_model(model)
    batch = np.random.default_rng(0).random((1, 4, 4, 2), dtype=np.float32)
    with server.client() as client:
        assert client.inspect(batch, include_dense_kernel=True).dense is None
        picture = client.plot_inspect(batch, tmp_path / "plain.png")
    assert picture.weights is None and picture.dense_layer == ""
    # The default highlight is the largest feature.
    assert picture.flat_index == int(np.argmax(batch.reshape(-1)))
    with Image.open(tmp_path / "plain.png") as png:
        assert png.size == (int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))


def _keras_io_mnist_convnet() -> keras.Model:
    # keras.io's "Simple MNIST convnet": a Dropout sits between Flatten and the Dense head.
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="mnist_convnet")


def _dense_behind_other_layers() -> keras.Model:
    # Identity at inference (GaussianNoise, then Identity) before a first Dense; a second
    # Dense behind a Dropout reads the first's output, not the Flatten's.
    inputs = keras.Input((5, 4, 2), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.GaussianNoise(0.1)(x)
    x = keras.layers.Identity()(x)
    x = keras.layers.Dense(6, name="head")(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="second")(x), name="behind")


def _direct_and_behind_dropout() -> keras.Model:
    # Two Dense layers read the Flatten: one directly, one through a Dropout. The direct
    # one is the Flatten's reader, whatever order Keras lists them in.
    inputs = keras.Input((5, 4, 2), name="image")
    flat = keras.layers.Flatten(name="flatten")(inputs)
    behind = keras.layers.Dense(3, name="via_dropout")(keras.layers.Dropout(0.2)(flat))
    direct = keras.layers.Dense(3, name="head")(flat)
    return keras.Model(inputs, keras.layers.Add()([behind, direct]), name="direct")


def _shared_dropout() -> keras.Model:
    # One Dropout called on two Flatten layers' outputs: each call passes on its own input
    # only, so each Flatten has its own Dense ("other" -> "second").
    inputs = keras.Input((5, 4, 2), name="image")
    dropout = keras.layers.Dropout(0.2)
    other = keras.layers.Flatten(name="other")(keras.layers.Conv2D(2, 1)(inputs))
    second = keras.layers.Dense(3, name="second")(dropout(other))
    head = keras.layers.Dense(3, name="head")(dropout(keras.layers.Flatten(name="flatten")(inputs)))
    return keras.Model(inputs, keras.layers.Add()([head, second]), name="shared")


@pytest.mark.parametrize(
    "build",
    [
        _keras_io_mnist_convnet,
        _dense_behind_other_layers,
        _direct_and_behind_dropout,
        _shared_dropout,
    ],
)
def test_the_dense_layer_behind_layers_that_pass_values_on_is_found(serve_model, build):
    model = build()
    server = serve_model(model)
    batch = np.random.default_rng(0).random((1, *model.input_shape[1:]), dtype=np.float32)
    readers = {"flatten": "head", "other": "second"}
    with server.client() as client:
        for flatten in [layer.name for layer in model.layers if layer.name in readers]:
            dense = client.inspect(batch, layer=flatten, include_dense_kernel=True).dense
            assert dense is not None and dense.layer_name == readers[flatten]
            kernel = keras.ops.convert_to_numpy(model.get_layer(readers[flatten]).kernel)
            np.testing.assert_array_equal(dense.kernel, kernel)


def test_plot_refuses_unknown_extension_and_rank(serve_model, tmp_path: Path):
    inputs = keras.Input((6,))
    model = keras.Model(
        inputs, keras.layers.Dense(2)(keras.layers.Flatten(name="flatten")(inputs)), name="flat1"
    )
    server = serve_model(model)
    batch = np.ones((1, 6), np.float32)
    with server.client() as client:
        with pytest.raises(ValueError, match=r"expected a file ending in \.png or \.svg"):
            client.plot_inspect(batch, tmp_path / "x.jpg")
        with pytest.raises(ValueError, match="2-D feature maps with channels"):
            client.plot_inspect(batch, tmp_path / "x.png")
