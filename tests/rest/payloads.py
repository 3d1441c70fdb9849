"""Inputs the REST tests send."""

from __future__ import annotations

import numpy as np


def images(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A batch of random images of the embedded model's input shape."""
    return np.random.default_rng(seed).random((batch, 48, 48, 3), dtype=np.float32)
