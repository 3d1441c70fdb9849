"""The ``flatscope`` command line: serve, predict, inspect, metadata."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
from pydantic import ValidationError

from flatscope import logs
from flatscope.errors import ConfigError, ModelLoadError, one_line
from flatscope.images import FITS
from flatscope.settings import Settings, accepted, choices

DEFAULT_TARGET = "127.0.0.1:8500"


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    return args.run(args)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the usage itself is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flatscope",
        description="Serve a Keras CNN over gRPC and see exactly what its Flatten layer does.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    parser.add_argument("--version", action=_Version)
    serve = commands.add_parser("serve", help="run the server")
    for name, field in Settings.model_fields.items():
        serve.add_argument(
            _flag(name),
            dest=name,
            default=None,
            metavar=_metavar(name),
            help=f"{field.description} [env {_env(name)}{_default(field.default)}]",
        )
    serve.set_defaults(run=_serve)

    for name, run, text in (
        ("predict", _predict, "classify an image file or random input"),
        ("inspect", _inspect, "show the Flatten layout and what enters the Dense layer"),
        ("metadata", _metadata, "print the served model's layer table"),
        ("health", _health, "exit 0 when the server reports SERVING, 1 otherwise"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--target",
            default=os.environ.get("FLATSCOPE_TARGET", DEFAULT_TARGET),
            help=f"server address [env FLATSCOPE_TARGET; default {DEFAULT_TARGET}]",
        )
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        tls = command.add_argument_group("TLS (plaintext when none is given)")
        tls.add_argument(
            "--tls", action="store_true", help="use TLS, trusting the system's CA certificates"
        )
        tls.add_argument(
            "--tls-ca",
            type=Path,
            metavar="FILE",
            help="use TLS, trusting these PEM CA certificates",
        )
        tls.add_argument(
            "--tls-cert", type=Path, metavar="FILE", help="PEM client certificate (mutual TLS)"
        )
        tls.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
        command.set_defaults(run=run)
        if name in ("metadata", "health"):
            continue
        command.add_argument("--image", type=Path, help="an image file (default: random input)")
        command.add_argument(
            "--invert",
            action="store_true",
            help="flip dark and light in --image (default: a light border, i.e. a dark "
            "digit on light paper, is flipped for you)",
        )
        command.add_argument(
            "--fit",
            choices=FITS,
            help="digit: crop, scale and centre the digit in --image, as the embedded "
            "model was trained; stretch: resize the whole picture (default: digit for "
            "the embedded model, stretch for others)",
        )
        command.add_argument("--seed", type=int, default=0, help="seed of the random input")
        if name == "inspect":
            command.add_argument("--layer", default="", help="Flatten layer (default: the one)")
            command.add_argument(
                "--flat",
                type=int,
                action="append",
                default=[],
                metavar="I",
                help="a flat index to trace back to the source (repeatable)",
            )
            command.add_argument(
                "--at",
                action="append",
                default=[],
                type=_index,
                metavar="I,J,K",
                help="a source index in the order of the source axes, e.g. 1,1,1 for "
                "(h, w, c), to find in the flat vector (repeatable)",
            )
            command.add_argument(
                "--plot",
                type=Path,
                metavar="FILE",
                help="also draw a picture of the answer into FILE (.png or .svg): the "
                "feature map, the flat vector, the first --flat or --at index (default: "
                "the largest feature) and the next Dense layer's weights; needs matplotlib",
            )
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"flatscope serve: bad settings: {_problems(exc, overrides)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    # A failed start prints its one error line alone, and a healthy one no native noise;
    # at DEBUG, everything as it comes, TensorFlow's and gRPC's own lines included.
    if settings.log_level != "DEBUG":
        logs.quiet_native_logs()  # before grpc and tensorflow are imported
        logs.hold_stderr(drop_native=True)
    try:
        from flatscope.grpc.server import serve

        with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except (ModelLoadError, ConfigError) as exc:
        logs.release_stderr(replay=False)
        message = f"cannot start: {one_line(str(exc))}"
        if settings.log_format == "json":
            logging.getLogger("flatscope").error(message)
        else:
            print(f"flatscope: {message}", file=sys.stderr)
        return 1
    finally:
        logs.release_stderr()  # the server releases it once it is serving
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``--event-loop``; None is asyncio's own loop.

    Raises:
        ConfigError: uvloop was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _problems(exc: ValidationError, flags: dict[str, str]) -> str:
    """The settings' validation errors on one line, each with its flag (or variable), the
    value given and what was expected."""
    problems = []
    for error in exc.errors():
        if error["loc"] and str(error["loc"][0]) in Settings.model_fields:
            name = str(error["loc"][0])
            if name in flags:
                given = f"{_flag(name)} {flags[name]}"
            else:
                given = f"{_env(name)}={error['input']}"
            problems.append(f"{given}: expected {accepted(name)}")
        else:
            problems.append(error["msg"].removeprefix("Value error, "))
    return one_line("; ".join(problems))


def _metavar(name: str) -> str:
    if choices(name):
        return "{" + ",".join(choices(name)) + "}"
    return "{true,false}" if Settings.model_fields[name].annotation is bool else name.upper()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return f"FLATSCOPE_{name.upper()}"


def _default(value: object) -> str:
    if value is None or value == "":
        return ""  # the description says what unset means
    return f"; default {str(value).lower() if isinstance(value, bool) else value}"


class _Version(argparse.Action):
    """``--version``: the installed package's version (looked up only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        import importlib.metadata

        try:
            version = importlib.metadata.version("flatscope")
        except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
            from flatscope import __version__ as version
        print(f"flatscope {version}")
        parser.exit(0)


