"""The README's curl examples (its "HTTP/REST" section), run against a live server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import ServerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_blocks() -> list[str]:
    """The ```sh blocks of the HTTP/REST section."""
    text = README.read_text()
    section = text.split("\n## HTTP/REST\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_section_has_curl_examples():
    commands = [line for block in curl_blocks() for line in block.splitlines()]
    assert sum(line.startswith("curl ") for line in commands) >= 6


@pytest.mark.skipif(
    shutil.which("curl") is None,
    reason="curl is not installed: the README's examples are curl commands "
    "(.ci/run installs curl, so CI runs this)",
)
def test_readme_curl_examples_answer_what_the_comments_show(
    rest_server: ServerProcess, tmp_path: Path
):
    port = str(rest_server.http_port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for block in curl_blocks():
        # Each curl prints its answer on a line of its own, and fails on an HTTP error.
        script = block.replace("localhost:8501", f"localhost:{port}")
        script = re.sub(r"^curl ", "curl -sS --fail-with-body -w '\\n' ", script, flags=re.M)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        shown = [line for line in block.splitlines() if line.startswith("curl ")]
        assert len(answers) == len(shown)
        for command, answer in zip(shown, answers, strict=True):
            expected = _shown_after(block, command)
            for key, value in expected.items():
                assert _find(answer, key) == value, (command, key)


def _shown_after(block: str, command: str) -> dict:
    """Key-value pairs the README's comment after ``command`` shows (whole JSON values; the
    first of each key, as :func:`_find` finds it)."""
    lines = block.splitlines()
    start = lines.index(command) + 1
    comment = []
    while start < len(lines) and lines[start].startswith("# "):
        comment.append(lines[start][2:])
        start += 1
    text = " ".join(comment)
    pairs = re.findall(r'"(\w+)":(\[[^\]\[]*\]|"[^"]*"|\d+|true|false)', text)
    shown: dict = {}
    for key, value in pairs:
        if "..." not in value:
            shown.setdefault(key, json.loads(value))
    return shown


def _find(answer, key: str):
    """The first value of ``key`` anywhere in ``answer`` (depth first)."""
    if isinstance(answer, dict):
        if key in answer:
            return answer[key]
        values = answer.values()
    elif isinstance(answer, list):
        values = answer
    else:
        return None
    for value in values:
        found = _find(value, key)
        if found is not None:
            return found
    return None
