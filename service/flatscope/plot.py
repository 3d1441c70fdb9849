"""Draws a picture of one Inspect answer with matplotlib (the ``plot`` extra).

matplotlib is imported only when a picture is drawn, so that serving never needs it; no
pyplot, so no global figure state: each picture is a ``Figure`` of its own, written by
the Agg (PNG) or SVG canvas. What is drawn comes from :func:`flatscope.picture.picture_of`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flatscope.picture import Picture, picture_of
from flatscope.results import InspectResult

FIGURE_SIZE = (16.0, 12.0)  # inches
DPI = 100  # a PNG is 1600 x 1200 pixels
FORMATS = (".png", ".svg")
_MARK = "#ff2d2d"


def plot_inspect(
    result: InspectResult, inputs: np.ndarray, path: Path, flat_index: int | None = None
) -> Picture:
    """Draws the picture of an Inspect answer into ``path`` (.png or .svg).

    Args:
        result: An Inspect answer with ``source``, and ``dense`` for the weight panels.
        inputs: The batch that was inspected; example 0 is drawn.
        path: Where to write; the extension picks the format.
        flat_index: The flat index to highlight; None picks the largest feature.

    Returns:
        What was drawn.

    Raises:
        ValueError: An unknown extension, or an answer the picture cannot show.
        ImportError: matplotlib is missing (``pip install 'flatscope[plot]'``).
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot draw into {path}: expected a file ending in .png or .svg")
    picture = picture_of(result, inputs, flat_index)
    draw(picture, path)
    return picture


