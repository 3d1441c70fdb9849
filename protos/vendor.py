"""Writes protos/vendor/ from the descriptors compiled into the reference packages.

The standard protocols' .proto files (KServe v2 as Triton's grpc_service.proto has it, TF
Serving's PredictionService and ModelService, and the TensorFlow protos they import) are
written out, as .proto text, from the FileDescriptorProtos that the released Python packages
carry: tritonclient, tensorflow-serving-api, tensorflow. So the vendored files are exactly
what those releases put on the wire (tests/test_protos.py compares them with the packages
where those are installed), without the upstream comments. Run it in an environment with
the three packages (the dev set has them): ``python protos/vendor.py``. Needs only
protobuf; it never goes to the network.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pb2 as d

F = d.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double",
    F.TYPE_FLOAT: "float",
    F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64",
    F.TYPE_INT32: "int32",
    F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_BOOL: "bool",
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_UINT32: "uint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SINT64: "sint64",
}


def literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def options(message, skip=()) -> list[tuple[str, str]]:
    out = []
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        if field.enum_type is not None:
            value = field.enum_type.values_by_number[value].name
        elif field.message_type is not None or field.is_repeated:
            raise ValueError(f"cannot write option {field.name}")
        else:
            value = literal(value)
        out.append((field.name, value))
    return out


def bracket(pairs) -> str:
    return " [" + ", ".join(f"{k} = {v}" for k, v in pairs) + "]" if pairs else ""


def reserved(lines, pad, ranges, names, inclusive_end):
    for r in ranges:
        end = r.end if inclusive_end else r.end - 1
        end_text = "max" if end >= 536870911 or end == 2147483647 else str(end)
        lines.append(f"{pad}reserved {r.start}{'' if end == r.start else ' to ' + end_text};")
    for n in names:
        lines.append(f"{pad}reserved {literal(n)};")


def enum(lines, e, depth):
    pad = "  " * depth
    lines.append(f"{pad}enum {e.name} {{")
    for k, v in options(e.options):
        lines.append(f"{pad}  option {k} = {v};")
    for value in e.value:
        lines.append(f"{pad}  {value.name} = {value.number}{bracket(options(value.options))};")
    reserved(lines, pad + "  ", e.reserved_range, e.reserved_name, inclusive_end=True)
    lines.append(f"{pad}}}")


def field_line(f, maps, proto3) -> str:
    if f.type_name and f.type_name in maps:
        key, value = maps[f.type_name]
        kind = f"map<{type_of(key)}, {type_of(value)}>"
    else:
        label = ""
        if f.label == F.LABEL_REPEATED:
            label = "repeated "
        elif f.label == F.LABEL_REQUIRED:
            label = "required "
        elif f.proto3_optional or (not proto3 and not f.HasField("oneof_index")):
            label = "optional "
        kind = label + type_of(f)
    pairs = options(f.options)
    if f.HasField("json_name"):
        pairs.append(("json_name", literal(f.json_name)))
    if f.HasField("default_value"):
        v = f.default_value
        pairs.append(("default", literal(v) if f.type in (F.TYPE_STRING, F.TYPE_BYTES) else v))
    return f"{kind} {f.name} = {f.number}{bracket(pairs)};"


def type_of(f) -> str:
    return SCALARS.get(f.type) or f.type_name


def message(lines, m, depth, scope, proto3):
    pad = "  " * depth
    full = f"{scope}.{m.name}"
    lines.append(f"{pad}message {m.name} {{")
    for k, v in options(m.options):
        lines.append(f"{pad}  option {k} = {v};")
    maps = {}
    for nested in m.nested_type:
        if nested.options.map_entry:
            maps[f"{full}.{nested.name}"] = (nested.field[0], nested.field[1])
    for nested in m.enum_type:
        enum(lines, nested, depth + 1)
    # Declaration order: nested messages and the map entries (made where their map field
    # stands) share one list, so each map field is written before the nested messages after it.
    fields = list(m.field)
    written_oneofs = set()

    def write_fields_through(stop) -> None:
        while fields:
            f = fields.pop(0)
            if f.HasField("oneof_index") and not f.proto3_optional:
                index = f.oneof_index
                if index in written_oneofs:
                    continue
                written_oneofs.add(index)
                lines.append(f"{pad}  oneof {m.oneof_decl[index].name} {{")
                for g in m.field:
                    if g.HasField("oneof_index") and g.oneof_index == index:
                        lines.append(f"{pad}    {field_line(g, maps, proto3)}")
                lines.append(f"{pad}  }}")
            else:
                lines.append(f"{pad}  {field_line(f, maps, proto3)}")
            if f is stop:
                return

    for nested in m.nested_type:
        if nested.options.map_entry:
            entry = f"{full}.{nested.name}"
            write_fields_through(next(f for f in m.field if f.type_name == entry))
        else:
            message(lines, nested, depth + 1, full, proto3)
    write_fields_through(None)
    for r in m.extension_range:
        lines.append(f"{pad}  extensions {r.start} to {r.end - 1 if r.end < 536870912 else 'max'};")
    reserved(lines, pad + "  ", m.reserved_range, m.reserved_name, inclusive_end=False)
    if m.extension:
        raise ValueError(f"{full}: extensions are not written")
    lines.append(f"{pad}}}")


def write_proto(fdp: d.FileDescriptorProto, header: str) -> str:
    proto3 = fdp.syntax == "proto3"
    if fdp.syntax not in ("", "proto2", "proto3") or fdp.extension:
        raise ValueError(f"{fdp.name}: syntax {fdp.syntax!r} or extensions not supported")
    lines = [header, f'syntax = "{"proto3" if proto3 else "proto2"}";', ""]
    if fdp.package:
        lines += [f"package {fdp.package};", ""]
    for i, dep in enumerate(fdp.dependency):
        kind = (
            "public " if i in fdp.public_dependency else "weak " if i in fdp.weak_dependency else ""
        )
        lines.append(f'import {kind}"{dep}";')
    if fdp.dependency:
        lines.append("")
    for k, v in options(fdp.options):
        lines.append(f"option {k} = {v};")
    scope = "." + fdp.package if fdp.package else ""
    for e in fdp.enum_type:
        lines.append("")
        enum(lines, e, 0)
    for m in fdp.message_type:
        lines.append("")
        message(lines, m, 0, scope, proto3)
    for s in fdp.service:
        lines += ["", f"service {s.name} {{"]
        for k, v in options(s.options):
            lines.append(f"  option {k} = {v};")
        for r in s.method:
            a = "stream " if r.client_streaming else ""
            b = "stream " if r.server_streaming else ""
            opts = options(r.options)
            if opts:
                body = " {\n" + "".join(f"    option {k} = {v};\n" for k, v in opts) + "  }"
            else:
                body = " {}" if r.HasField("options") else ";"
            lines.append(f"  rpc {r.name}({a}{r.input_type}) returns ({b}{r.output_type}){body}")
        lines.append("}")
    return "\n".join(lines) + "\n"


# The services flatscope serves; each is vendored with every file it imports.
ROOTS = (
    "tritonclient.grpc.service_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
)


def closure(module_name: str) -> list:
    """The files of ``module_name``'s descriptor and all it imports, imports first."""
    files, seen = [], set()

    def visit(fd):
        if fd.name in seen or fd.name.startswith("google/protobuf/"):
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        files.append(fd)

    visit(importlib.import_module(module_name).DESCRIPTOR)
    return files


