"""Predict and GetModelMetadata over gRPC, checked against Keras on the same inputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from flatscope import default_model


@pytest.fixture(scope="module")
def keras_default_model() -> keras.Model:
    return keras.saving.load_model(default_model.model_path(), compile=False)


def test_predict_equals_keras(default_client, keras_default_model):
    batch = np.random.default_rng(1).random((7, 48, 48, 3), dtype=np.float32)
    result = default_client.predict(batch)
    expected = keras.ops.convert_to_numpy(keras_default_model(batch))
    assert result.outputs.shape == (7, 10)
    np.testing.assert_allclose(result.outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
    assert (result.model_name, result.model_version) == ("digits", "1")


def test_default_model_reads_held_out_digits(default_client):
    _, _, x_test, y_test = default_model.digits_split()
    classes = np.concatenate(
        [default_client.predict(x_test[i : i + 200]).classes for i in range(0, len(x_test), 200)]
    )
    accuracy = float(np.mean(classes == y_test))
    assert len(classes) == len(y_test) == 450
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


def test_user_model_predict_equals_keras(serve_model):
    model = keras.Sequential(
        [
            keras.Input((12, 10, 2)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="softmax"),
        ],
        name="small",
    )
    server = serve_model(model, model_name="custom", model_version="7")
    batch = np.random.default_rng(2).standard_normal((3, 12, 10, 2)).astype(np.float32)
    with server.client(model_name="custom") as client:
        result = client.predict(batch)
    np.testing.assert_allclose(
        result.outputs, keras.ops.convert_to_numpy(model(batch)), rtol=1e-5, atol=1e-6
    )
    assert (result.model_name, result.model_version) == ("custom", "7")


def test_default_model_metadata(default_client):
    meta = default_client.metadata()
    assert (meta.name, meta.version, meta.backend, meta.device) == (
        "digits",
        "1",
        keras.backend.backend(),
        "cpu",
    )
    assert meta.source == "embedded:digits_cnn.keras"
    assert meta.inputs[0].shape == (None, 48, 48, 3) and meta.inputs[0].dtype == "float32"
    assert meta.outputs[0].shape == (None, 10)
    table = [(row.name, row.type, row.output_shape, row.param_count) for row in meta.layers]
    assert table == [
        ("conv", "Conv2D", (None, 48, 48, 32), 3 * 3 * 3 * 32 + 32),
        ("pool", "MaxPooling2D", (None, 24, 24, 32), 0),
        ("flatten", "Flatten", (None, 18432), 0),
        ("digit", "Dense", (None, 10), 18432 * 10 + 10),
    ]
    assert meta.total_params == meta.trainable_params == 185_226
    assert meta.flatten_layers == ("flatten",)
    assert meta.max_batch_size == 256


def test_vgg_style_head_metadata(serve_model):
    inputs = keras.Input((8, 8, 512), name="features")
    x = keras.layers.MaxPooling2D(2, name="block5_pool")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, activation="relu", name="fc1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x), name="vgg_head")
    server = serve_model(model)
    with server.client() as client:
        meta = client.metadata()
        layout = client.inspect(np.zeros((1, 8, 8, 512), np.float32)).layout
    rows = {row.name: row for row in meta.layers}
    assert rows["features"].type == "InputLayer"
    assert rows["flatten"].output_shape == (None, 8192)
    assert rows["fc1"].param_count == 8192 * 256 + 256 == 2_097_408
    assert rows["bn"].param_count == 4 * 256
    assert meta.total_params == model.count_params()
    assert meta.non_trainable_params == 2 * 256
    assert meta.trainable_params == meta.total_params - 2 * 256
    assert layout.source_shape == (4, 4, 512) and layout.flat_size == 8192
    assert layout.formula == "flat = h*2048 + w*512 + c"
