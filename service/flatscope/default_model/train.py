"""Trains the embedded default model and writes it next to this file.

Run: ``python -m flatscope.default_model.train``. Deterministic on one machine; the
committed ``digits_cnn.keras`` came from this script.

The training digits are scikit-learn's 8x8 training split, each drawn several times
more: scaled up smoothly, then turned, sheared, stretched, made bolder or thinner,
blurred and given a margin, and finally prepared by the same code that prepares a
picture file (:func:`flatscope.images.centre_digit`), so that what the model learns
from looks like what ``flatscope predict --image`` sends it. Beside them, printed
digits: each digit typeset in Computer Modern's sans serif and typewriter faces
(:data:`PRINTED_FONTS`) and drawn anew the same way, since the handwritten 8x8 digits
alone teach little of a printed 4 or 6.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from flatscope.default_model import IMAGE_SIZE, model_path, raw_digits_split, to_images
from flatscope.images import centre_digit


def build_model() -> keras.Model:
    """Input (48, 48, 3) -> Conv2D(32) -> MaxPooling2D(2) -> Flatten (24*24*32) -> Dense(10)."""
    return keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="digit"),
        ],
        name="digits",
    )


def augment(digit: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (values 0..16) drawn anew at random, as a (48, 48) frame in [0, 1]."""
    from PIL import Image

    size = int(rng.choice([24, 32, 48]))
    pixels = Image.fromarray(np.asarray(digit, dtype=np.float32) * (255.0 / 16.0), mode="F")
    image = pixels.resize((size, size), Image.Resampling.BICUBIC).convert("L")
    if label == 1:
        image = _printed_one(image, rng)
    elif label == 4 and rng.random() < 0.5:
        image = _closed_four(image, rng)
    return _redraw(image, size, label, rng)


