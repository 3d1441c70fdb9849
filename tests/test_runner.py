"""TensorFlow's two ways to run a pass give Keras' own floats.

On the CPU a model runs as a frozen graph in a session (less dispatch per pass); past
the weight limit, or where freezing fails, as eager concrete functions. Either way
the predictions and the Flatten tensors must be what Keras computes: bit for bit for
most models, within rounding (runner.FROZEN_TOLERANCE of each tensor's largest
magnitude) where oneDNN picks another kernel for the session's constant weights, as it
does for one-channel (MNIST-shaped) convolutions at batch 1.
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

FROZEN = "tensorflow: passes run as a frozen graph in a session"
EAGER = "tensorflow: passes run as eager concrete functions"


def _convnet() -> keras.Model:
    # Batch norm after a convolution: constant folding would merge them and change floats.
    model = keras.Sequential(
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
    # Weights away from their initial values, so that the norm does something.
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
    model.get_layer("norm").moving_variance.assign(rng.uniform(0.5, 2.0, 4).astype(np.float32))
    return model


def _recurrent() -> keras.Model:
    # An LSTM is a while loop: freezing inlines its body into the frozen graph.
    return keras.Sequential(
        [
            keras.Input((6, 4)),
            keras.layers.LSTM(3, return_sequences=True, name="lstm"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(2, name="out"),
        ],
        name="recurrent",
    )


def _mnist(channels: int, seed: int) -> keras.Model:
    # The plain MNIST model of tutorials: 28x28 images, conv -> pool -> flatten -> dense.
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28, channels)),
            keras.layers.Conv2D(8 * (seed + 1), 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="digit"),
        ],
        name=f"mnist_{channels}",
    )


def _assert_close_to_keras(compiled: runner.CompiledModel, model: keras.Model) -> None:
    """Keras' own predict and probe, to runner.FROZEN_TOLERANCE of each tensor's scale."""
    flatten = model.get_layer("flatten")
    probe = keras.Model(model.inputs[0], [model.outputs[0], flatten.input, flatten.output])
    rng = np.random.default_rng(11)
    for batch in (1, 2, 3, 8):
        inputs = rng.random((batch, *model.inputs[0].shape[1:]), dtype=np.float32)
        expected = [model.predict(inputs, verbose=0)]
        expected += [keras.ops.convert_to_numpy(t) for t in probe(inputs)][1:]
        got = [*compiled.run(inputs), *compiled.run(inputs, extras=True)[1:]]
        for name, a, b in zip(("predictions", "source", "flattened"), got, expected, strict=True):
            scale = float(np.abs(b).max())
            np.testing.assert_allclose(
                a, b, rtol=0, atol=runner.FROZEN_TOLERANCE * scale, err_msg=f"{name}, {batch=}"
            )


@pytest.mark.parametrize(("channels", "seed"), [(1, 0), (1, 1), (3, 0)])
def test_mnist_shaped_models_take_the_frozen_session(caplog, channels, seed):
    _cpu_only()
    model = _mnist(channels, seed)
    compiled = _compile(model, caplog)
    assert "will not do" not in caplog.text
    assert FROZEN in caplog.text
    _assert_close_to_keras(compiled, model)


def test_rounding_error_is_relative_to_the_largest_magnitude():
    expected = np.array([[4.0, -2.0, 0.0]], np.float32)
    assert runner.rounding_error(expected.copy(), expected) == 0.0
    assert runner.rounding_error(expected + [[0, 4e-6, 0]], expected) == pytest.approx(1e-6)
    assert runner.rounding_error(expected[:, :2], expected) == np.inf
    with_nan = np.array([np.nan, 1.0], np.float32)
    assert runner.rounding_error(with_nan.copy(), with_nan) == 0.0
    assert runner.rounding_error(np.array([0.0, 1.0], np.float32), with_nan) == np.inf


def _assert_keras_floats(compiled: runner.CompiledModel, model: keras.Model) -> None:
    flatten = model.get_layer("flatten")
    probe = keras.Model(model.inputs[0], [model.outputs[0], flatten.input, flatten.output])
    rng = np.random.default_rng(11)
    for batch in (1, 3, 8):
        inputs = rng.standard_normal((batch, *model.inputs[0].shape[1:]), dtype=np.float32)
        expected = [keras.ops.convert_to_numpy(t) for t in probe(inputs)]
        (predicted,) = compiled.run(inputs)
        outputs, source, flattened = compiled.run(inputs, extras=True)
        np.testing.assert_array_equal(predicted, expected[0])
        np.testing.assert_array_equal(outputs, expected[0])
        np.testing.assert_array_equal(source, expected[1])
        np.testing.assert_array_equal(flattened, expected[2])


def _compile(model: keras.Model, caplog) -> runner.CompiledModel:
    with caplog.at_level(logging.INFO, logger=runner.__name__):
        return runner.compile_model(model, [model.get_layer("flatten")], device="cpu")


def _cpu_only():
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("TensorFlow sees a GPU here: the session path is the CPU's")


@pytest.mark.parametrize("build", [_convnet, _recurrent], ids=["convnet", "lstm"])
def test_the_frozen_session_gives_keras_floats_exactly(caplog, build):
    _cpu_only()
    model = build()
    compiled = _compile(model, caplog)
    assert FROZEN in caplog.text
    _assert_keras_floats(compiled, model)


def test_past_the_weight_limit_the_model_runs_eagerly_with_the_same_floats(monkeypatch, caplog):
    monkeypatch.setattr(runner, "FROZEN_WEIGHTS_LIMIT", 0)
    model = _convnet()
    compiled = _compile(model, caplog)
    assert "MiB of weights, not frozen" in caplog.text
    assert EAGER in caplog.text
    _assert_keras_floats(compiled, model)


def test_a_graph_that_does_not_freeze_runs_eagerly_with_the_same_floats(monkeypatch, caplog):
    from tensorflow.python.framework import convert_to_constants

    def refuse(function, *args, **kwargs):
        raise ValueError("cannot freeze this graph")

    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2", refuse)
    model = _convnet()
    compiled = _compile(model, caplog)
    assert "the frozen graph will not do (cannot freeze this graph)" in caplog.text
    assert EAGER in caplog.text
    _assert_keras_floats(compiled, model)


@pytest.mark.parametrize("build", [_convnet, _recurrent], ids=["convnet", "lstm"])
def test_a_frozen_graph_with_other_floats_falls_back_to_graphs_traced_after_it(
    monkeypatch, caplog, build
):
    # Freezing has replaced the loop body's functions in the eager context by then; the
    # eager graphs, traced afterwards, must still compute Keras' own floats.
    def off_by_a_little(self, inputs, extras):
        return [output + 1e-3 for output in (self._inspect if extras else self._predict)(inputs)]

    monkeypatch.setattr(runner._FrozenSession, "run", off_by_a_little)
    model = build()
    compiled = _compile(model, caplog)
    assert "its results differ from the eager graph's" in caplog.text
    assert EAGER in caplog.text
    _assert_keras_floats(compiled, model)
