"""The install sets, each in a virtual environment of its own, against real servers.

- the client alone (``pip install flatscope``): no TensorFlow, no Keras; the CLI's client
  commands and ``flatscope.client`` call a server;
- the server on JAX alone (``flatscope[jax]``): no TensorFlow; it serves, and its Inspect
  answers keep the layout (checked with numpy) and equal the TensorFlow server's;
- flatscope beside ``kserve`` and ``tritonclient[grpc]`` (both protobuf<7): one environment,
  one flatscope server in it (gRPC and HTTP), called with each of their gRPC clients, with
  kserve's ``InferenceRESTClient`` (JSON and binary tensors) and with flatscope's.

Each environment is built once per test run (pip, from the configured indexes) under
.cache/venvs, and kept there for the next run while pyproject.toml is unchanged; flatscope
is installed editable, so the code under test is this tree's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from processes import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".cache" / "venvs"
INSTALL_TIMEOUT = 1200.0  # seconds for one environment's pip install (the JAX wheels are big)
RUN_TIMEOUT = 120.0
# The environments see only what is installed in them (PYTHONPATH could show pip this tree's
# flatscope as installed already).
ISOLATED = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
KSERVE_SDK_TYPES = ROOT / "deploy" / "kserve" / "schemas" / "kserve-sdk-types.json"
SHAPE = (48, 48, 3)  # the default model's input, per example


def build_venv(name: str, *requirements: str) -> Path:
    """A virtual environment with ``requirements`` (``-e .[extra]`` and others) installed.

    Kept under .cache/venvs/<name> and reused while pyproject.toml and the requirements are
    the same.
    """
    path = VENVS / name
    key = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + "\n".join(requirements).encode()
    ).hexdigest()
    stamp = path / ".flatscope-installed"
    if stamp.is_file() and stamp.read_text() == key:
        return path
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=RUN_TIMEOUT)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    result = subprocess.run(
        [*pip, "--quiet", *requirements],
        cwd=ROOT,
        env=ISOLATED,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, f"pip install {requirements} failed:\n{result.stderr[-4000:]}"
    stamp.write_text(key)
    return path


def run_in(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``args`` (a command in the environment's bin/, or python code with "-c")."""
    if args[0] == "-c":
        command = [str(venv / "bin" / "python"), *args]
    else:
        command = [str(venv / "bin" / args[0]), *args[1:]]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=venv, env=ISOLATED
    )
    if check:
        assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def importable(venv: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return run_in(venv, "-c", code, check=False).returncode == 0


def example(batch: int = 2, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *SHAPE), dtype=np.float32)


@pytest.fixture(scope="session")
def client_venv() -> Path:
    return build_venv("client", "-e", ".")


@pytest.fixture(scope="session")
def jax_venv() -> Path:
    return build_venv("jax", "-e", ".[jax]")


@pytest.fixture(scope="session")
def beside_venv() -> Path:
    return build_venv("beside", "-e", ".[jax]", "kserve", "tritonclient[grpc]")


def jax_server(venv: Path, log: Path, http: bool = False) -> ServerProcess:
    return ServerProcess(
        log, env={"KERAS_BACKEND": "jax"}, python=venv / "bin" / "python", http=http
    )


# Client-only install.

CLIENT_SCRIPT = """
import json, sys
import numpy as np
from flatscope.client import Client
x = np.random.default_rng(3).random((2, 48, 48, 3), dtype=np.float32)
with Client(sys.argv[1]) as client:
    prediction = client.predict(x)
    inspected = client.inspect(x, include_source=True)
    name = client.metadata().name
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "jax", "torch"})
print(json.dumps({
    "outputs": prediction.outputs.tolist(),
    "flat": inspected.flattened.tolist(),
    "name": name,
    "heavy": heavy,
}))
"""


def test_the_client_install_has_no_tensorflow_nor_keras(client_venv):
    for module in ("tensorflow", "keras", "jax", "torch"):
        assert not importable(client_venv, module), module
    run_in(client_venv, "python", "-m", "pip", "check")


def test_the_client_install_calls_a_server_from_python(client_venv, default_server):
    reply = json.loads(run_in(client_venv, "-c", CLIENT_SCRIPT, default_server.target).stdout)
    assert reply["heavy"] == []
    with default_server.client() as client:
        expected = client.predict(example())
        inspected = client.inspect(example(), include_source=True)
        assert reply["name"] == client.metadata().name
    np.testing.assert_allclose(reply["outputs"], expected.outputs, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(reply["flat"], np.float32), inspected.flattened)


