"""Triton's own tools against flatscope: its example image client and perf_analyzer.

Both run as subprocesses, as their users run them; answers are compared with
flatscope's own Predict.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerThread
from PIL import Image

IMAGE_CLIENT = Path(__file__).parent.parent / "triton" / "image_client.py"
TIMEOUT = 120


def image_file(path: Path) -> Path:
    """A 64x64 RGB image (the client resizes it to the model's 48x48)."""
    pixels = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def as_the_client_sends(path: Path) -> np.ndarray:
    """The batch image_client.py sends for ``path`` (its preprocess, scaling NONE, NHWC)."""
    resized = Image.open(path).convert("RGB").resize((48, 48), Image.BILINEAR)
    return np.asarray(resized).astype(np.float32)[np.newaxis]


@pytest.mark.parametrize("mode", [[], ["--streaming"]], ids=["infer", "stream"])
def test_image_client_classifies_as_predict(default_server: ServerThread, tmp_path, mode):
    path = image_file(tmp_path / "digit.png")
    command = [sys.executable, str(IMAGE_CLIENT), "-m", "digits", "-u", default_server.target]
    command += ["-i", "grpc", "--classes", "3", *mode, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Request 1, batch size 1"
    assert lines[-1] == "PASS"
    printed = [re.fullmatch(r"\s+(\S+) \((\d+)\) = (\S+)", line).groups() for line in lines[1:-1]]
    with default_server.client() as own:
        scores = own.predict(as_the_client_sends(path)).outputs[0]
    top = np.argsort(-scores, kind="stable")[:3]
    assert [int(index) for _, index, _ in printed] == top.tolist()
    assert [label for *_, label in printed] == [str(k) for k in top]
    np.testing.assert_allclose([float(score) for score, *_ in printed], scores[top], atol=1e-5)


def perf_analyzer() -> tuple[str, dict[str, str]] | None:
    """The perf_analyzer binary beside this Python (or on PATH), and its environment."""
    found = shutil.which("perf_analyzer", path=str(Path(sys.executable).parent))
    found = found or shutil.which("perf_analyzer")
    if found is None:
        return None
    env = dict(os.environ)
    try:  # it links libcudart.so.12 even to run on a CPU
        import nvidia.cuda_runtime

        lib = str(Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p
        )
    except ImportError:
        pass
    return found, env


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_runs_without_errors(request, tmp_path, protocol):
    tool = perf_analyzer()
    if tool is None:
        pytest.skip(
            "perf_analyzer is not installed: `make test` puts it in .venv/bin "
            "(.ci/install-perf-analyzer, from the tritonclient 2.48 wheel; the perf-analyzer "
            "wheels need glibc 2.38); run pytest alone and it is missing"
        )
    binary, env = tool
    report = tmp_path / "report.csv"
    if protocol == "grpc":
        url = request.getfixturevalue("default_server").target
    else:  # KServe v2 REST, with Triton's model configuration route
        url = request.getfixturevalue("rest_server").http_url.removeprefix("http://")
    command = [binary, "-m", "digits", "-u", url, "-i", protocol]
    command += ["--concurrency-range", "1:2", "--measurement-interval", "1000"]
    # Its default "random" data are random bytes: as float32, some are NaN, which the
    # server refuses (INVALID_ARGUMENT); zeros are a valid image.
    command += ["--input-data", "zero", "-f", str(report)]
    # A concurrency whose throughput does not settle within --max-trials is left out of the
    # report: on a machine shared with other tests, accept 100 % between trials (the
    # default, 10 %, is a benchmark's bar, not a test's).
    command += ["--max-trials", "6", "--stability-percentage", "100"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "error" not in output.lower(), output
    rows = report.read_text().splitlines()
    assert rows[0].startswith("Concurrency,Inferences/Second")
    assert len(rows) == 3  # concurrency 1 and 2
    for row in rows[1:]:
        assert float(row.split(",")[1]) > 0
    print(output)
