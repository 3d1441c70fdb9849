"""The same model on the JAX and torch backends, in real server processes, agrees with TF."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_cli import ServerProcess

from flatscope.client import Client


def _server(tmp_path_factory, backend: str):
    log = tmp_path_factory.mktemp(backend) / "server.log"
    server = ServerProcess(log, "--max-batch-size", "8", env={"KERAS_BACKEND": backend})
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def jax_server(tmp_path_factory):
    yield from _server(tmp_path_factory, "jax")


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory):
    yield from _server(tmp_path_factory, "torch")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_agrees_with_tensorflow(request, backend, default_client):
    server = request.getfixturevalue(f"{backend}_server")
    batch = np.random.default_rng(11).random((5, 48, 48, 3), dtype=np.float32)
    with Client(server.target) as other:
        meta = other.metadata()
        predicted = other.predict(batch)
        inspected = other.inspect(batch, include_source=True)
    assert (meta.backend, meta.device) == (backend, "cpu")
    reference = default_client.predict(batch)
    np.testing.assert_allclose(predicted.outputs, reference.outputs, atol=1e-5)
    np.testing.assert_array_equal(predicted.classes, reference.classes)
    tf_inspected = default_client.inspect(batch, include_source=True)
    np.testing.assert_allclose(inspected.flattened, tf_inspected.flattened, atol=1e-5)
    np.testing.assert_allclose(inspected.source, tf_inspected.source, atol=1e-5)
    assert inspected.layout == tf_inspected.layout


def test_a_jax_server_logs_no_platform_probing(jax_server):
    # JAX's INFO line on a machine without a TPU is no news to an operator.
    assert "xla_bridge" not in jax_server.log()
    assert "listening on" in jax_server.log()


def test_jax_server_pads_odd_batches(jax_server):
    # 3 and 7 examples run padded to 4 and 8; each example keeps its own answer.
    rng = np.random.default_rng(12)
    with Client(jax_server.target) as client:
        for count in (3, 7):
            batch = rng.random((count, 48, 48, 3), dtype=np.float32)
            together = client.predict(batch).outputs
            alone = np.concatenate([client.predict(batch[i : i + 1]).outputs for i in range(count)])
            np.testing.assert_allclose(together, alone, atol=1e-5)


def _channels_first_convnet() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((3, 8, 8)),
            keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first"),
            keras.layers.MaxPooling2D(2, data_format="channels_first"),
            keras.layers.Flatten(data_format="channels_first", name="flatten"),
            keras.layers.Dense(2),
        ],
        name="nchw",
    )


def test_channels_first_convolutions_run_on_tensorflow(serve_model):
    # Keras transposes for TensorFlow's CPU kernels, which run NHWC only.
    server = serve_model(_channels_first_convnet())
    batch = np.random.default_rng(13).random((2, 3, 8, 8), dtype=np.float32)
    with server.client() as client:
        result = client.inspect(batch, include_source=True)
    _assert_channels_first_layout(result)


def test_channels_first_convolutions_run_on_jax(tmp_path):
    path = tmp_path / "nchw.keras"
    model = _channels_first_convnet()
    model.save(path)
    server = ServerProcess(
        tmp_path / "server.log",
        "--model",
        str(path),
        "--max-batch-size",
        "4",
        env={"KERAS_BACKEND": "jax"},
    )
    try:
        server.start()
        batch = np.random.default_rng(13).random((2, 3, 8, 8), dtype=np.float32)
        with Client(server.target) as client:
            result = client.inspect(batch, include_source=True)
    finally:
        server.kill()
    _assert_channels_first_layout(result)


def _assert_channels_first_layout(result) -> None:
    layout = result.layout
    assert layout.axis_names == ("channels", "height", "width")
    assert layout.formula == "flat = h*16 + w*4 + c"
    expected = np.moveaxis(result.source, 1, -1).reshape(len(result.source), -1)
    np.testing.assert_array_equal(result.flattened, expected)