UPSTREAM = (
    # (path prefix, distribution the descriptor ships in, upstream folder with {version})
    (
        "tensorflow_serving/",
        "tensorflow-serving-api",
        "https://github.com/tensorflow/serving/tree/{version}/",
    ),
    ("tensorflow/", "tensorflow", "https://github.com/tensorflow/tensorflow/tree/v{version}/"),
    (
        "xla/",
        "tensorflow",
        "https://github.com/tensorflow/tensorflow/tree/v{version}/third_party/xla/",
    ),
    ("", "tritonclient", "https://github.com/triton-inference-server/common/blob/main/protobuf/"),
)
LICENSES = {
    "tritonclient": "BSD-3-Clause",
    "tensorflow": "Apache-2.0",
    "tensorflow-serving-api": "Apache-2.0",
}


def header(name: str) -> str:
    from importlib.metadata import version

    for prefix, dist, url in UPSTREAM:
        if name.startswith(prefix):
            v = version(dist)
            return (
                f"// {name}: from {dist} {v}, whose generated code carries its descriptor;\n"
                f"// written out by protos/vendor.py (upstream, with its comments:\n"
                f"// {url.format(version=v)}{name}).\n"
                f"// License: {LICENSES[dist]}, as upstream. Do not edit; rerun protos/vendor.py.\n"
            )
    raise ValueError(name)


def main(out: Path) -> dict[str, d.FileDescriptorProto]:
    """Writes the vendored files under ``out``; returns their descriptors by file name."""
    written = {}
    for module_name in ROOTS:
        for fd in closure(module_name):
            if fd.name in written:
                continue
            fdp = d.FileDescriptorProto.FromString(fd.serialized_pb)
            path = out / fd.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(write_proto(fdp, header(fd.name)))
            written[fd.name] = fdp
    print(f"wrote {len(written)} files under {out}")
    return written


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "vendor")
