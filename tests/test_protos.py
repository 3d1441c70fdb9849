"""The generated protobuf code in service/flatscope/v1 is what protos/generate.py makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "service" / "flatscope" / "v1"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def generated_files(folder: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for pattern in GENERATED_PATTERNS
        for path in folder.glob(pattern)
    }


def test_committed_code_matches_protos(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    fresh = generated_files(tmp_path / "flatscope" / "v1")
    committed = generated_files(COMMITTED)
    assert fresh, f"generate.py wrote nothing under {tmp_path / 'flatscope' / 'v1'}"
    assert sorted(committed) == sorted(fresh)
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"regenerate with `make protos`; these differ: {stale}"
