"""The layout math against Keras' own Flatten and numpy, over many shapes and formats."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from flatscope.layout import CHANNELS_FIRST, CHANNELS_LAST, flatten_layout

SHAPES = [
    (5,),
    (1,),
    (7, 3),
    (3, 2, 4),
    (24, 24, 32),
    (1, 1, 1),
    (6, 1, 3),
    (4, 5, 6),
    (2, 3, 4, 5),
    (2, 1, 3, 2, 2),
]
FORMATS = [CHANNELS_LAST, CHANNELS_FIRST]


def _random_batch(shape, seed=0):
    return np.random.default_rng(seed).standard_normal((3, *shape)).astype(np.float32)


def _documented_flatten(source: np.ndarray, data_format: str) -> np.ndarray:
    """Keras' documented Flatten rule, written independently of flatscope.layout.

    channels_first moves the channels (axis 1) last, then both formats reshape row-major.
    """
    if data_format == CHANNELS_FIRST and source.ndim > 2:
        source = np.moveaxis(source, 1, -1)
    return source.reshape(source.shape[0], -1)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layout_reproduces_keras_flatten(shape, data_format):
    source = _random_batch(shape)
    layout = flatten_layout("f", shape, data_format)
    expected = keras.ops.convert_to_numpy(keras.layers.Flatten(data_format=data_format)(source))

    np.testing.assert_array_equal(_documented_flatten(source, data_format), expected)
    np.testing.assert_array_equal(layout.flatten(source), expected)
    # Every flat index, through the explicit coordinate rows...
    rows = layout.coordinates(0, layout.flat_size)
    np.testing.assert_array_equal(expected, source[(slice(None), *rows.T)])
    # ...and every source index, through the strides.
    for index in itertools.product(*(range(d) for d in shape)):
        flat = sum(i * s for i, s in zip(index, layout.strides, strict=True))
        np.testing.assert_array_equal(expected[:, flat], source[(slice(None), *index)])
    np.testing.assert_array_equal(layout.unflatten(expected), source)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flat_and_source_index_are_inverse(shape, data_format):
    layout = flatten_layout("f", shape, data_format)
    flats = [layout.flat_index(layout.source_index(f)) for f in range(layout.flat_size)]
    assert flats == list(range(layout.flat_size))
    assert layout.flat_size == int(np.prod(shape))


def test_classic_channels_last():
    layout = flatten_layout("flatten", (24, 24, 32), CHANNELS_LAST)
    assert layout.axis_names == ("height", "width", "channels")
    assert layout.strides == (768, 32, 1)
    assert layout.formula == "flat = h*768 + w*32 + c"
    assert layout.flat_size == 18432
    assert layout.source_index(13) == (0, 0, 13)
    assert layout.flat_index((1, 1, 1)) == 801
    assert layout.note == ""


def test_channels_first_flatten_orders_channels_fastest():
    # Keras moves channels last before the reshape: flat = (h*W + w)*C + c.
    layout = flatten_layout("flatten", (32, 24, 24), CHANNELS_FIRST)
    assert layout.axis_names == ("channels", "height", "width")
    assert layout.strides == (1, 768, 32)
    assert layout.flat_order == ("height", "width", "channels")
    assert layout.formula == "flat = h*768 + w*32 + c"


def test_default_flatten_fed_channels_first_data_warns():
    layout = flatten_layout("flatten", (32, 24, 24), CHANNELS_LAST, CHANNELS_FIRST)
    assert layout.axis_names == ("channels", "height", "width")
    assert layout.strides == (576, 24, 1)
    assert layout.formula == "flat = c*576 + h*24 + w"
    assert "width fastest" in layout.note and "channels_first" in layout.note


def test_axis_names_by_rank():
    assert flatten_layout("f", (5,), CHANNELS_LAST).axis_names == ("features",)
    assert flatten_layout("f", (7, 3), CHANNELS_LAST).axis_names == ("steps", "channels")
    assert flatten_layout("f", (2, 3, 4, 5), CHANNELS_FIRST).axis_names == (
        "channels",
        "depth",
        "height",
        "width",
    )


def test_indices_out_of_range_are_refused():
    layout = flatten_layout("f", (3, 2, 4), CHANNELS_LAST)
    with pytest.raises(IndexError, match=r"outside \[0, 24\)"):
        layout.source_index(24)
    with pytest.raises(IndexError, match="height index 3"):
        layout.flat_index((3, 0, 0))
    with pytest.raises(IndexError, match="expected 3"):
        layout.flat_index((1, 1))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="data_format"):
        flatten_layout("f", (2, 2), "nhwc")
    with pytest.raises(ValueError, match="fully known"):
        flatten_layout("f", (-1, 2), CHANNELS_LAST)
