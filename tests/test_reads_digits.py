"""The embedded model reads digits it never saw, drawn here, through ``flatscope predict``.

The held-out set: digits rendered from fonts that this machine, Pillow and matplotlib ship
(the model learnt from scikit-learn's handwritten 8x8 digits only), at several sizes,
margins and stroke widths, dark on light and light on dark, and the 8x8 digits of the
held-out split scaled up, all saved as PNG files. A sample goes through the
``flatscope predict --image`` command; the rest through the same image loading and the
Python client, in batches, against the same real server process.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from processes import ServerProcess, flatscope_all

from flatscope.client import Client
from flatscope.default_model import raw_digits_split
from flatscope.images import load_image

# Issue 17's bar. The committed model reaches 98.2 % of this set (98.1 % of the font
# digits, 98.7 % of the 8x8 ones); it learnt printed digits from two Computer Modern
# faces only (cmss10, cmtt10: see train.PRINTED_FONTS), none of those drawn here.
REQUIRED_ACCURACY = 0.90
FONT_FILES = (
    # The machine's fonts where it has them, else matplotlib's copies of the same.
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSans-Bold.ttf",
    # Only in matplotlib: a Times-like face and Computer Modern.
    "STIXGeneral.ttf",
    "cmr10.ttf",
)
SIZES = (24, 64, 160)  # font size in pixels
MARGINS = (0, 12, 60)  # paper around the digit, in pixels
STROKES = (0, 3)  # extra outline width in pixels (bolder), for sizes from 64
SAMPLE_THROUGH_CLI = 12


def _fonts() -> dict[str, object]:
    """Font name -> a function of the size that loads it."""
    found: dict[str, object] = {
        # Pillow >= 10.1: a real TrueType font (Aileron) at any size.
        "pillow-default": lambda size: ImageFont.load_default(size=size),
    }
    roots = [
        Path("/usr/share/fonts"),
        Path(matplotlib.get_data_path()) / "fonts" / "ttf",
    ]
    for name in FONT_FILES:
        for root in roots:
            hits = sorted(root.rglob(name)) if root.is_dir() else []
            if hits:
                found[name] = lambda size, path=hits[0]: ImageFont.truetype(str(path), size)
                break
    return found


def _draw(digit: int, font, margin: int, stroke: int, dark_on_light: bool) -> Image.Image:
    text = str(digit)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    width, height = right - left + 2 * margin, bottom - top + 2 * margin
    paper, ink = (250, 10) if dark_on_light else (5, 245)
    image = Image.new("L", (max(width, height), height), paper)
    x = (image.width - (right - left)) // 2 - left
    ImageDraw.Draw(image).text(
        (x, margin - top), text, font=font, fill=ink, stroke_width=stroke, stroke_fill=ink
    )
    return image.convert("RGB")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int, str]]:
    """(PNG file, true digit, what it is) for every held-out picture."""
    folder = tmp_path_factory.mktemp("digits")
    fonts = _fonts()
    assert len(fonts) >= 2, f"need two fonts to draw digits with; found {list(fonts)}"
    cases = []
    for (name, load), size in itertools.product(fonts.items(), SIZES):
        font = load(size)
        for digit, margin, stroke, dark in itertools.product(
            range(10), MARGINS, STROKES, (True, False)
        ):
            if stroke and size < 64:
                continue
            kind = f"{name} {size}px margin {margin} stroke {stroke} " + (
                "dark-on-light" if dark else "light-on-dark"
            )
            path = folder / f"{len(cases):05d}.png"
            _draw(digit, font, margin, stroke, dark).save(path)
            cases.append((path, digit, kind))
    # The held-out 8x8 digits, scaled up (nearest) to 64x64, light on dark as they come.
    _, _, x_test, y_test = raw_digits_split()
    for pixels, digit in zip(x_test, y_test, strict=True):
        image = np.round(pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8)
        path = folder / f"{len(cases):05d}.png"
        Image.fromarray(image).resize((64, 64), Image.Resampling.NEAREST).save(path)
        cases.append((path, int(digit), "8x8 held-out"))
    return cases


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with ServerProcess(log, "--max-batch-size", "256").serving() as started:
        yield started


def test_embedded_model_reads_drawn_digits(server: ServerProcess, drawn):
    rng = np.random.default_rng(0)
    sample = rng.choice(len(drawn), SAMPLE_THROUGH_CLI, replace=False)
    commands = [["predict", "--target", server.target, "--image", str(drawn[i][0])] for i in sample]
    cli_classes = {}
    for i, result in zip(sample, flatscope_all(*commands), strict=True):
        assert result.returncode == 0, result.stderr
        cli_classes[int(i)] = int(re.search(r"^class (\d) ", result.stdout, re.M).group(1))

    # The rest the way the command reads a file (same loading), batched.
    inputs = np.stack([load_image(path, (48, 48, 3)) for path, _, _ in drawn])
    with Client(server.target, timeout=60) as client:
        classes = np.concatenate(
            [client.predict(inputs[k : k + 256]).classes for k in range(0, len(inputs), 256)]
        )
    # The command and the batch agree where both ran.
    assert {i: int(classes[i]) for i in cli_classes} == cli_classes
    truth = np.array([digit for _, digit, _ in drawn])
    right = classes == truth
    kinds = [kind for _, _, kind in drawn]
    report = _report(kinds, truth, right)
    print(report)
    accuracy = float(right.mean())
    assert accuracy >= REQUIRED_ACCURACY, f"{accuracy:.3f} right\n{report}"
    # The polarity is found from the border: both read alike.
    dark, light = (
        right[np.array([part in kind for kind in kinds])].mean()
        for part in ("dark-on-light", "light-on-dark")
    )
    assert abs(dark - light) <= 0.02, f"dark on light {dark:.3f}, light on dark {light:.3f}"
    # The held-out handwriting, scaled up blocky (nearest), reads as well as in training.
    handwritten = right[np.array([kind == "8x8 held-out" for kind in kinds])].mean()
    assert handwritten >= 0.95, report


def _report(kinds: list[str], truth: np.ndarray, right: np.ndarray) -> str:
    lines = [f"{right.mean():.3f} right of {len(right)} drawn digits"]
    fonts = sorted({kind.split(" ")[0] for kind in kinds})
    for font in fonts:
        mask = np.array([kind.split(" ")[0] == font for kind in kinds])
        lines.append(f"  {font}: {right[mask].mean():.3f} of {mask.sum()}")
    per_digit = [f"{d}: {right[truth == d].mean():.2f}" for d in range(10)]
    lines.append("  by digit: " + ", ".join(per_digit))
    return "\n".join(lines)
