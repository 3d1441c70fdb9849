"""Trains the embedded default model and writes it next to this file.

Run: ``python -m flatscope.default_model.train``. Deterministic on one machine; the
committed ``digits_cnn.keras`` came from this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

from flatscope.default_model import IMAGE_SIZE, digits_split, model_path


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--output", type=Path, default=model_path())
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=2)
    probabilities = keras.ops.convert_to_numpy(model(x_test, training=False))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} digits")
    # A fresh, uncompiled copy carries the weights without the optimizer's state.
    served = build_model()
    served.set_weights(model.get_weights())
    served.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
