"""The image's recipe, run on this machine: no container engine runs here, so the test does
what the Dockerfile does, from the Dockerfile itself.

It copies what the build stage COPYs, runs the build stage's call of deploy/docker/build-wheel.sh,
runs the runtime stage's call of deploy/docker/install.sh into a fresh virtual environment (the
cpu variant: the gpu variant adds tensorflow[and-cuda], several GB that need a GPU to mean
anything), then starts ENTRYPOINT + CMD with the image's ENV and asks the HEALTHCHECK command
until it reports SERVING. Paths of the image map to temporary ones; the only other differences
are named where they are made. pip may use its cache here (the image build sets
PIP_NO_CACHE_DIR); with an empty cache the install downloads TensorFlow, a minute or two.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_container_files import (
    dockerfile_stages,
    env_of,
    exec_form,
    only,
    script_call,
)
from test_prometheus import free_port

import flatscope
from flatscope.client import Client

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900.0  # seconds for building the wheel and installing it with TensorFlow
START_TIMEOUT = 120.0  # seconds for the server to report SERVING
STOP_TIMEOUT = 30.0  # seconds for the server to exit after SIGTERM
HEALTH_TIMEOUT = 30.0  # seconds for one run of the health check command
VARIANT = "cpu"


def image_paths(tmp_path: Path) -> dict[str, str]:
    """Where each path of the image lies in this test."""
    return {
        "/recipe": str(ROOT / "deploy" / "docker"),  # the bind mount of deploy/docker
        "/src": str(tmp_path / "src"),  # the build stage's WORKDIR
        "/dist": str(tmp_path / "dist"),  # the wheel, built and bind-mounted
        "/opt/flatscope": str(tmp_path / "opt-flatscope"),  # the virtual environment
    }


def on_this_machine(word: str, paths: dict[str, str]) -> str:
    """An argument of the image's commands, with its image paths mapped to this test's."""
    word = word.replace("${VARIANT}", VARIANT)
    for image_path, here in paths.items():
        if word == image_path or word.startswith(image_path + "/"):
            return here + word[len(image_path) :]
    return word


def run_script(call: list[str], paths: dict[str, str], log: Path) -> None:
    args = [on_this_machine(word, paths) for word in call]
    with log.open("ab") as out:
        out.write(f"$ sh {' '.join(args)}\n".encode())
        out.flush()
        result = subprocess.run(
            ["sh", *args], stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT
        )
    assert result.returncode == 0, log.read_text(errors="replace")[-6000:]


def build_context_copy(build_stage, destination: Path) -> None:
    """What the build stage's COPY instructions copy, from the repository to ``destination``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for instruction in build_stage:
        if instruction.keyword != "COPY":
            continue
        *sources, target = instruction.arguments.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, destination / target, ignore=ignore)
            else:
                (destination / target).mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination / target / origin.name)


def image_environment(runtime_stage, paths: dict[str, str], **overrides: str) -> dict[str, str]:
    """This process's environment without FLATSCOPE_*, plus the image's ENV, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATSCOPE_")}
    for name, value in env_of(runtime_stage).items():
        value = value.replace("$PATH", env.get("PATH", ""))
        env[name] = ":".join(on_this_machine(part, paths) for part in value.split(":"))
    return {**env, **overrides}


def health(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=HEALTH_TIMEOUT)


def test_image_recipe_installs_the_wheel_and_its_entry_point_reports_serving(tmp_path: Path):
    stages = dockerfile_stages()
    build, runtime = stages["build"], stages["runtime"]
    paths = image_paths(tmp_path)
    log = tmp_path / "recipe.log"

    # Build stage: COPY, then build-wheel.sh.
    build_context_copy(build, Path(paths["/src"]))
    _, build_call = script_call(build, "build-wheel.sh")
    run_script(build_call, paths, log)
    wheels = sorted(Path(paths["/dist"]).glob("*.whl"))
    assert [w.name for w in wheels] == [f"flatscope-{flatscope.__version__}-py3-none-any.whl"]

    # Runtime stage: install.sh into a new virtual environment.
    _, install_call = script_call(runtime, "install.sh")
    run_script(install_call, paths, log)
    venv = Path(paths["/opt/flatscope"])
    assert (venv / "bin" / "flatscope").is_file()
    # The embedded model ships inside the wheel.
    assert list(venv.glob("lib/python3*/site-packages/flatscope/default_model/digits_cnn.keras"))
    unpinned = unpinned_packages(venv)
    assert not unpinned, (
        "installed but not pinned in deploy/docker/constraints.txt; add:\n" + "\n".join(unpinned)
    )

    # The entry point, with the image's environment. Its ports are free ones here, set the way
    # the image's health check reads them (FLATSCOPE_PORT), and it listens on 127.0.0.1 only:
    # the flag comes after CMD's --host 0.0.0.0 and wins.
    grpc_port, metrics_port = free_port(), free_port()
    env = image_environment(
        runtime,
        paths,
        FLATSCOPE_PORT=str(grpc_port),
        FLATSCOPE_METRICS_PORT=str(metrics_port),
        FLATSCOPE_HTTP_PORT=str(free_port()),
    )
    command = [*exec_form(only(runtime, "ENTRYPOINT")), *exec_form(only(runtime, "CMD"))]
    assert shutil.which(command[0], path=env["PATH"]) == str(venv / "bin" / command[0])
    check = exec_form(only(runtime, "HEALTHCHECK"))

    before = health(check, env)
    assert before.returncode != 0, "the health check passes with no server running"

    serve_log = tmp_path / "serve.log"
    with serve_log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            result = health(check, env)
            if result.returncode == 0:
                break
            if server.poll() is not None:
                pytest.fail(f"server exited with {server.returncode}:\n{serve_log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy after {START_TIMEOUT} s:\n{serve_log.read_text()}")
            time.sleep(1.0)
        assert result.stdout.strip() == "SERVING"

        target = f"127.0.0.1:{grpc_port}"
        with Client(target, timeout=HEALTH_TIMEOUT) as client:
            prediction = client.predict(np.zeros((2, 48, 48, 3), np.float32))
        assert prediction.outputs.shape == (2, 10)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT) as response:
            metrics = response.read().decode()
        assert re.search(r'^flatscope_model_info\{.*model="digits".*\} 1\.0$', metrics, re.M)

        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=STOP_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=STOP_TIMEOUT)
    text = serve_log.read_text(errors="replace")
    assert code == 0, text
    assert f"listening on 127.0.0.1:{grpc_port} (gRPC" in text
    assert "Traceback" not in text


def unpinned_packages(venv: Path) -> list[str]:
    """``name==version`` of each package in ``venv`` that constraints.txt does not pin."""
    constraints = ROOT / "deploy" / "docker" / "constraints.txt"
    pinned = {
        normalized(line.split("==")[0])
        for line in constraints.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=HEALTH_TIMEOUT,
        check=True,
    ).stdout.split()
    ignored = {"flatscope", "pip"}
    return [line for line in freeze if normalized(line.split("==")[0]) not in pinned | ignored]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
