"""Model formats: .keras and legacy .h5 load (safe mode on both); anything else is refused
with one line naming what loads and how to convert."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import ServerThread, settings

from flatscope.errors import ModelLoadError
from flatscope.inference import load_served_model
from flatscope.inference.archive import ArchiveCaps, check_hdf5

FORMATS = ".keras (Keras 3) and legacy .h5/.hdf5 (Keras 2's HDF5) model files"
CONVERT = 'model.save("model.keras")'


def _cnn() -> keras.Model:
    inputs = keras.Input((10, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x), name="legacy_cnn")


@pytest.fixture(scope="module")
def h5_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    model = _cnn()
    path = tmp_path_factory.mktemp("h5") / "legacy_cnn.h5"
    model.save(path)  # Keras 3 writes the legacy HDF5 format for a .h5 name
    with h5py.File(path) as file:  # the legacy format indeed, not a renamed .keras zip
        assert "model_config" in file.attrs
    return model, path


def test_h5_model_serves_keras_predictions_and_the_flatten_layout(h5_model):
    model, path = h5_model
    batch = np.random.default_rng(5).standard_normal((3, 10, 8, 3)).astype(np.float32)
    server = ServerThread(settings(model=path)).load_model()
    try:
        with server.client() as client:
            predicted = client.predict(batch)
            inspected = client.inspect(batch, include_source=True)
            meta = client.metadata()
    finally:
        server.stop()
    np.testing.assert_allclose(predicted.outputs, model.predict(batch, verbose=0), atol=1e-5)
    assert meta.source == str(path) and meta.name == "legacy_cnn"
    layout = inspected.layout
    assert (layout.layer_name, layout.data_format) == ("flatten", "channels_last")
    assert layout.source_shape == (5, 4, 4)
    assert layout.strides == (16, 4, 1)
    assert layout.formula == "flat = h*16 + w*4 + c"
    pool = model.get_layer("pool")
    probe = keras.Model(model.inputs[0], [pool.output, model.get_layer("flatten").output])
    source, flat = (keras.ops.convert_to_numpy(t) for t in probe(batch))
    np.testing.assert_allclose(inspected.source, source, atol=1e-5)
    np.testing.assert_allclose(inspected.flattened, flat, atol=1e-5)
    np.testing.assert_array_equal(inspected.flattened, inspected.source.reshape(3, -1))


def _lambda_h5(tmp: Path) -> Path:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Lambda(lambda t: t * 2, name="double")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    model.save(tmp / "lambda.h5")
    return tmp / "lambda.h5"


def _weights_only(tmp: Path) -> Path:
    _cnn().save_weights(tmp / "cnn.weights.h5")
    return tmp / "cnn.weights.h5"


def _plain_hdf5(tmp: Path) -> Path:
    with h5py.File(tmp / "data.h5", "w") as file:
        file["x"] = np.zeros(4)
    return tmp / "data.h5"


def _saved_model_dir(tmp: Path) -> Path:
    (tmp / "export").mkdir()
    (tmp / "export" / "saved_model.pb").write_bytes(b"\x08\x01")
    return tmp / "export"


def _onnx(tmp: Path) -> Path:
    (tmp / "model.onnx").write_bytes(b"\x08\x07")
    return tmp / "model.onnx"


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(_lambda_h5, ["Lambda", "safe_mode"], id="h5-lambda-safe-mode"),
        pytest.param(_weights_only, ["weights only", FORMATS, CONVERT], id="weights-only"),
        pytest.param(_plain_hdf5, ["holds no model_config"], id="hdf5-not-a-model"),
        pytest.param(
            _saved_model_dir, ["TensorFlow SavedModel directory", FORMATS, CONVERT], id="savedmodel"
        ),
        pytest.param(_onnx, [".onnx is not a model format", FORMATS, CONVERT], id="onnx"),
    ],
)
def test_other_files_are_refused_naming_what_loads_and_how_to_convert(
    tmp_path: Path, make, fragments: list[str]
):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        load_served_model(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"cannot load {path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    ("caps", "fragment"),
    [
        pytest.param(
            ArchiveCaps(archive_bytes=1000),
            "past the cap of 1,000 bytes (0.0 MiB) for a model file",
            id="file",
        ),
        pytest.param(ArchiveCaps(json_bytes=100), "its model_config is", id="config"),
        pytest.param(
            ArchiveCaps(member_bytes=400),
            "past the cap of 400 bytes (0.0 MiB) for one",
            id="dataset",
        ),
        pytest.param(ArchiveCaps(total_bytes=1000), "its datasets hold", id="total"),
        pytest.param(ArchiveCaps(members=3), "more than 3 groups and datasets", id="objects"),
    ],
)
def test_h5_past_a_cap_is_refused(h5_model, caps: ArchiveCaps, fragment: str):
    _, path = h5_model
    check_hdf5(path)  # the default caps pass it
    with pytest.raises(ModelLoadError, match=f"^cannot load {path}: ") as caught:
        check_hdf5(path, caps)
    assert fragment in str(caught.value)
