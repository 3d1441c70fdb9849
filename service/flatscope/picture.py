"""What a picture of one Inspect answer shows: feature map, flat vector, Dense weights.

Pure numpy: :func:`picture_of` computes every array and coordinate that
:mod:`flatscope.plot` draws, so that tests check what the figure was drawn from.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from flatscope.layout import FlattenLayout, row_major_strides
from flatscope.results import InspectResult

MAX_UNITS = 10  # Dense units drawn, the predicted one first
GAP = 1  # pixels between channels in the mosaic


@dataclasses.dataclass(frozen=True)
class Picture:
    """What the figure of one Inspect answer draws, for example 0 of the batch.

    Coordinates are (x, y) in an image's pixels, x to the right and y down, as
    ``imshow`` places them.

    Attributes:
        title: The formula and the data formats (and the layout's note, if any).
        image: The model input as a picture: (H, W) or (H, W, 3), scaled to [0, 1].
        flat_index: The flat index highlighted.
        source_index: Its index into the source, in the order of the source axes.
        channel: Its channel.
        cell: Its (h, w) on the feature map.
        mosaic: The source as a grid of its channels, one (H, W) map per channel,
            ``GAP`` pixels apart, row-major by channel; NaN between them.
        mosaic_columns: Channels per row of the mosaic.
        map_shape: (H, W) of one channel's map.
        mosaic_xy: Where ``cell`` of ``channel`` lies in ``mosaic``.
        strip: The flat vector, wrapped into rows of ``major`` features.
        strip_xy: Where ``flat_index`` lies in ``strip``.
        major: Stride of the slowest axis (a row of ``strip``; W*C for (h, w, c)).
        minor: Stride of the middle axis (C for (h, w, c)); marked inside the zoom.
        zoom_start: First flat index of ``zoom``.
        zoom: The flat vector around ``flat_index``, three ``minor`` blocks wide.
        zoom_ticks: (offset in ``zoom``, label) where a block starts: the flat index
            and the source index it came from.
        flat_order: Axis names in flat order, slowest first.
        dense_layer: Name of the Dense layer after Flatten; "" when there is none.
        units: The Dense units drawn (the predicted class first).
        weights: (len(units), H, W): each unit's |weights| summed over channels, read
            back onto the feature map with the layout. None without a Dense kernel.
        scrambled: The same, read back with the channels at the wrong end of the order
            (channels_first vs channels_last), as a wrong reshape would.
        wrong_order: Axis names of that wrong order, slowest first.
    """

    title: str
    image: np.ndarray
    flat_index: int
    source_index: tuple[int, ...]
    channel: int
    cell: tuple[int, int]
    mosaic: np.ndarray
    mosaic_columns: int
    map_shape: tuple[int, int]
    mosaic_xy: tuple[int, int]
    strip: np.ndarray
    strip_xy: tuple[int, int]
    major: int
    minor: int
    zoom_start: int
    zoom: np.ndarray
    zoom_ticks: tuple[tuple[int, str], ...]
    flat_order: tuple[str, ...]
    dense_layer: str
    units: tuple[int, ...]
    weights: np.ndarray | None
    scrambled: np.ndarray | None
    wrong_order: tuple[str, ...]


def picture_of(result: InspectResult, inputs: np.ndarray, flat_index: int | None = None) -> Picture:
    """Computes what the picture of an Inspect answer shows (example 0 of the batch).

    Args:
        result: An Inspect answer with ``source`` (``include_source``), and with
            ``dense`` for the weight panels.
        inputs: The batch that was inspected.
        flat_index: The flat index to highlight; None picks the largest feature.

    Raises:
        ValueError: No source in ``result``, or a source that is not a 2-D feature map
            with channels (rank 3 with a "channels" axis).
        IndexError: ``flat_index`` is outside [0, F).
    """
    layout = result.layout
    if result.source is None:
        raise ValueError("the picture needs the Flatten layer's input: inspect with include_source")
    if layout.rank != 3 or "channels" not in layout.axis_names:
        raise ValueError(
            f"the picture draws 2-D feature maps with channels; this Flatten layer's input "
            f"has axes {layout.axis_names} of shape {layout.source_shape}"
        )
    flattened = result.flattened[0]
    if flat_index is None:
        flat_index = int(np.argmax(flattened))
    source_index = layout.source_index(flat_index)
    channel_axis = layout.axis_names.index("channels")
    h_axis, w_axis = (a for a in range(3) if a != channel_axis)
    channel = source_index[channel_axis]
    cell = (source_index[h_axis], source_index[w_axis])
    # (C, H, W) whatever the source order.
    maps = np.transpose(result.source[0], (channel_axis, h_axis, w_axis))
    mosaic, columns = _mosaic(maps)
    height, width = maps.shape[1:]
    row, column = divmod(channel, columns)
    mosaic_xy = (column * (width + GAP) + cell[1], row * (height + GAP) + cell[0])

    by_stride = sorted(layout.strides, reverse=True)
    major, minor = by_stride[0], by_stride[1]
    strip = flattened.reshape(-1, major)
    strip_xy = (flat_index % major, flat_index // major)
    zoom_start = max(0, min(flat_index - minor - flat_index % minor, layout.flat_size - 3 * minor))
    zoom = flattened[zoom_start : zoom_start + 3 * minor]

    wrong = _wrong_layout(layout)
    dense_layer, units, weights, scrambled = "", (), None, None
    if result.dense is not None:
        kernel = result.dense.kernel
        dense_layer = result.dense.layer_name
        units = _units(result.outputs[0], kernel.shape[1])
        weights = _weight_maps(layout, kernel, units, (channel_axis, h_axis, w_axis))
        scrambled = _weight_maps(wrong, kernel, units, (channel_axis, h_axis, w_axis))
    return Picture(
        title=_title(layout),
        image=_as_picture(inputs[0]),
        flat_index=flat_index,
        source_index=source_index,
        channel=channel,
        cell=cell,
        mosaic=mosaic,
        mosaic_columns=columns,
        map_shape=(height, width),
        mosaic_xy=mosaic_xy,
        strip=strip,
        strip_xy=strip_xy,
        major=major,
        minor=minor,
        zoom_start=zoom_start,
        zoom=zoom,
        zoom_ticks=tuple(
            (k, f"{zoom_start + k}\n{layout.source_index(zoom_start + k)}")
            for k in range(len(zoom))
            if (zoom_start + k) % minor == 0
        ),
        flat_order=layout.flat_order,
        dense_layer=dense_layer,
        units=units,
        weights=weights,
        scrambled=scrambled,
        wrong_order=wrong.flat_order,
    )


def _mosaic(maps: np.ndarray) -> tuple[np.ndarray, int]:
    channels, height, width = maps.shape
    columns = math.ceil(math.sqrt(channels * height / width))
    rows = math.ceil(channels / columns)
    mosaic = np.full((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP), np.nan)
    for c in range(channels):
        row, column = divmod(c, columns)
        y, x = row * (height + GAP), column * (width + GAP)
        mosaic[y : y + height, x : x + width] = maps[c]
    return mosaic, columns


def _wrong_layout(layout: FlattenLayout) -> FlattenLayout:
    """The layout with the channels moved to the other end of the flat order."""
    order = [layout.axis_names.index(name) for name in layout.flat_order]
    channels = layout.axis_names.index("channels")
    order.remove(channels)
    order = [channels, *order] if layout.flat_order[-1] == "channels" else [*order, channels]
    strides = row_major_strides(layout.source_shape, order)
    return dataclasses.replace(layout, strides=strides, note="")


def _units(scores: np.ndarray, count: int) -> tuple[int, ...]:
    scores = np.asarray(scores).reshape(-1)
    predicted = int(np.argmax(scores)) if scores.size == count else 0
    if count <= MAX_UNITS:
        return (predicted, *(u for u in range(count) if u != predicted))
    return tuple(int(u) for u in np.argsort(scores)[::-1][:MAX_UNITS])


def _weight_maps(
    layout: FlattenLayout, kernel: np.ndarray, units: tuple[int, ...], axes: tuple[int, ...]
) -> np.ndarray:
    """Each unit's |weights| on the (H, W) of the source, summed over the channels."""
    on_source = layout.unflatten(np.ascontiguousarray(kernel.T[list(units)]))
    chw = np.transpose(on_source, (0, *(a + 1 for a in axes)))
    return np.abs(chw).sum(axis=1)


def _as_picture(example: np.ndarray) -> np.ndarray:
    """A model input as an image: (H, W) or (H, W, 3) scaled to [0, 1]."""
    x = np.asarray(example, dtype=np.float32)
    if x.ndim == 3 and x.shape[-1] not in (1, 3) and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] not in (1, 3):
        x = x.mean(axis=-1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 and not (x.ndim == 3 and x.shape[-1] == 3):
        x = x.reshape(x.shape[0], -1)
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _title(layout: FlattenLayout) -> str:
    source = layout.source_data_format or "unknown"
    title = (
        f"Flatten '{layout.layer_name}': {layout.formula}    "
        f"(data_format={layout.data_format}, input from a {source} layer, "
        f"source {layout.source_shape} as ({', '.join(layout.axis_names)}))"
    )
    if layout.note:
        title += (
            "\nnote: "
            + layout.note.split(":")[0]
            + ": features ordered "
            + (f"({', '.join(layout.flat_order)})")
        )
    return title