def augment_printed(font_file: Path, label: int, rng: np.random.Generator) -> np.ndarray:
    """The digit ``label`` typeset in ``font_file`` and drawn anew at random, as ``augment``."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.choice([24, 32, 48]))
    font = ImageFont.truetype(str(font_file), size)
    left, top, right, bottom = font.getbbox(str(label))
    image = Image.new("L", (size, size))
    scale = min(1.0, size / max(right - left, bottom - top, 1))
    glyph = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(glyph).text((1 - left, 1 - top), str(label), font=font, fill=255)
    if scale < 1.0:
        glyph = glyph.resize(
            (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
        )
    image.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
    return _redraw(image, size, label, rng, thin=False)


def _redraw(
    image, size: int, label: int, rng: np.random.Generator, thin: bool = True
) -> np.ndarray:
    """A (size, size) digit turned, sheared, stretched, re-stroked and blurred at random.

    ``thin=False`` for strokes already thin (typeset ones), which thinning would erase.
    """
    from PIL import Image, ImageFilter

    # Turn, shear and stretch about the centre, on a canvas with room around the digit.
    pad = size // 2
    canvas = Image.new("L", (size + 2 * pad, size + 2 * pad))
    canvas.paste(image, (pad, pad))
    angle = np.deg2rad(rng.uniform(-12, 12))
    shear = rng.uniform(-0.25, 0.25)
    # Each 8x8 digit fills its box; written and printed digits are narrower than that
    # relative to their height (a "1" above all), or wider (a printed 4 or 6).
    narrow = 0.4 if label == 1 else 0.6
    sx = np.exp(rng.uniform(np.log(narrow), np.log(1.15 if label == 1 else 1.5)))
    sy = rng.uniform(0.85, 1.15)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = matrix @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inverse = np.linalg.inv(matrix)
    centre = np.array(canvas.size) / 2
    offset = centre - inverse @ centre
    coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
    canvas = canvas.transform(
        canvas.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    # Stroke width: thicker (max filter) or thinner (min filter), sometimes as it is.
    odds = [0.2, 0.1, 0.4, 0.3] if thin else [0.3, 0.1, 0.0, 0.6]
    stroke = rng.choice(["thick", "thicker", "thin", "same"], p=odds)
    if stroke == "thick":
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    elif stroke == "thicker":
        canvas = canvas.filter(ImageFilter.MaxFilter(5))
    elif stroke == "thin" and size >= 32:
        canvas = canvas.filter(ImageFilter.MinFilter(3 if size == 32 else 5))
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    gray = np.asarray(canvas, dtype=np.float32) / 255.0
    if rng.random() < 0.7:
        gray = _elastic(gray, size, rng)
    # Contrast: from soft ink to hard strokes; a high cut also makes them thinner
    # (printed digits have thinner strokes than these blurred 8x8 ones).
    if rng.random() < (0.6 if thin else 0.3):
        gray = np.clip((gray - rng.uniform(0.3, 0.65)) * rng.uniform(3.0, 6.0), 0.0, 1.0)
    gray = gray * rng.uniform(0.6, 1.0) + rng.normal(0.0, rng.uniform(0.0, 0.04), gray.shape)
    return centre_digit(np.clip(gray, 0.0, 1.0), (IMAGE_SIZE, IMAGE_SIZE))


def _elastic(gray: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bends the strokes by a smooth random displacement field (Simard et al., 2003).

    Scaled from their 28-pixel MNIST setting (sigma 4, alpha 34) to a digit ``size`` tall.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    sigma, alpha = 4.0 * size / 28, 34.0 * size / 28 * rng.uniform(0.3, 1.0)
    dy = gaussian_filter(rng.uniform(-1, 1, gray.shape), sigma) * alpha
    dx = gaussian_filter(rng.uniform(-1, 1, gray.shape), sigma) * alpha
    ys, xs = np.indices(gray.shape)
    return map_coordinates(gray, [ys + dy, xs + dx], order=1, mode="constant")


def _printed_one(image, rng: np.random.Generator):
    """Sometimes gives a "1" the flag, and the foot, of a printed or continental one.

    Few of the 8x8 ones have them; without, a flagged "1" reads as a 3 or a 7.
    """
    from PIL import ImageDraw

    ink = np.asarray(image) > 100
    rows = np.flatnonzero(ink.any(axis=1))
    if not rows.size:
        return image
    top, bottom = int(rows[0]), int(rows[-1])
    height = bottom - top
    centre = int(np.flatnonzero(ink[top + height // 8]).mean())
    width = max(2, round(image.size[0] * rng.uniform(0.06, 0.12)))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:
        length = height * rng.uniform(0.2, 0.4)
        angle = np.deg2rad(rng.uniform(20, 60))
        end = (centre - length * np.cos(angle), top + length * np.sin(angle))
        draw.line([(centre, top), end], fill=255, width=width)
    if rng.random() < 0.35:
        half = height * rng.uniform(0.15, 0.3)
        draw.line([(centre - half, bottom), (centre + half, bottom)], fill=255, width=width)
    return image


def _closed_four(image, rng: np.random.Generator):
    """Closes a "4" at the top, as printed ones are (the 8x8 ones are mostly open).

    A stroke from the top of the upright to the left end of the crossbar.
    """
    from PIL import ImageDraw

    ink = np.asarray(image) > 100
    rows = np.flatnonzero(ink.any(axis=1))
    if rows.size < 4:
        return image
    top, height = int(rows[0]), int(rows[-1] - rows[0])
    upright = np.flatnonzero(ink[top : top + max(1, height // 6)].any(axis=0))
    band = ink[top + height // 2 : top + 4 * height // 5]
    bar = np.flatnonzero(band.any(axis=0))
    if not upright.size or not bar.size:
        return image
    left = int(bar[0])
    y = top + height // 2 + int(np.flatnonzero(band[:, left])[0])
    width = max(2, round(image.size[0] * rng.uniform(0.06, 0.1)))
    ImageDraw.Draw(image).line([(int(upright[-1]), top), (left, y)], fill=255, width=width)
    return image


# Typefaces for printed digits: Computer Modern's sans serif and typewriter faces, from
# matplotlib's fonts (so that training needs nothing from the machine). The held-out test
# (tests/test_reads_digits.py) draws with other faces: Pillow's default, DejaVu Sans,
# Serif, Sans Mono and Sans Bold, STIX General and Computer Modern Roman (cmr10). Keep
# the two sets apart, and keep DejaVu and STIX, in any style, out of this one: the test
# then measures how the model reads typefaces it never saw.
PRINTED_FONTS = ("cmss10.ttf", "cmtt10.ttf")


def printed(copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` random drawings of each digit in each of :data:`PRINTED_FONTS`."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    rng = np.random.default_rng(seed)
    labels = np.tile(np.repeat(np.arange(10), copies), len(PRINTED_FONTS))
    frames = np.stack(
        [
            augment_printed(folder / name, label, rng)
            for name in PRINTED_FONTS
            for label in range(10)
            for _ in range(copies)
        ]
    )
    return np.repeat(frames[..., np.newaxis], 3, axis=-1), labels


def augmented(
    digits: np.ndarray, labels: np.ndarray, copies: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` random drawings of each 8x8 digit, as (N * copies, 48, 48, 3) inputs."""
    rng = np.random.default_rng(seed)
    frames = np.stack(
        [
            augment(d, int(label), rng)
            for d, label in zip(digits.reshape(-1, 8, 8), labels, strict=True)
            for _ in range(copies)
        ]
    )
    return np.repeat(frames[..., np.newaxis], 3, axis=-1), np.repeat(labels, copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--copies", type=int, default=10, help="augmented drawings per digit")
    parser.add_argument(
        "--printed", type=int, default=200, help="drawings of each digit in each printed font"
    )
    parser.add_argument("--output", type=Path, default=model_path())
    args = parser.parse_args()

    started = time.monotonic()
    keras.utils.set_random_seed(0)
    raw_train, y_train, raw_test, y_test = raw_digits_split()
    x_train, x_test = to_images(raw_train), to_images(raw_test)
    x_more, y_more = augmented(raw_train, y_train, args.copies, seed=0)
    x_printed, y_printed = printed(args.printed, seed=1)
    x_all = np.concatenate([x_train, x_more, x_printed])
    y_all = np.concatenate([y_train, y_more, y_printed])
    print(f"{len(x_all)} training images in {time.monotonic() - started:.0f} s")
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        # Label smoothing: the training digits are one hand's; do not be sure of them.
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    targets = keras.utils.to_categorical(y_all, 10)
    model.fit(x_all, targets, batch_size=64, epochs=args.epochs, shuffle=True, verbose=2)
    probabilities = keras.ops.convert_to_numpy(model(x_test, training=False))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} digits")
    # A fresh, uncompiled copy carries the weights without the optimizer's state.
    served = build_model()
    served.set_weights(model.get_weights())
    served.save(args.output)
    print(f"wrote {args.output} after {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
