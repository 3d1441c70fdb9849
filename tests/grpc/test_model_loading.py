"""Models flatscope cannot serve are refused at startup with one line naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import pytest
from processes import flatscope_all

from flatscope.errors import ModelLoadError
from flatscope.inference import load_served_model

FLATSCOPE = Path(sys.executable).parent / "flatscope"
START_TIMEOUT = 120.0  # seconds for a server process to load (or refuse) the model


def _lambda_model() -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Lambda(lambda x: x * 2, name="double")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="with_lambda")


def _unknown_size_model() -> keras.Model:
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="any_size")


def _two_input_model() -> keras.Model:
    left, right = keras.Input((4,), name="left"), keras.Input((4,), name="right")
    joined = keras.layers.Concatenate()([left, right])
    return keras.Model([left, right], keras.layers.Dense(2)(joined), name="two_inputs")


def _small_model() -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten(name="flatten")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="small")


def _saved(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def _lambda_file(tmp: Path) -> Path:
    return _saved(_lambda_model(), tmp / "lambda.keras")


def _unknown_size_file(tmp: Path) -> Path:
    return _saved(_unknown_size_model(), tmp / "any_size.keras")


def _two_input_file(tmp: Path) -> Path:
    return _saved(_two_input_model(), tmp / "two_inputs.keras")


def _h5_file(tmp: Path) -> Path:
    path = tmp / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    return path


def _text_file(tmp: Path) -> Path:
    path = tmp / "notes.keras"
    path.write_text("not a model\n")
    return path


def _missing_file(tmp: Path) -> Path:
    return tmp / "missing.keras"


def _truncated_file(tmp: Path) -> Path:
    whole = _saved(_small_model(), tmp / "whole.keras").read_bytes()
    path = tmp / "truncated.keras"
    path.write_bytes(whole[: len(whole) // 2])
    return path


REFUSED = [
    pytest.param(_lambda_file, ["cannot load", "Lambda", "safe_mode"], id="lambda-layer"),
    pytest.param(
        _unknown_size_file,
        ["(None, None, None, 3)", "unknown dimensions", "fixed-size inputs"],
        id="unknown-input-dims",
    ),
    pytest.param(
        _two_input_file, ["2 inputs and 1 outputs", "exactly one of each"], id="two-inputs"
    ),
    pytest.param(_h5_file, ["not a .keras file"], id="h5-file"),
    pytest.param(_text_file, ["cannot load"], id="text-file-named-keras"),
    pytest.param(_missing_file, ["does not exist"], id="missing-file"),
    pytest.param(_truncated_file, ["cannot load"], id="truncated-keras-file"),
]


@pytest.mark.parametrize(("make", "fragments"), REFUSED)
def test_unservable_model_is_refused_with_one_line(
    tmp_path: Path, make: Callable[[Path], Path], fragments: list[str]
):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        load_served_model(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_serve_refuses_a_lambda_model_with_one_line(tmp_path: Path):
    path = _lambda_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATSCOPE_")}
    result = subprocess.run(
        [str(FLATSCOPE), "serve", "--model", str(path), "--port", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "cannot start" in line]
    assert len(errors) == 1, output
    assert str(path) in errors[0]
    assert "Lambda" in errors[0]
    assert "safe_mode" in errors[0]


def test_serve_exits_1_with_one_line_for_truncated_and_non_keras_files(tmp_path: Path):
    # The other refusals take the same path (ModelLoadError); each process costs seconds.
    files = [
        (_truncated_file, "cannot load"),
        (_text_file, "cannot load"),
        (_h5_file, "not a .keras file"),
    ]
    paths = [make(tmp_path) for make, _ in files]
    results = flatscope_all(
        *(["serve", "--model", str(path), "--port", "0", "--metrics-port", "0"] for path in paths)
    )
    for path, (_, fragment), result in zip(paths, files, results, strict=True):
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Traceback" not in output, output
        errors = [line for line in output.splitlines() if "cannot start" in line]
        assert len(errors) == 1, output
        assert str(path) in errors[0], output
        assert fragment in errors[0], output