def test_the_client_install_cli_predicts_inspects_and_reads_metadata(client_venv, default_server):
    target = ("--target", default_server.target)
    predicted = run_in(client_venv, "flatscope", "predict", *target, "--seed", "5").stdout
    with default_server.client() as client:
        name = client.metadata().name
        x = np.random.default_rng(5).random((1, *SHAPE), dtype=np.float32)
        expected = client.predict(x).classes[0]
    assert f"class {expected} " in predicted
    inspected = run_in(client_venv, "flatscope", "inspect", *target, "--flat", "100").stdout
    assert "flat[100] <- source" in inspected
    metadata = run_in(client_venv, "flatscope", "metadata", *target).stdout
    assert name in metadata


# JAX-only server.


def test_the_jax_install_has_no_tensorflow(jax_venv):
    assert not importable(jax_venv, "tensorflow")
    assert importable(jax_venv, "jax")
    run_in(jax_venv, "python", "-m", "pip", "check")


def test_a_jax_only_server_keeps_the_layout_and_equals_tensorflow(
    jax_venv, default_server, tmp_path
):
    x = example()
    with jax_server(jax_venv, tmp_path / "jax.log").serving() as server:
        assert "backend jax" in server.log()
        with server.client() as client:
            got = client.inspect(x, include_source=True)
            predicted = client.predict(x)
    # The layout, with numpy alone: channels-last (h, w, c), row-major, c fastest.
    source = got.source
    assert source.ndim == 4 and got.flattened.shape == (len(x), int(np.prod(source.shape[1:])))
    np.testing.assert_array_equal(got.flattened, source.reshape(len(x), -1))
    for flat in (0, 1, 100, got.flattened.shape[1] - 1):
        index = got.layout.source_index(flat)
        assert tuple(index) == np.unravel_index(flat, source.shape[1:])
    with default_server.client() as client:
        reference = client.inspect(x, include_source=True)
        expected = client.predict(x)
    np.testing.assert_allclose(got.flattened, reference.flattened, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predicted.outputs, expected.outputs, rtol=1e-4, atol=1e-6)


# Beside kserve and tritonclient[grpc].

TRITON_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
x = np.random.default_rng(3).random((2, 48, 48, 3), dtype=np.float32)
client = triton.InferenceServerClient(sys.argv[1])
name = client.get_model_repository_index().models[0].name
inputs = [triton.InferInput("image", list(x.shape), "FP32")]
inputs[0].set_data_from_numpy(x)
result = client.infer(name, inputs, outputs=[triton.InferRequestedOutput("digit")])
print(json.dumps(result.as_numpy("digit").tolist()))
"""

KSERVE_SCRIPT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
x = np.random.default_rng(3).random((2, 48, 48, 3), dtype=np.float32)

async def main():
    client = InferenceGRPCClient(sys.argv[1])
    try:
        inputs = [InferInput("image", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        reply = await client.infer(InferRequest(sys.argv[2], infer_inputs=inputs))
        return reply.outputs[0].as_numpy().tolist()
    finally:
        await client.close()

print(json.dumps(asyncio.run(main())))
"""


