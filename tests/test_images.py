"""Preparing image files for the model: polarity from the border, crop, scale, centre."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flatscope.images import DIGIT_BOX, centre_digit, is_dark_on_light, load_image

SHAPE = (48, 48, 3)


def _stroke(path: Path, dark_on_light: bool, box=(30, 20, 60, 150), size=(200, 180)) -> Path:
    paper, ink = (255, 0) if dark_on_light else (0, 255)
    image = Image.new("L", size, paper)
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    image.save(path)
    return path


def test_polarity_is_read_from_the_border(tmp_path: Path):
    dark = load_image(_stroke(tmp_path / "dark.png", True), SHAPE)
    light = load_image(_stroke(tmp_path / "light.png", False), SHAPE)
    np.testing.assert_allclose(dark, light, atol=1e-6)
    assert dark.max() == pytest.approx(1.0)
    # The background is black: a light digit on dark, as the model reads.
    assert dark[0, 0, 0] == 0.0 and dark[-1, -1, 0] == 0.0
    # --invert forces the flip, whatever the border says.
    forced = load_image(tmp_path / "light.png", SHAPE, invert=True)
    assert forced.mean() == 0.0  # the light digit became the background: no ink left


def test_digit_is_cropped_scaled_and_centred_by_mass(tmp_path: Path):
    # A tall bar far in a corner of a wide picture ends up in the middle, DIGIT_BOX tall.
    frame = load_image(_stroke(tmp_path / "bar.png", True), SHAPE)[..., 0]
    rows = np.flatnonzero(frame.max(axis=1) > 0.5)
    assert rows[-1] - rows[0] + 1 == pytest.approx(DIGIT_BOX * 48, abs=2)
    ys, xs = np.indices(frame.shape)
    centre = ((ys * frame).sum() / frame.sum(), (xs * frame).sum() / frame.sum())
    assert centre == pytest.approx((23.5, 23.5), abs=1.0)
    # Where the digit sat and how much margin it had make no difference.
    moved = load_image(
        _stroke(tmp_path / "moved.png", True, box=(120, 60, 150, 190), size=(300, 260)), SHAPE
    )[..., 0]
    np.testing.assert_allclose(moved, frame, atol=0.05)


def test_blank_picture_gives_a_blank_frame():
    assert not centre_digit(np.full((30, 40), 0.7, np.float32), (48, 48)).any()
    assert is_dark_on_light(np.ones((5, 5)))
    assert not is_dark_on_light(np.zeros((5, 5)))


def test_stretch_fit_resizes_the_whole_picture(tmp_path: Path):
    path = _stroke(tmp_path / "bar.png", False)
    stretched = load_image(path, (18, 20, 1), fit="stretch")
    assert stretched.shape == (18, 20, 1)
    # The bar keeps its place: it was in the left third of the picture.
    assert stretched[:, :7].mean() > stretched[:, 10:].mean()
    with pytest.raises(ValueError, match="fit 'crop'"):
        load_image(path, SHAPE, fit="crop")


def test_transparent_paper_is_laid_on_the_shade_opposite_the_ink(tmp_path: Path):
    # A black digit on transparent paper (as drawing programs save it) reads like on white.
    rgba = Image.new("RGBA", (100, 120), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((40, 10, 55, 110), fill=(0, 0, 0, 255))
    rgba.save(tmp_path / "clear.png")
    clear = load_image(tmp_path / "clear.png", SHAPE)
    assert clear.max() == pytest.approx(1.0) and clear[0, 0, 0] == 0.0
