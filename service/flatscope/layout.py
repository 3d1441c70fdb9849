"""Index layout of a Keras Flatten layer: which flat feature came from which source element.

Keras' Flatten reshapes row-major (C order). With ``data_format="channels_first"`` it
first moves axis 1 of the source (the channels) to the end, so for a (C, H, W) source
the flat order is (h, w, c) with c fastest: ``flat = (h*W + w)*C + c``. A
channels_last Flatten (the default) fed channels_first feature maps keeps them as they
are: ``flat = (c*H + h)*W + w``. This module states that mapping as per-axis strides.

Pure Python and numpy: nothing here imports Keras or gRPC, so clients use it too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"
DATA_FORMATS = (CHANNELS_LAST, CHANNELS_FIRST)

_SPATIAL_NAMES = {1: ("steps",), 2: ("height", "width"), 3: ("depth", "height", "width")}
_SYMBOLS = {
    "steps": "t",
    "height": "h",
    "width": "w",
    "depth": "d",
    "channels": "c",
    "features": "f",
}


@dataclasses.dataclass(frozen=True)
class FlattenLayout:
    """Where each output element of one Flatten layer comes from.

    For every index ``idx`` into ``source_shape``:
    ``flattened[n, sum(idx[a] * strides[a])] == source[n, *idx]``.

    Attributes:
        layer_name: Name of the Flatten layer.
        data_format: The Flatten layer's own ``data_format``.
        source_shape: Shape of the tensor entering Flatten, without the batch axis.
        axis_names: A name for each axis of ``source_shape``, in its order.
        strides: For each axis of ``source_shape``, its step in the flat index.
        source_data_format: ``data_format`` of the layer that produced the source
            tensor, or "" when no such layer could be found; it names the axes.
        note: A warning when the layout is easy to get wrong, else "".
    """

    layer_name: str
    data_format: str
    source_shape: tuple[int, ...]
    axis_names: tuple[str, ...]
    strides: tuple[int, ...]
    source_data_format: str = ""
    note: str = ""

    @property
    def flat_size(self) -> int:
        """F, the number of features Flatten emits per example."""
        return math.prod(self.source_shape)

    @property
    def rank(self) -> int:
        """Rank of the source tensor, without the batch axis."""
        return len(self.source_shape)

    @property
    def flat_order(self) -> tuple[str, ...]:
        """Axis names in the order the flat index walks them, slowest first."""
        return tuple(self.axis_names[a] for a in self._axes_by_stride())

    @property
    def formula(self) -> str:
        """The layout in words, e.g. ``flat = h*768 + w*32 + c``."""
        terms = []
        for axis in self._axes_by_stride():
            symbol = _symbol(self.axis_names[axis])
            stride = self.strides[axis]
            terms.append(symbol if stride == 1 else f"{symbol}*{stride}")
        return "flat = " + " + ".join(terms)

    def fields(self) -> dict[str, str | int | tuple]:
        """The flatscope.v1 ``FlattenLayout`` message's fields (no coordinates), by name:
        what every API sends, each in its own encoding."""
        return {
            "layer_name": self.layer_name,
            "data_format": self.data_format,
            "source_shape": self.source_shape,
            "axis_names": self.axis_names,
            "strides": self.strides,
            "flat_size": self.flat_size,
            "flat_order": self.flat_order,
            "formula": self.formula,
            "source_data_format": self.source_data_format,
            "note": self.note,
        }

    def flat_index(self, source_index: Sequence[int]) -> int:
        """Returns the flat index that the source element ``source_index`` goes to.

        Raises:
            IndexError: ``source_index`` has the wrong length or lies outside the shape.
        """
        if len(source_index) != self.rank:
            raise IndexError(
                f"source index {tuple(source_index)} has {len(source_index)} entries; "
                f"expected {self.rank} for source shape {self.source_shape}"
            )
        for i, size, name in zip(source_index, self.source_shape, self.axis_names, strict=True):
            if not 0 <= i < size:
                raise IndexError(f"{name} index {i} is outside [0, {size})")
        return sum(int(i) * s for i, s in zip(source_index, self.strides, strict=True))

    def source_index(self, flat_index: int) -> tuple[int, ...]:
        """Returns the source index that flat index ``flat_index`` came from.

        Raises:
            IndexError: ``flat_index`` lies outside [0, flat_size).
        """
        if not 0 <= flat_index < self.flat_size:
            raise IndexError(f"flat index {flat_index} is outside [0, {self.flat_size})")
        return tuple(int(v) for v in self.coordinates(flat_index, 1)[0])

    def coordinates(self, start: int, count: int) -> np.ndarray:
        """Source indices of the flat indices ``[start, start + count)``.

        Returns:
            An int64 array of shape (count, rank): row ``k`` is the source index of flat
            index ``start + k``. The caller keeps the range inside [0, flat_size).
        """
        rows = np.empty((count, self.rank), dtype=np.int64)
        if count == 0:
            return rows
        flat = np.arange(start, start + count, dtype=np.int64)
        for axis, (stride, size) in enumerate(zip(self.strides, self.source_shape, strict=True)):
            rows[:, axis] = (flat // stride) % size
        return rows

    def flatten(self, source: np.ndarray) -> np.ndarray:
        """Flattens a batch ``(N, *source_shape)`` the way the Flatten layer does."""
        order = self._axes_by_stride()
        moved = np.transpose(source, (0, *(a + 1 for a in order)))
        return moved.reshape(source.shape[0], self.flat_size)

    def unflatten(self, flattened: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`flatten`: puts a batch ``(N, F)`` back into source order.

        Useful to read Dense weights (``kernel.T``, shape (units, F)) onto the feature map.
        """
        order = self._axes_by_stride()
        moved = flattened.reshape(flattened.shape[0], *(self.source_shape[a] for a in order))
        return np.transpose(moved, (0, *(order.index(a) + 1 for a in range(self.rank))))

    def _axes_by_stride(self) -> tuple[int, ...]:
        # Ties (size-1 axes) keep source order, so the result is deterministic.
        return tuple(sorted(range(self.rank), key=lambda a: -self.strides[a]))


