"""Regenerates the Python code for protos/ into service/ (or --out DIR).

Run: ``python protos/generate.py`` (``make protos``), with the grpcio-tools that the dev set
pins: its protoc decides the generated code's protobuf version (see protos/README.md). The
generated modules are committed; a test runs this into a temporary folder and fails if they
differ.

- ``protos/flatscope/v1``, flatscope's own API, becomes ``flatscope.v1``, as protoc writes it.
- ``protos/vendor`` (the standard protocols, see protos/vendor.py) becomes
  ``flatscope.protocols``: protoc's output with two changes, so that it can live beside the
  packages these files come from (tritonclient, tensorflow, tensorflow-serving-api, kserve),
  whose generated code defines the same messages:
  its imports name ``flatscope.protocols.<module>`` (no top-level ``tensorflow`` package of
  ours), and its descriptors go to ``flatscope.protocols.POOL`` instead of protobuf's default
  pool, where a second definition of ``tensorflow.TensorProto`` or ``inference.ModelInferRequest``
  (another version's, from another file) would fail the import. The proto package names, and
  so the services' names on the wire, are upstream's.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
VENDOR = ROOT / "vendor"
PACKAGE = "flatscope.protocols"
INCLUDE = Path(protoc.__file__).parent / "_proto"
POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
FROM_IMPORT = re.compile(r"^from ([\w.]+) import (\w+|\*)", re.MULTILINE)
PLAIN_IMPORT = re.compile(r"^import (\w+) as (\w+)$", re.MULTILINE)


def run_protoc(include: Path, out: Path, protos: list[str], *outputs: str) -> None:
    args = ["protoc", f"-I{include}", f"-I{INCLUDE}", *(f"--{o}_out={out}" for o in outputs)]
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args + protos)}")


def relative_protos(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.proto"))


def generate_own(out: Path) -> None:
    """flatscope's own API: every .proto under protos/ but vendor/, as protoc writes it."""
    protos = [p for p in relative_protos(ROOT) if not p.startswith("vendor/")]
    run_protoc(ROOT, out, protos, "python", "pyi", "grpc_python")


def generate_vendored(out: Path) -> None:
    """The standard protocols into ``flatscope.protocols`` (see the module docstring)."""
    protos = relative_protos(VENDOR)
    with_services = [p for p in protos if re.search(r"^service ", (VENDOR / p).read_text(), re.M)]
    target = out.joinpath(*PACKAGE.split("."))
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch)
        run_protoc(VENDOR, raw, protos, "python", "pyi")
        run_protoc(VENDOR, raw, with_services, "grpc_python")
        files = sorted(p for p in raw.rglob("*") if p.is_file())
        modules = {".".join(p.relative_to(raw).with_suffix("").parts) for p in files}
        for path in files:
            relative = path.relative_to(raw)
            text = _rehome(path.read_text(), modules)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(text)
            for folder in relative.parents:
                if folder != Path("."):
                    (target / folder / "__init__.py").touch()


def _rehome(text: str, modules: set[str]) -> str:
    """Imports of the generated modules under PACKAGE; descriptors into its POOL."""

    def from_import(match: re.Match) -> str:
        parent, name = match.groups()
        if f"{parent}.{name}" in modules or (name == "*" and parent in modules):
            return f"from {PACKAGE}.{parent} import {name}"
        return match.group(0)

    def plain_import(match: re.Match) -> str:
        module, alias = match.groups()
        if module in modules:
            return f"from {PACKAGE} import {module} as {alias}"
        return match.group(0)

    text = PLAIN_IMPORT.sub(plain_import, FROM_IMPORT.sub(from_import, text))
    if POOL_IMPORT in text:
        text = text.replace(POOL_IMPORT, POOL_IMPORT + "from flatscope import protocols\n", 1)
        text = text.replace("_descriptor_pool.Default()", "protocols.POOL")
    return text


def generate(out: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto under protos/."""
    out.mkdir(parents=True, exist_ok=True)
    generate_own(out)
    generate_vendored(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT.parent / "service")
    generate(parser.parse_args().out)
    sys.exit(0)
