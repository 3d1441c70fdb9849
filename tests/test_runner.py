"""TensorFlow's two ways to run a pass give Keras' own floats, bit for bit.

On the CPU a model runs as a frozen graph in a session (less dispatch per pass); past
the weight limit, or where freezing fails, as eager concrete functions. Either way
the predictions and the Flatten tensors must be exactly what Keras computes.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from flatscope.inference import runner

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the session path is TensorFlow's"
)


def _convnet() -> keras.Model:
    # Batch norm after a convolution: constant folding would merge them and change floats.
    return keras.Sequential(
        [
            keras.Input((9, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, activation="softmax", name="digit"),
        ],
        name="convnet",
    )


@pytest.mark.parametrize(
    ("limit", "path"),
    [
        (runner.FROZEN_WEIGHTS_LIMIT, "as a frozen graph in a session"),
        (0, "as eager concrete functions"),
    ],
    ids=["frozen", "eager"],
)
def test_both_paths_give_keras_floats_exactly(monkeypatch, caplog, limit, path):
    monkeypatch.setattr(runner, "FROZEN_WEIGHTS_LIMIT", limit)
    model = _convnet()
    # Weights away from their initial values, so that the norm does something.
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
    model.get_layer("norm").moving_variance.assign(rng.uniform(0.5, 2.0, 4).astype(np.float32))
    flatten = model.get_layer("flatten")
    with caplog.at_level(logging.INFO, logger=runner.__name__):
        compiled = runner.compile_model(model, [flatten], device="cpu")
    assert f"tensorflow: passes run {path}" in caplog.text

    probe = keras.Model(model.inputs[0], [model.outputs[0], flatten.input, flatten.output])
    for batch in (1, 3, 8):
        inputs = rng.random((batch, 9, 8, 3), dtype=np.float32)
        expected = [keras.ops.convert_to_numpy(t) for t in probe(inputs)]
        (predicted,) = compiled.run(inputs)
        outputs, source, flattened = compiled.run(inputs, extras=True)
        np.testing.assert_array_equal(predicted, expected[0])
        np.testing.assert_array_equal(outputs, expected[0])
        np.testing.assert_array_equal(source, expected[1])
        np.testing.assert_array_equal(flattened, expected[2])