def row_major_strides(shape: tuple[int, ...], order: Sequence[int]) -> tuple[int, ...]:
    """Strides of ``shape``'s axes when laid out in ``order`` (slowest first), row-major.

    Args:
        shape: The source shape, without the batch axis.
        order: Every axis of ``shape`` once, the slowest-varying first.

    Returns:
        For each axis of ``shape``, its step in the flat index.
    """
    strides = [0] * len(shape)
    step = 1
    for axis in reversed(order):
        strides[axis] = step
        step *= shape[axis]
    return tuple(strides)


def flatten_layout(
    layer_name: str,
    source_shape: Sequence[int],
    data_format: str,
    source_data_format: str = "",
    axes_moved_by: str = "",
) -> FlattenLayout:
    """Derives the layout of a Flatten layer from its configuration.

    Args:
        layer_name: Name of the Flatten layer.
        source_shape: Shape of the tensor entering it, without the batch axis.
        data_format: The layer's ``data_format``.
        source_data_format: ``data_format`` of the layer producing its input, if known;
            it decides which axis is called "channels".
        axes_moved_by: The name of a layer upstream that moves axes (a Permute), when
            no ``source_data_format`` is known: the axes are then named by position
            ("axis1", the first after the batch) and the note says why.

    Returns:
        The layout.

    Raises:
        ValueError: A data format is unknown or the shape has an unknown dimension.
    """
    shape = tuple(int(d) for d in source_shape)
    for fmt in (data_format, source_data_format or data_format):
        if fmt not in DATA_FORMATS:
            raise ValueError(f"data_format {fmt!r} is not one of {DATA_FORMATS}")
    if any(d < 0 for d in shape):
        raise ValueError(f"source shape {shape} must be fully known to have a layout")
    rank = len(shape)
    # Order in which Keras' Flatten lays the source axes out, slowest first.
    order = tuple(range(rank))
    if data_format == CHANNELS_FIRST and rank > 1:
        order = (*range(1, rank), 0)
    strides = row_major_strides(shape, order)
    naming_format = source_data_format or data_format
    positional = bool(axes_moved_by) and rank > 1
    layout = FlattenLayout(
        layer_name=layer_name,
        data_format=data_format,
        source_shape=shape,
        axis_names=(
            tuple(f"axis{i}" for i in range(1, rank + 1))
            if positional
            else axis_names(rank, naming_format)
        ),
        strides=strides,
        source_data_format=source_data_format,
    )
    if source_data_format and source_data_format != data_format and rank > 1:
        note = (
            f"Flatten '{layer_name}' is {data_format} but its input comes from a "
            f"{source_data_format} layer: features are ordered "
            f"({', '.join(layout.flat_order)}), {layout.flat_order[-1]} fastest, not "
            "channels fastest as after a matching Flatten; reorder Dense weights "
            "when porting them to or from a model that flattens (h, w, c)."
        )
        layout = dataclasses.replace(layout, note=note)
    elif positional:
        note = (
            f"The tensor entering Flatten '{layer_name}' comes from '{axes_moved_by}', "
            "which may move axes: which one is height, width or channels is not known "
            f"here, so they are named by position; features are ordered "
            f"({', '.join(layout.flat_order)}), {layout.flat_order[-1]} fastest."
        )
        layout = dataclasses.replace(layout, note=note)
    return layout


def axis_names(rank: int, data_format: str) -> tuple[str, ...]:
    """Conventional names for the axes of a feature map of this rank and format."""
    if rank == 0:
        return ()
    if rank == 1:
        return ("features",)
    spatial = _SPATIAL_NAMES.get(rank - 1, tuple(f"axis{i}" for i in range(rank - 1)))
    if data_format == CHANNELS_FIRST:
        return ("channels", *spatial)
    return (*spatial, "channels")


def _symbol(name: str) -> str:
    return _SYMBOLS.get(name, name)