def draw(picture: Picture, path: Path) -> None:
    """Lays out a :class:`Picture` and writes it to ``path`` (.png or .svg)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "drawing a picture needs matplotlib: pip install 'flatscope[plot]'"
        ) from None

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    figure.suptitle(picture.title, fontsize=12)
    dense = picture.weights is not None
    rows = figure.add_gridspec(
        5 if dense else 3, 1, height_ratios=[3.4, 1.4, 0.9, 1.1, 1.1][: 5 if dense else 3]
    )
    top = rows[0].subgridspec(1, 3, width_ratios=[1.0, 2.0, 1.3])
    image_axes = figure.add_subplot(top[0])
    mosaic_axes = figure.add_subplot(top[1])
    text_axes = figure.add_subplot(top[2])
    strip_axes = figure.add_subplot(rows[1])
    zoom_axes = figure.add_subplot(rows[2])

    image_axes.imshow(picture.image, cmap="gray", vmin=0, vmax=1)
    image_axes.set_title("model input (example 0)")
    image_axes.set_axis_off()

    _draw_mosaic(mosaic_axes, picture)
    _draw_text(text_axes, picture)
    _draw_strip(strip_axes, picture)
    _draw_zoom(zoom_axes, picture)
    _link(figure, picture, mosaic_axes, strip_axes, zoom_axes)
    if dense:
        _draw_weights(figure, rows[3], rows[4], picture)
    figure.savefig(path, dpi=DPI)


def _draw_mosaic(axes, picture: Picture) -> None:
    from matplotlib.patches import Rectangle

    axes.imshow(np.ma.masked_invalid(picture.mosaic), cmap="magma", interpolation="nearest")
    # Frame the highlighted channel's map, and the cell inside it.
    x, y = picture.mosaic_xy
    h, w = picture.cell
    height, width = picture.map_shape
    axes.add_patch(
        Rectangle((x - w - 0.5, y - h - 0.5), width, height, fill=False, ec="#33aaff", lw=1.5)
    )
    axes.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec=_MARK, lw=2))
    axes.set_title(
        f"what entered Flatten: one (H, W) map per channel, channel {picture.channel} framed"
    )
    axes.set_axis_off()


def _draw_text(axes, picture: Picture) -> None:
    h, w = picture.cell
    lines = [
        f"flat[{picture.flat_index}]  <-  source{picture.source_index}",
        f"(h {h}, w {w}, channel {picture.channel})",
        f"value {picture.strip[picture.strip_xy[1], picture.strip_xy[0]]:.4g}",
        "",
        f"flat order: {', '.join(picture.flat_order)}",
        f"({picture.flat_order[-1]} fastest)",
        f"a strip row: {picture.major} features",
        f"a block: {picture.minor} features",
    ]
    if picture.dense_layer:
        lines += [
            "",
            f"Dense layer after Flatten: '{picture.dense_layer}'",
            f"predicted class: {picture.units[0]}",
            "",
            "bottom rows: each class's |weights|,",
            "summed over channels, on (h, w):",
            f"  read back as ({_symbols(picture.flat_order)}): the layout",
            f"  read back as ({_symbols(picture.wrong_order)}): wrong",
        ]
    axes.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=11)
    axes.set_axis_off()


def _draw_strip(axes, picture: Picture) -> None:
    from matplotlib.patches import Rectangle

    strip = picture.strip
    axes.imshow(strip, cmap="magma", aspect="auto", interpolation="nearest")
    for x in range(picture.minor, picture.major, picture.minor):
        axes.axvline(x - 0.5, color="white", lw=0.3, alpha=0.5)
    for y in range(1, strip.shape[0]):
        axes.axhline(y - 0.5, color="white", lw=0.6, alpha=0.7)
    x, y = picture.strip_xy
    axes.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec=_MARK, lw=2))
    axes.add_patch(
        Rectangle(
            (picture.zoom_start % picture.major - 0.5, y - 0.5),
            len(picture.zoom),
            1,
            fill=False,
            ec="#33ff88",
            lw=1,
        )
    )
    axes.set_title(
        f"the flat vector, {strip.size} features, wrapped every {picture.major} "
        f"(rows: {picture.flat_order[0]}; thin lines every {picture.minor})"
    )
    axes.set_ylabel(picture.flat_order[0])
    axes.set_xlabel("flat index mod " + str(picture.major))


def _draw_zoom(axes, picture: Picture) -> None:
    from matplotlib.patches import Rectangle

    zoom = picture.zoom
    start = picture.zoom_start
    axes.imshow(zoom[np.newaxis], cmap="magma", aspect="auto", interpolation="nearest")
    for k, _ in picture.zoom_ticks:
        major = (start + k) % picture.major == 0
        axes.axvline(k - 0.5, color="#33ff88" if major else "white", lw=2 if major else 1)
    axes.set_xticks([k for k, _ in picture.zoom_ticks])
    axes.set_xticklabels([label for _, label in picture.zoom_ticks], fontsize=8)
    axes.set_yticks([])
    k = picture.flat_index - start
    axes.add_patch(Rectangle((k - 0.5, -0.5), 1, 1, fill=False, ec=_MARK, lw=2.5))
    axes.set_title(
        f"flat[{start}:{start + len(zoom)}]: a new block every {picture.minor} "
        f"(green: every {picture.major})"
    )


def _link(figure, picture: Picture, mosaic_axes, strip_axes, zoom_axes) -> None:
    from matplotlib.patches import ConnectionPatch

    x, y = picture.mosaic_xy
    k = picture.flat_index - picture.zoom_start
    for target, xy in ((strip_axes, picture.strip_xy), (zoom_axes, (k, 0))):
        figure.add_artist(
            ConnectionPatch(
                xyA=(x, y),
                coordsA=mosaic_axes.transData,
                xyB=xy,
                coordsB=target.transData,
                color=_MARK,
                lw=1.2,
                arrowstyle="->",
            )
        )


def _draw_weights(figure, right_row, wrong_row, picture: Picture) -> None:
    assert picture.weights is not None and picture.scrambled is not None
    units = picture.units
    right = right_row.subgridspec(1, len(units))
    wrong = wrong_row.subgridspec(1, len(units))
    for i, unit in enumerate(units):
        for grid, maps, label in (
            (right, picture.weights, f"as ({_symbols(picture.flat_order)})"),
            (wrong, picture.scrambled, f"WRONG:\n({_symbols(picture.wrong_order)})"),
        ):
            axes = figure.add_subplot(grid[i])
            axes.imshow(maps[i], cmap="viridis", interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if i == 0:
                axes.set_ylabel(label, fontsize=9)
            if grid is right:
                axes.set_title(f"class {unit}" + (" (predicted)" if i == 0 else ""), fontsize=9)


def _symbols(names: tuple[str, ...]) -> str:
    return ", ".join(name[0] for name in names)
