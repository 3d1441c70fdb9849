"""Models flatscope cannot serve are refused at startup with one line naming the problem."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import pytest
from processes import assert_one_line_error, flatscope, flatscope_all

from flatscope import default_model
from flatscope.errors import ModelLoadError
from flatscope.inference import load_served_model
from flatscope.inference.archive import DEFAULT_CAPS, ArchiveCaps, MiB, check_archive


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


def _zip_bomb_file(tmp: Path) -> Path:
    """A ~70 KB ``.keras`` zip whose config.json inflates to 1 MiB past the cap (zeros)."""
    path = tmp / "bomb.keras"
    chunk = bytes(MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", "{}")
        with archive.open("config.json", "w") as member:
            for _ in range(DEFAULT_CAPS.json_bytes // MiB + 1):
                member.write(chunk)
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
    pytest.param(_h5_file, ["not a readable HDF5 file"], id="truncated-h5-file"),
    pytest.param(_text_file, ["cannot load"], id="text-file-named-keras"),
    pytest.param(_missing_file, ["does not exist"], id="missing-file"),
    pytest.param(_truncated_file, ["cannot load"], id="truncated-keras-file"),
    pytest.param(
        _zip_bomb_file,
        ["member config.json inflates to 68,157,440 bytes", "past the cap of 67,108,864 bytes"],
        id="zip-bomb",
    ),
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
    result = flatscope("serve", "--model", str(path), "--port", "0", "--metrics-port", "0")
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "cannot start: ", str(path), "Lambda", "safe_mode")


def test_serve_exits_1_with_one_line_for_truncated_non_keras_and_bomb_files(tmp_path: Path):
    # The other refusals take the same path (ModelLoadError); each process costs seconds.
    files = [
        (_truncated_file, "cannot load"),
        (_text_file, "cannot load"),
        (_h5_file, "not a readable HDF5 file"),
        (_zip_bomb_file, "past the cap of"),
    ]
    paths = [make(tmp_path) for make, _ in files]
    results = flatscope_all(
        *(["serve", "--model", str(path), "--port", "0", "--metrics-port", "0"] for path in paths)
    )
    for path, (_, fragment), result in zip(paths, files, results, strict=True):
        assert result.returncode == 1, result.stderr
        assert_one_line_error(result.stderr, "cannot start: ", str(path), fragment)


# The caps on a .keras archive, each past its limit by a little (small caps, small files).


def test_zip_bomb_is_small_on_disk(tmp_path: Path):
    assert _zip_bomb_file(tmp_path).stat().st_size < MiB


@pytest.mark.parametrize(
    ("caps", "fragments"),
    [
        pytest.param(
            ArchiveCaps(archive_bytes=1000),
            ["the file is", "past the cap of 1,000 bytes"],
            id="file",
        ),
        pytest.param(
            ArchiveCaps(member_bytes=100_000),
            ["member model.weights.h5 inflates to", "past the cap of 100,000 bytes"],
            id="member",
        ),
        pytest.param(
            ArchiveCaps(total_bytes=100_000),
            ["its members inflate to", "together, past the cap of 100,000 bytes"],
            id="total",
        ),
        pytest.param(
            ArchiveCaps(members=2), ["the archive has 3 members, past the cap of 2"], id="members"
        ),
    ],
)
def test_archive_past_a_cap_is_refused_naming_file_member_size_and_cap(
    caps: ArchiveCaps, fragments: list[str]
):
    model = default_model.model_path()
    with pytest.raises(ModelLoadError) as caught:
        check_archive(model, caps)
    message = str(caught.value)
    assert message.startswith(f"cannot load {model}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_default_caps_pass_the_embedded_model():
    check_archive(default_model.model_path())
