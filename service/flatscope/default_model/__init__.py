"""The embedded default model: a small CNN that reads handwritten digits.

It is trained by ``python -m flatscope.default_model.train`` on the 8x8 digits that
scikit-learn ships (no download), scaled up to 48x48x3 as :func:`to_images` shows.
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

    Each pixel becomes a 6x6 block, repeated over three channels: a white digit on black.
    """
    scale = IMAGE_SIZE // 8
    images = digits.reshape(-1, 8, 8).astype(np.float32) / 16.0
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.repeat(images[..., np.newaxis], 3, axis=-1)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and held-out digits, split the same way every time.

    Returns:
        ``(x_train, y_train, x_test, y_test)``, images as :func:`to_images` makes them.
        Needs scikit-learn (a development dependency, not a serving one).
    """
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
    return to_images(x_train), y_train, to_images(x_test), y_test
