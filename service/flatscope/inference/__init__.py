"""The inference layer: the only part of flatscope that imports Keras."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from pathlib import Path

import numpy as np

from flatscope import default_model
from flatscope.errors import ModelLoadError, one_line
from flatscope.inference import model as keras_model
from flatscope.inference.runner import CompiledModel, compile_model, configure_devices
from flatscope.layout import FlattenLayout
from flatscope.metadata import ModelDescription
from flatscope.results import DenseKernel

__all__ = ["ServedModel", "load_served_model"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded, compiled and warmed-up model with everything the core needs to know.

    ``dense_kernels`` holds, by Flatten layer name, the kernel of the Dense layer that
    reads that Flatten layer's output, for the Flatten layers that feed one.
    """

    runner: CompiledModel
    description: ModelDescription
    layouts: dict[str, FlattenLayout]
    dense_kernels: dict[str, DenseKernel] = dataclasses.field(default_factory=dict)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The model's input shape without the batch axis (always fully known)."""
        return self.description.inputs[0].shape[1:]

    @functools.cached_property  # read on every request (admission's reply estimate)
    def output_size(self) -> int:
        """Numbers the model's prediction holds per example (unknown dimensions count 1)."""
        return math.prod(d or 1 for d in self.description.outputs[0].shape[1:])


def load_served_model(
    path: Path | None,
    name: str = "",
    version: str = "1",
    max_batch_size: int = 1,
    device: str = "auto",
    threads: int = 0,
) -> ServedModel:
    """Loads, compiles and warms up a model (blocking: seconds).

    Args:
        path: A ``.keras`` or legacy ``.h5`` file, or None for the embedded default model.
        name: Name to serve it under; empty uses the model's own name.
        version: Version to report.
        max_batch_size: Largest batch a request may carry (reported in metadata).
        device: "auto" (a GPU when there is one), "cpu" or "gpu".
        threads: Threads one forward pass may use; 0 picks one fewer than the CPUs
            available (see :func:`~flatscope.inference.runner.configure_devices`).

    Raises:
        ModelLoadError: The model cannot be served.
    """
    started = time.monotonic()
    configure_devices(device, threads)
    model, source = keras_model.load(path)
    flattens = keras_model.flatten_layers(model)
    layouts = {layer.name: keras_model.layout_of(layer) for layer in flattens}
    kernels = {layer.name: keras_model.dense_after(model, layer) for layer in flattens}
    try:
        runner = compile_model(model, flattens, device, max_batch_size)
        description = dataclasses.replace(
            keras_model.describe(model, source, name, version),
            device=runner.device,
            max_batch_size=max_batch_size,
            labels=default_model.LABELS if path is None else (),
        )
        served = ServedModel(
            runner=runner,
            description=description,
            layouts=layouts,
            dense_kernels={name: k for name, k in kernels.items() if k is not None},
        )
        _warm_up(served)
    except ModelLoadError:
        raise
    except Exception as exc:  # the framework's own error types vary by backend
        text = one_line(str(exc)) or type(exc).__name__
        raise ModelLoadError(f"cannot run the model from {source}: {text}") from exc
    log.info(
        "model %s v%s from %s: input %s, Flatten layers %s; loaded and warmed up in %.1f s",
        description.name,
        version,
        source,
        description.inputs[0].shape,
        list(layouts) or "none",
        time.monotonic() - started,
    )
    return served


def _warm_up(served: ServedModel) -> None:
    # Traces both compiled graphs so that no request pays for it.
    for batch in served.runner.warmup_batch_sizes:
        zeros = np.zeros((batch, *served.example_shape), dtype=np.float32)
        served.runner.run(zeros)
        if served.layouts:
            served.runner.run(zeros, extras=True)