def _client(args: argparse.Namespace):
    logs.quiet_native_logs()  # before grpc is imported: only its errors on the terminal
    from flatscope.client import Client

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("give --tls-cert and --tls-key together")
    return Client(
        args.target,
        timeout=args.timeout,
        tls=args.tls,
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )


def _example(args: argparse.Namespace, client) -> np.ndarray:
    meta = client.metadata()
    shape = tuple(meta.inputs[0].shape[1:])
    if args.image:
        from flatscope.images import load_image

        fit = args.fit or ("digit" if meta.source.startswith("embedded:") else "stretch")
        # No --invert: None, so that load_image decides from the picture's border.
        return load_image(args.image, shape, invert=args.invert or None, fit=fit)[np.newaxis]
    return np.random.default_rng(args.seed).random((1, *shape), dtype=np.float32)


def _rpc(fn):
    """Runs a client command, turning a gRPC error into a one-line message and exit 1.

    The command's own exit code, if it returns one, passes through; None means 0.
    """

    def wrapped(args: argparse.Namespace) -> int:
        import grpc  # here, not at import: serve sets gRPC's log level before importing it

        try:
            code = fn(args)
        except grpc.RpcError as exc:
            print(f"flatscope: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except (OSError, ValueError, IndexError, ImportError) as exc:
            print(f"flatscope: {exc}", file=sys.stderr)
            return 1
        return code or 0

    return wrapped


@_rpc
def _predict(args: argparse.Namespace) -> None:
    with _client(args) as client:
        result = client.predict(_example(args, client))
    scores = result.outputs[0]
    top = np.argsort(scores)[::-1][:3]
    print(f"model {result.model_name} v{result.model_version}")
    print(f"class {result.classes[0]}  (score {scores[result.classes[0]]:.4f})")
    print("top 3: " + "  ".join(f"{k}: {scores[k]:.4f}" for k in top))


@_rpc
def _inspect(args: argparse.Namespace) -> None:
    with _client(args) as client:
        inputs = _example(args, client)
        result = client.inspect(
            inputs, layer=args.layer, include_source=True, include_dense_kernel=bool(args.plot)
        )
    layout = result.layout
    names = ", ".join(layout.axis_names)
    # Every index is checked before anything is printed.
    lines = []
    for flat in args.flat:
        index = layout.source_index(flat)
        lines.append(
            f"flat[{flat}] <- source{index} = {result.flattened[0, flat]:.6g}"
            f"   [{_named(layout, index)}]"
        )
    for index in args.at:
        flat = layout.flat_index(index)
        lines.append(
            f"source{index} -> flat[{flat}] = {result.source[(0, *index)]:.6g}"
            f"   [{_named(layout, index)}]"
        )
    print(
        f"model {result.model_name} v{result.model_version}: Flatten layer "
        f"'{layout.layer_name}' ({layout.data_format})"
    )
    print(f"source ({names}) = {layout.source_shape} -> {layout.flat_size} features")
    print(f"flat order: {', '.join(layout.flat_order)} ({layout.flat_order[-1]} fastest)")
    print(f"strides: {layout.strides}")
    print(layout.formula)
    if layout.note:
        print(f"note: {layout.note}")
    for line in lines:
        print(line)
    print(f"prediction: class {result.classes[0]}")
    if args.plot:
        from flatscope.plot import plot_inspect

        chosen = [*args.flat, *(layout.flat_index(index) for index in args.at)]
        picture = plot_inspect(result, inputs, args.plot, chosen[0] if chosen else None)
        print(
            f"wrote {args.plot}: flat[{picture.flat_index}] <- source{picture.source_index}"
            + (f", Dense layer '{picture.dense_layer}'" if picture.dense_layer else "")
        )


@_rpc
def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 1


@_rpc
def _metadata(args: argparse.Namespace) -> None:
    with _client(args) as client:
        meta = client.metadata()
    print(f'Model "{meta.name}" v{meta.version} from {meta.source}')
    print(f"backend {meta.backend}, device {meta.device}, max batch {meta.max_batch_size}")
    for kind, specs in (("input", meta.inputs), ("output", meta.outputs)):
        for spec in specs:
            print(f"{kind:<7}{spec.name} {spec.dtype} {_shape(spec.shape)}")
    rows = [
        (f"{r.name} ({r.type})", _shape(r.output_shape), f"{r.param_count:,}", r.data_format)
        for r in meta.layers
    ]
    header = ("Layer (type)", "Output Shape", "Param #", "Data format")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    rule = "-" * (sum(widths) + 6)
    print(rule)
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    print(rule)
    print(f"Total params: {meta.total_params:,}")
    print(f"Trainable params: {meta.trainable_params:,}")
    print(f"Non-trainable params: {meta.non_trainable_params:,}")
    print(f"Flatten layers: {', '.join(meta.flatten_layers) or 'none'}")


def _index(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a source index; expected integers separated by commas, e.g. 1,1,1"
        ) from None


def _named(layout, index: tuple[int, ...]) -> str:
    return ", ".join(f"{name} {i}" for name, i in zip(layout.axis_names, index, strict=True))


def _shape(shape) -> str:
    return (
        "("
        + ", ".join("None" if d is None else str(d) for d in shape)
        + (",)" if len(shape) == 1 else ")")
    )
