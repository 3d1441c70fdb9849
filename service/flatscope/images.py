"""Reading image files into model inputs (client side, Pillow), and centring digits.

A digit is prepared the way MNIST-style readers prepare one: the picture is turned
light-on-dark (decided from its border), cropped to the digit's bounding box, padded to a
square, scaled so that its longer side spans :data:`DIGIT_BOX` of the frame, and placed so
that its centre of mass sits at the frame's centre. The default model was trained on
digits prepared by this same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The digit's longer side, as a fraction of the frame (MNIST: 20 of 28 pixels).
DIGIT_BOX = 0.72
# A pixel counts as ink above this fraction of the brightest ink, for the bounding box.
INK_LEVEL = 0.25
# Thinner strokes than this fraction of the digit's box are made bolder (printed digits
# are thin beside handwritten ones).
STROKE_WIDTH = 0.12
FITS = ("digit", "stretch")


def load_image(
    path: Path,
    example_shape: tuple[int, ...],
    invert: bool | None = None,
    fit: str = "digit",
) -> np.ndarray:
    """Reads an image as one float32 example of ``example_shape`` (H, W, C), scaled to [0, 1].

    Args:
        path: Any format Pillow reads.
        example_shape: The model's input shape without the batch axis; C must be 1 or 3.
        invert: True flips light and dark, False keeps them; None (the default) decides
            from the border: a light border means a dark digit on light paper, which is
            flipped (the default model reads a light digit on dark).
        fit: "digit" crops, scales and centres the digit (see :func:`centre_digit`);
            "stretch" resizes the whole picture to the input size.

    Raises:
        ValueError: The model does not take channels_last images, or ``fit`` is unknown.
    """
    from PIL import Image

    if len(example_shape) != 3 or example_shape[2] not in (1, 3):
        raise ValueError(
            f"the model takes inputs of shape {example_shape}; image files fit only "
            "(height, width, 1 or 3)"
        )
    if fit not in FITS:
        raise ValueError(f"fit {fit!r} is not one of {FITS}")
    height, width, channels = example_shape
    with Image.open(path) as image:
        image.load()
        if fit == "stretch":
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            if invert:
                pixels = 1.0 - pixels
            return pixels.reshape(example_shape)
        gray = np.asarray(_on_black(image).convert("L"), dtype=np.float32) / 255.0
    if invert is None:
        invert = is_dark_on_light(gray)
    if invert:
        gray = 1.0 - gray
    digit = centre_digit(gray, (height, width))
    return np.repeat(digit[..., np.newaxis], channels, axis=-1)


def is_dark_on_light(gray: np.ndarray) -> bool:
    """True when a picture's border is light: a dark digit on light paper.

    Args:
        gray: (H, W) values in [0, 1].
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return bool(np.median(border) > 0.5)


def centre_digit(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crops a light-on-dark digit to its ink, scales it and centres it by mass.

    Args:
        gray: (H, W) values in [0, 1], the digit lighter than its background.
        size: (height, width) of the frame to place it in.

    Returns:
        A float32 (height, width) frame in [0, 1]: the background 0, the brightest ink 1,
        the digit's longer side :data:`DIGIT_BOX` of the frame's shorter side, strokes
        thinner than :data:`STROKE_WIDTH` of that made bolder, all softened by a blur of
        one pixel. A picture without ink gives a black frame.
    """
    from PIL import Image

    height, width = size
    gray = np.asarray(gray, dtype=np.float32)
    ink = np.clip(gray - np.median(gray), 0.0, None)  # the background to 0
    peak = float(ink.max())
    out = np.zeros((height, width), dtype=np.float32)
    if peak <= 1e-3:
        return out
    ink /= peak
    rows = np.flatnonzero((ink > INK_LEVEL).any(axis=1))
    cols = np.flatnonzero((ink > INK_LEVEL).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    box = max(1, round(DIGIT_BOX * min(height, width)))
    scaled = Image.fromarray(square, mode="F").resize((box, box), Image.Resampling.BILINEAR)
    digit = np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)
    if digit.max() > 0:
        digit /= digit.max()
    digit = _smooth(_bolder(digit, STROKE_WIDTH * box))
    # Centre of mass to the frame's centre, the digit kept wholly inside.
    mass = digit.sum()
    ys, xs = np.indices(digit.shape)
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass
    top = int(np.clip(round((height - 1) / 2 - cy), 0, height - box))
    left = int(np.clip(round((width - 1) / 2 - cx), 0, width - box))
    out[top : top + box, left : left + box] = digit
    return out


def stroke_width(digit: np.ndarray) -> float:
    """The mean width of a digit's strokes in pixels: twice its ink area over its outline."""
    ink = digit > 0.5
    area = int(ink.sum())
    if area == 0:
        return 0.0
    padded = np.pad(ink, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    outline = int((ink & ~inner).sum())
    return 2.0 * area / max(outline, 1)


def _bolder(digit: np.ndarray, width: float) -> np.ndarray:
    """Widens strokes thinner than ``width`` pixels, one pixel each side at a time."""
    from PIL import Image, ImageFilter

    for _ in range(3):
        if stroke_width(digit) >= width:
            break
        image = Image.fromarray(digit, mode="F").filter(ImageFilter.MaxFilter(3))
        digit = np.asarray(image, dtype=np.float32)
    return digit


def _smooth(digit: np.ndarray) -> np.ndarray:
    """A 5-tap binomial blur (sigma 1 pixel): blocky upscaled pixels and hard font edges
    alike become the soft strokes the model was trained on."""
    taps = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
    height, width = digit.shape
    padded = np.pad(digit, 2)
    rows = sum(t * padded[i : i + height, :] for i, t in enumerate(taps))
    out = sum(t * rows[:, i : i + width] for i, t in enumerate(taps))
    peak = float(out.max())
    return out / peak if peak > 0 else out


def _on_black(image):
    """The image with any transparency laid over black or white, whichever is its paper."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        # Transparent paper: the ink is what is opaque; lay it on the opposite shade.
        ink = np.asarray(rgba.convert("L"))[alpha > 127]
        paper = (255, 255, 255) if ink.size and np.median(ink) < 128 else (0, 0, 0)
        background = Image.new("RGBA", rgba.size, (*paper, 255))
        return Image.alpha_composite(background, rgba)
    return image
