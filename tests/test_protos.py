"""The generated protobuf code is what protos/generate.py makes; the vendored protos are the
reference packages' own; the gRPC layer loads without those packages."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"
# What protos/generate.py writes: flatscope's own API and the vendored standard protocols.
GENERATED = ("flatscope/v1", "flatscope/protocols")
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*/**/__init__.py")


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in GENERATED
        for pattern in GENERATED_PATTERNS
        for path in (root / folder).glob(pattern)
    }


def test_committed_code_matches_protos(tmp_path: Path):
    # pyproject.toml's dev set pins it: its protoc writes protobuf 6.30.0 code.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    [pinned] = [r.split("==")[1] for r in dev if r.startswith("grpcio-tools==")]
    installed = importlib.metadata.version("grpcio-tools")
    assert installed == pinned, f"grpcio-tools {installed}; install the dev set ({pinned})"
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    fresh = generated_files(tmp_path)
    committed = generated_files(SERVICE)
    assert fresh, f"generate.py wrote nothing under {tmp_path}"
    assert sorted(committed) == sorted(fresh)
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"regenerate with `make protos`; these differ: {stale}"


def _without_json_names(file: descriptor_pb2.FileDescriptorProto):
    # protoc fills in json_name when it compiles; generated code carries only explicit ones.
    def clear(message):
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for message in file.message_type:
        clear(message)
    return file


def test_vendored_protos_are_the_reference_packages_own(tmp_path: Path):
    """Each file under protos/vendor compiles to the descriptor its source package carries."""
    pytest.importorskip("tritonclient.grpc")
    pytest.importorskip("tensorflow_serving.apis")
    from google.protobuf import descriptor_pool

    vendor = ROOT / "protos" / "vendor"
    out = tmp_path / "set.pb"
    files = sorted(str(p.relative_to(vendor)) for p in vendor.rglob("*.proto"))
    # protoc in a process of its own: its libprotobuf and TensorFlow's clash in one process.
    compile_ = [sys.executable, "-m", "grpc_tools.protoc", f"-I{vendor}"]
    result = subprocess.run(
        [*compile_, f"--descriptor_set_out={out}", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    spec = importlib.util.spec_from_file_location("vendor", ROOT / "protos" / "vendor.py")
    vendor_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor_script)
    for module in vendor_script.ROOTS:
        importlib.import_module(module)
    default = descriptor_pool.Default()
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert len(compiled) == len(files)
    for file in compiled:
        reference = descriptor_pb2.FileDescriptorProto.FromString(
            default.FindFileByName(file.name).serialized_pb
        )
        assert _without_json_names(file) == _without_json_names(reference), file.name


# Run in a fresh interpreter: the modules the gRPC layer, the client and the CLI load.
LOADED = """
import json, sys
import flatscope.grpc.server, flatscope.client, flatscope.cli
print(json.dumps(sorted(sys.modules)))
"""


def test_grpc_layer_imports_no_ml_framework_nor_reference_protocol_package():
    result = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    banned = ("tritonclient", "tensorflow_serving", "tensorflow", "keras", "jax", "torch")
    found = [name for name in loaded if name.split(".")[0] in banned]
    assert not found, f"the gRPC layer loaded {found[:10]}"
