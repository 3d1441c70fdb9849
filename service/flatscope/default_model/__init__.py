"""The embedded default model: a small CNN that reads handwritten digits.

It is trained by ``python -m flatscope.default_model.train`` on the 8x8 digits that
scikit-learn ships (no download), scaled up and centred as :func:`to_images` shows, the
way :func:`flatscope.images.load_image` prepares an image file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

MODEL_FILE = "digits_cnn.keras"
IMAGE_SIZE = 48
TEST_FRACTION = 0.25
SPLIT_SEED = 0
# The prediction's classes by index: class k is the digit k (scikit-learn's targets).
LABELS = tuple(str(digit) for digit in range(10))


def model_path() -> Path:
    """Path of the committed, trained model file."""
    return Path(str(resources.files(__name__).joinpath(MODEL_FILE)))


def to_images(digits: np.ndarray) -> np.ndarray:
    """Scales scikit-learn's 8x8 digits (values 0..16, ink high) to (N, 48, 48, 3) in [0, 1].

    Each digit is scaled up smoothly (bicubic, to 32x32), then cropped, scaled and
    centred by :func:`flatscope.images.centre_digit`: a white digit on black, as
    ``load_image`` makes of a picture file. The three channels are equal.
    """
    return np.stack([from_8x8(d) for d in digits.reshape(-1, 8, 8)])


def from_8x8(digit: np.ndarray, upscale: int = 32) -> np.ndarray:
    """One 8x8 digit (values 0..16) as a (48, 48, 3) model input."""
    from PIL import Image

    from flatscope.images import centre_digit

    pixels = Image.fromarray(np.asarray(digit, dtype=np.float32) / 16.0, mode="F")
    smooth = np.asarray(pixels.resize((upscale, upscale), Image.Resampling.BICUBIC))
    frame = centre_digit(np.clip(smooth, 0.0, 1.0), (IMAGE_SIZE, IMAGE_SIZE))
    return np.repeat(frame[..., np.newaxis], 3, axis=-1)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and held-out digits, split the same way every time.

    Returns:
        ``(x_train, y_train, x_test, y_test)``, images as :func:`to_images` makes them.
        Needs scikit-learn (a development dependency, not a serving one).
    """
    raw_train, y_train, raw_test, y_test = raw_digits_split()
    return to_images(raw_train), y_train, to_images(raw_test), y_test


def raw_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The split of :func:`digits_split` as scikit-learn's 8x8 digits, (N, 64) in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data,
        digits.target,
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    return x_train, y_train, x_test, y_test
