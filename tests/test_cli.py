"""The ``flatscope`` command line against real server processes: serve, predict, inspect."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from processes import (
    CLI_TIMEOUT,
    ServerProcess,
    assert_one_line_error,
    flatscope,
    flatscope_all,
)

from flatscope.client import Client
from flatscope.default_model import digits_split
from flatscope.inference.runner import model_threads


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, configured through FLATSCOPE_* variables only."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    process = ServerProcess(
        log,
        env={
            "FLATSCOPE_MAX_BATCH_SIZE": "7",
            "FLATSCOPE_MODEL_NAME": "digits-test",
            "FLATSCOPE_MODEL_THREADS": "3",
        },
    )
    with process.serving() as started:
        yield started


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, timeout=CLI_TIMEOUT) as client:
        yield client


# The server process: startup log and settings.


def test_startup_log_names_address_model_backend_and_device(server: ServerProcess, client: Client):
    meta = client.metadata()
    port = server.target.rsplit(":", 1)[1]
    serving = re.compile(r"serving model (\S+) v(\S+) \((\S+)\) on backend (\S+), device (\S+)")
    name, version, source, backend, device = server.wait_for_log(serving).groups()

    assert f"listening on 127.0.0.1:{port} (gRPC, plaintext)" in server.log()
    assert (name, version, source) == ("digits-test", "1", "embedded:digits_cnn.keras")
    assert (backend, device) == (meta.backend, meta.device)
    assert backend in ("tensorflow", "jax", "torch")
    assert device == "cpu" or device.startswith("gpu:")
    assert "event loop: uvloop" in server.log()
    if backend != "jax":  # XLA keeps its own thread count
        assert f"{backend}: 3 thread(s) per forward pass" in server.log()


# An error-level line: ours (text or JSON), or a native runtime's (absl: "E0000 00:00:...").
ERROR_LINE = re.compile(r"\bERROR\b|\bCRITICAL\b|^[EF]\d{4} ", re.MULTILINE)
NATIVE_LINE = re.compile(r"^[IWEF]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+\] ", re.MULTILINE)


def test_a_healthy_start_logs_no_error_and_no_native_noise_unless_debug(tmp_path: Path):
    quiet = ServerProcess(tmp_path / "quiet.log")
    debug = ServerProcess(tmp_path / "debug.log", "--log-level", "debug")
    for process in (quiet, debug):  # both start at once; each takes seconds
        with process.serving():
            pass
    assert quiet.proc.returncode == 0, quiet.log()
    text = quiet.log()
    assert "serving model digits" in text and "stopped" in text, text
    assert not ERROR_LINE.search(text), text
    assert not NATIVE_LINE.search(text), text
    assert "absl::InitializeLog" not in text, text
    # --log-level debug brings TensorFlow's and gRPC's own lines back (the oneDNN banner,
    # the CUDA probe: lines this test can see only where the runtimes print them).
    assert debug.proc.returncode == 0, debug.log()
    if "backend tensorflow" in debug.log():
        assert NATIVE_LINE.search(debug.log()), debug.log()


def test_environment_variables_configure_the_server(client: Client):
    meta = client.metadata()
    assert meta.name == "digits-test"
    assert meta.max_batch_size == 7

    images = np.zeros((8, 48, 48, 3), np.float32)
    assert len(client.predict(images[:7]).classes) == 7
    with pytest.raises(grpc.RpcError) as caught:
        client.predict(images)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 7" in caught.value.details()


def test_flag_wins_over_environment_variable_and_sigterm_exits_0(tmp_path: Path):
    process = ServerProcess(
        tmp_path / "serve.log",
        "--max-batch-size",
        "5",
        env={
            "FLATSCOPE_MAX_BATCH_SIZE": "7",
            "FLATSCOPE_SHUTDOWN_GRACE": "0.5",
            "FLATSCOPE_EVENT_LOOP": "asyncio",
        },
    )
    try:
        process.start()
        with Client(process.target, timeout=CLI_TIMEOUT) as client:
            meta = client.metadata()
        assert meta.max_batch_size == 5
        assert meta.name == "digits"

        code = process.stop()
    finally:
        process.kill()
    assert code == 0, process.log()
    assert "shutting down (grace 0.5 s)" in process.log()
    assert "event loop: asyncio" in process.log()
    # By default a pass leaves one of the CPUs this process may use to the event loop.
    assert f": {model_threads(0)} thread(s) per forward pass" in process.log()
    assert "Traceback" not in process.log()


def test_serve_missing_model_file_fails_with_one_line_error(tmp_path: Path):
    missing = tmp_path / "nonexistent.keras"
    result = flatscope("serve", "--model", str(missing), "--port", "0", "--metrics-port", "0")
    assert result.returncode == 1, result.stderr
    # The one line alone: no log lines of the steps before, no native runtime lines.
    assert_one_line_error(result.stderr, "cannot start: ", str(missing), "does not exist")


def test_serve_bad_setting_exits_2_with_one_line_naming_flag_value_and_expectation():
    result = flatscope(
        "serve", "--port", "-5", "--max-batch-size", "many", env={"FLATSCOPE_DEVICE": "tpu"}
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(
        result.stderr,
        "bad settings",
        "--port -5: expected an integer from 0 to 65535",
        "--max-batch-size many: expected an integer, 1 or more",
        "FLATSCOPE_DEVICE=tpu: expected one of auto, cpu, gpu",
    )
    # pydantic's own words and field names stay out of it.
    assert "Input should" not in result.stderr and "max_batch_size" not in result.stderr


def test_serve_unknown_flag_exits_2_with_one_line():
    result = flatscope("serve", "--prot", "8500")
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, "unrecognized arguments: --prot", "--help")


def test_second_server_on_a_port_in_use_fails_and_the_first_keeps_serving(
    server: ServerProcess,
):
    # gRPC sets SO_REUSEPORT: without the server turning it off, this one would start and
    # take half of the new connections.
    port = server.target.rsplit(":", 1)[1]
    # /metrics on a port that is in use: a listening socket is enough (no SO_REUSEPORT there).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = str(busy.getsockname()[1])
        grpc_in_use, metrics_in_use = flatscope_all(
            ["serve", "--port", port, "--metrics-port", "0"],
            ["serve", "--port", "0", "--metrics-port", metrics_port],
        )
    assert grpc_in_use.returncode == 1, grpc_in_use.stderr
    assert_one_line_error(
        grpc_in_use.stderr,
        f"cannot listen on 127.0.0.1:{port}: ",
        "the port is in use",
        "choose another with --port",
    )
    assert metrics_in_use.returncode == 1, metrics_in_use.stderr
    assert_one_line_error(
        metrics_in_use.stderr,
        f"cannot serve /metrics on 127.0.0.1:{metrics_port}: ",
        "the port is in use",
        "choose another with --metrics-port",
    )
    with Client(server.target, timeout=CLI_TIMEOUT) as client:
        assert client.health() == "SERVING"


def test_help_lists_commands_and_serve_flags():
    top = subprocess.run(
        [sys.executable, "-m", "flatscope", "--help"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert top.returncode == 0, top.stderr
    for command in ("serve", "predict", "inspect", "metadata", "health"):
        assert command in top.stdout

    serve = flatscope("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    for flag in (
        "--host",
        "--port",
        "--model",
        "--max-batch-size",
        "--shutdown-grace",
        "--shutdown-delay",
        "--max-concurrent-rpcs",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--log-format",
    ):
        assert re.search(rf"{flag}\b", serve.stdout), flag
    assert "FLATSCOPE_MAX_BATCH_SIZE" in serve.stdout
    # Defaults as a user would type them; none for settings that are unset by default.
    assert "--device {auto,cpu,gpu}" in serve.stdout
    assert "--batching {true,false}" in serve.stdout
    assert "default true]" in serve.stdout
    assert "default None" not in serve.stdout
    assert "default ]" not in serve.stdout
    assert "[env FLATSCOPE_TLS_CERT]" in " ".join(serve.stdout.split())


def test_version_is_the_package_version():
    result = flatscope("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flatscope {importlib.metadata.version('flatscope')}"


# Client commands of the console script.


def test_metadata_prints_layer_table(server: ServerProcess):
    result = flatscope("metadata", "--target", server.target)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'Model "digits-test" v1 from embedded:digits_cnn.keras' in out
    assert "max batch 7" in out
    assert re.search(r"conv \(Conv2D\)\s+\(None, 48, 48, 32\)\s+896\s+channels_last", out)
    assert re.search(r"pool \(MaxPooling2D\)\s+\(None, 24, 24, 32\)\s+0", out)
    assert re.search(r"flatten \(Flatten\)\s+\(None, 18432\)\s+0", out)
    assert re.search(r"digit \(Dense\)\s+\(None, 10\)\s+184,330", out)
    assert "Total params: 185,226" in out
    assert "Flatten layers: flatten" in out


def test_predict_random_input_prints_a_class(server: ServerProcess):
    result = flatscope("predict", "--target", server.target, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "model digits-test v1" in result.stdout
    assert re.search(r"^class [0-9]  \(score [01]\.\d{4}\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^top 3: ", result.stdout, re.MULTILINE)


@pytest.fixture(scope="module")
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    _, _, x_test, y_test = digits_split()
    return x_test, y_test


def test_predict_image_files_print_their_digits(
    server: ServerProcess, held_out_digits, tmp_path: Path
):
    """The first ten held-out 8x8 digits, saved as PNG files, through the command itself.

    The model reads 98.7 % of the held-out digits (tests/test_reads_digits.py has the
    large sample), so one of ten may be wrong; two or more would be far below that.
    """
    x_test, y_test = held_out_digits
    commands = []
    for index in range(10):
        path = tmp_path / f"digit-{index}.png"
        Image.fromarray(np.round(x_test[index] * 255).astype(np.uint8), "RGB").save(path)
        commands.append(["predict", "--target", server.target, "--image", str(path)])
    results = flatscope_all(*commands)
    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]
    right = [
        bool(re.search(rf"^class {y_test[index]} ", result.stdout, re.MULTILINE))
        for index, result in enumerate(results)
    ]
    assert sum(right) >= 9, [r.stdout for r, ok in zip(results, right, strict=True) if not ok]


def test_inspect_traces_flat_and_source_indices(server: ServerProcess):
    result = flatscope("inspect", "--target", server.target, "--flat", "13", "--at", "1,1,1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Flatten layer 'flatten' (channels_last)" in out
    assert "source (height, width, channels) = (24, 24, 32) -> 18432 features" in out
    assert "flat = h*768 + w*32 + c" in out
    assert "flat[13] <- source(0, 0, 13) = " in out
    assert "source(1, 1, 1) -> flat[801] = " in out
    assert re.search(r"^prediction: class [0-9]$", out, re.MULTILINE)


def test_inspect_bad_request_prints_status_and_exits_1(server: ServerProcess):
    result = flatscope("inspect", "--target", server.target, "--layer", "conv")
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr, "flatscope: INVALID_ARGUMENT: ", "'conv' is a Conv2D, not a Flatten"
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--flat", "99999"], "99999"), (["--at", "24,0,0"], "24")],
    ids=["flat", "at"],
)
def test_inspect_index_out_of_range_exits_1_with_message(
    server: ServerProcess, flags: list[str], named: str
):
    result = flatscope("inspect", "--target", server.target, *flags)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, named, "outside [0, ")
    # Every index is checked before anything is printed: no half-written report.
    assert result.stdout == ""


def test_inspect_at_that_is_no_index_exits_2():
    result = flatscope("inspect", "--at", "a,b,c")
    assert result.returncode == 2, result.stderr
    assert "--at" in result.stderr
    assert "'a,b,c' is not a source index" in result.stderr
    assert "integers separated by commas" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_client_command_without_server_exits_1():
    # A port nobody listens on: bind one, note it, close it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = flatscope("metadata", "--target", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "flatscope: UNAVAILABLE: ")


def test_health_command_exits_0_when_serving(server: ServerProcess):
    result = flatscope("health", "--target", server.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_health_command_exits_1_without_a_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = flatscope("health", "--target", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "flatscope: UNAVAILABLE: ")


@pytest.mark.skipif(
    shutil.which("make") is None,
    reason="make is not installed: `make test` runs under make, so only a pytest run "
    "outside make (on a machine without it) skips this",
)
def test_make_serve_passes_port_host_and_more_flags():
    def dry_run(*args: str, **env: str) -> str:
        # -n prints the command; -o: the venv counts as made, whatever is on this machine.
        # Run from `make test`, the outer make's variables would make this one print
        # "Entering directory" lines and pass its own flags: a fresh make, as a user runs it.
        outer = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
        clean = {k: v for k, v in os.environ.items() if k not in outer}
        result = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed-server", "serve", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env={**clean, **env},
        )
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    assert dry_run() == ".venv/bin/flatscope serve"
    assert dry_run("PORT=8600") == ".venv/bin/flatscope serve --port 8600"
    assert (
        dry_run("PORT=8600", "HOST=0.0.0.0", "ARGS=--model m.keras --log-level debug")
        == ".venv/bin/flatscope serve --host 0.0.0.0 --port 8600 --model m.keras --log-level debug"
    )
    # A shell's HOST or PORT variable is not taken for an address.
    assert dry_run(HOST="workstation", PORT="1") == ".venv/bin/flatscope serve"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_inspect_plot_draws_the_answer(server: ServerProcess, tmp_path: Path):
    png, svg = tmp_path / "inspect.png", tmp_path / "inspect.svg"
    image = str(EXAMPLES / "seven.png")
    base = ["inspect", "--target", server.target, "--image", image]
    drawn_png, drawn_svg, wrong = flatscope_all(
        [*base, "--flat", "13", "--plot", str(png)],
        [*base, "--at", "1,1,1", "--plot", str(svg)],
        [*base, "--plot", str(tmp_path / "inspect.jpg")],
    )
    assert drawn_png.returncode == 0, drawn_png.stderr
    assert f"wrote {png}: flat[13] <- source(0, 0, 13), Dense layer 'digit'" in drawn_png.stdout
    with Image.open(png) as picture:
        assert picture.format == "PNG"
        assert picture.size == (1600, 1200)
    assert drawn_svg.returncode == 0, drawn_svg.stderr
    assert f"wrote {svg}: flat[801] <- source(1, 1, 1)" in drawn_svg.stdout
    assert svg.read_text().lstrip().startswith("<?xml")
    assert wrong.returncode == 1
    assert_one_line_error(wrong.stderr, "flatscope: ", "inspect.jpg", ".png or .svg")


@pytest.mark.parametrize(("name", "digit"), [("seven.png", 7), ("two.png", 2)])
def test_predict_reads_the_example_images_as_the_readme_shows(
    server: ServerProcess, name: str, digit: int
):
    result = flatscope("predict", "--target", server.target, "--image", str(EXAMPLES / name))
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^class {digit} ", result.stdout, re.MULTILINE), result.stdout