REST_SCRIPT = """
import asyncio, json, sys
import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from flatscope.client import Client
url, target, name = sys.argv[1:4]
x = np.random.default_rng(3).random((2, 48, 48, 3), dtype=np.float32)

def request(array, binary):
    image = InferInput("image", list(array.shape), "FP32")
    image.set_data_from_numpy(array, binary_data=binary)
    wanted = [RequestedOutput(n, {"binary_data": binary}) for n in ("digit", "flatten")]
    return InferRequest(name, infer_inputs=[image], request_outputs=wanted)

def outputs(reply):
    return {o.name: o.as_numpy().tolist() for o in reply.outputs}

async def main():
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        answers = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, name),
            "other_ready": await client.is_model_ready(url, "no-such-model"),
        }
        sent = {}
        for binary in (False, True):
            headers = {}
            reply = await client.infer(url, request(x, binary), name, response_headers=headers)
            sent[str(binary)] = {
                "outputs": outputs(reply),
                "content_type": headers["content-type"],
                "layer": (reply.parameters or {}).get("layer_name"),
            }
        answers["infer"] = sent
        try:
            await client.infer(url, request(x[:, :24], False), name)
            answers["error"] = None
        except httpx.HTTPStatusError as error:
            answers["error"] = [error.response.status_code, str(error)]
    return answers

answers = asyncio.run(main())
with Client(target) as grpc:
    answers["predict"] = grpc.predict(x).outputs.tolist()
    answers["flat"] = grpc.inspect(x).flattened.tolist()
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def beside_server(beside_venv, tmp_path_factory) -> Iterator[ServerProcess]:
    """One JAX server in the beside environment, gRPC and HTTP, for all its clients."""
    log = tmp_path_factory.mktemp("beside") / "server.log"
    with jax_server(beside_venv, log, http=True).serving() as server:
        yield server


def test_flatscope_installs_beside_kserve_and_tritonclient(beside_venv):
    run_in(beside_venv, "python", "-m", "pip", "check")
    for module in ("kserve", "tritonclient.grpc", "flatscope.client", "flatscope.grpc.server"):
        run_in(beside_venv, "-c", f"import {module}")


def test_vendored_kserve_sdk_types_are_the_sdks(beside_venv):
    """deploy/kserve/schemas' tables (the InferenceService's and ServingRuntime's check in
    tests/deploy/test_kserve_manifests.py) are what dump_sdk_types.py writes from this kserve."""
    vendored = json.loads(KSERVE_SDK_TYPES.read_text())
    dumped = json.loads(
        run_in(beside_venv, "python", str(KSERVE_SDK_TYPES.with_name("dump_sdk_types.py"))).stdout
    )
    if dumped["kserve"] != vendored["kserve"]:
        pytest.skip(
            f"kserve {dumped['kserve']} here, the tables are from {vendored['kserve']}: "
            "pip took a newer kserve (unpinned), no fault of this tree; the tables stay "
            "that SDK's types; regenerate them with dump_sdk_types.py "
            "(deploy/kserve/schemas/README.md) to follow it"
        )
    # the kubernetes client's version only names where the Kubernetes types come from
    assert {**dumped, "kubernetes": None} == {**vendored, "kubernetes": None}


def test_kserve_and_triton_clients_call_a_flatscope_server_beside_them(beside_venv, beside_server):
    server = beside_server
    x = example()
    with server.client() as client:
        expected = client.predict(x).outputs
        name = client.metadata().name
    triton = json.loads(run_in(beside_venv, "-c", TRITON_SCRIPT, server.target).stdout)
    kserve = json.loads(run_in(beside_venv, "-c", KSERVE_SCRIPT, server.target, name).stdout)
    mine = json.loads(run_in(beside_venv, "-c", CLIENT_SCRIPT, server.target).stdout)
    np.testing.assert_allclose(triton, expected, rtol=1e-6)
    np.testing.assert_allclose(kserve, expected, rtol=1e-6)
    np.testing.assert_allclose(mine["outputs"], expected, rtol=1e-6)


def test_kserve_rest_client_calls_the_http_port_and_equals_grpc(beside_venv, beside_server):
    """kserve's InferenceRESTClient (v2, JSON then binary tensors) against flatscope.client's
    Predict and Inspect over gRPC, from the same process."""
    server = beside_server
    with server.client() as client:
        name = client.metadata().name
    args = (server.http_url, server.target, name)
    got = json.loads(run_in(beside_venv, "-c", REST_SCRIPT, *args).stdout)
    assert got["live"] is True and got["ready"] is True
    assert got["model_ready"] is True and got["other_ready"] is False
    assert got["infer"]["False"]["content_type"].startswith("application/json")
    assert got["infer"]["True"]["content_type"] == "application/octet-stream"
    for binary, reply in got["infer"].items():
        assert reply["layer"] == "flatten", binary
        digit = np.asarray(reply["outputs"]["digit"], np.float32)
        flat = np.asarray(reply["outputs"]["flatten"], np.float32)
        np.testing.assert_allclose(digit, got["predict"], rtol=1e-5, atol=1e-5, err_msg=binary)
        np.testing.assert_allclose(flat, got["flat"], rtol=1e-5, atol=1e-5, err_msg=binary)
    status, message = got["error"]
    assert status == 400
    # kserve puts the server's {"error": ...} first, then the status and the URL.
    assert message.startswith(
        "input 'image' shape (2, 24, 48, 3) does not match (batch, 48, 48, 3)"
    )
