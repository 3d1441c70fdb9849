"""Reading image files into model inputs (client side, Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_image(path: Path, example_shape: tuple[int, ...], invert: bool = False) -> np.ndarray:
    """Reads an image as one float32 example of ``example_shape`` (H, W, C), scaled to [0, 1].

    Args:
        path: Any format Pillow reads.
        example_shape: The model's input shape without the batch axis; C must be 1 or 3.
        invert: Flip light and dark (the default model expects a light digit on dark).

    Raises:
        ValueError: The model does not take channels_last images.
    """
    from PIL import Image

    if len(example_shape) != 3 or example_shape[2] not in (1, 3):
        raise ValueError(
            f"the model takes inputs of shape {example_shape}; image files fit only "
            "(height, width, 1 or 3)"
        )
    height, width, channels = example_shape
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    if invert:
        pixels = 1.0 - pixels
    return pixels.reshape(example_shape)
