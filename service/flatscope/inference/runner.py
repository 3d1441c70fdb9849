"""Compiled forward passes: predictions alone, or predictions with the Flatten tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np

from flatscope.errors import ModelLoadError

log = logging.getLogger(__name__)


class CompiledModel:
    """A Keras model behind compiled calls, never ``model.predict``.

    :meth:`run` either runs the model alone, or a second graph over the same weights
    that also returns what enters and leaves every Flatten layer, so that one pass
    yields the prediction and the intermediate tensors.

    Args:
        model: A loaded single-input, single-output model.
        flatten_layers: The Flatten layers ``inspect`` can report.
    """

    def __init__(self, model: keras.Model, flatten_layers: list[keras.layers.Layer]):
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise ModelLoadError(
                f"Keras backend {backend!r} has no compiled inference path yet; "
                "run with KERAS_BACKEND=tensorflow"
            )
        import tensorflow as tf

        self.flatten_layers = [layer.name for layer in flatten_layers]
        probe_outputs = [model.outputs[0]]
        for layer in flatten_layers:
            probe_outputs += [layer.input, layer.output]
        probe = keras.Model(model.inputs[0], probe_outputs, name=f"{model.name}_probe")
        spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)]
        # One trace serves every batch size: the batch axis stays unknown. Calling the
        # concrete graphs skips tf.function's argument binding, ~0.4 ms per call here.
        self._predict = tf.function(
            lambda x: model(x, training=False), input_signature=spec
        ).get_concrete_function()
        self._inspect = tf.function(
            lambda x: probe(x, training=False), input_signature=spec
        ).get_concrete_function()
        self._to_tensor = tf.convert_to_tensor
        gpus = tf.config.list_logical_devices("GPU")
        self.device = "gpu:0" if gpus else "cpu"
        # Reads the framework's GPU memory in use, in bytes; None on the CPU.
        self.gpu_memory_bytes: Callable[[], int] | None = None
        if gpus:
            self.gpu_memory_bytes = lambda: tf.config.experimental.get_memory_info("GPU:0")[
                "current"
            ]

    def run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        """Runs one pass over a batch.

        Returns:
            ``[outputs]``, or with ``extras``
            ``[outputs, source_0, flattened_0, source_1, flattened_1, ...]`` for the
            Flatten layers in the order of ``flatten_layers``.
        """
        tensor = self._to_tensor(inputs)
        if not extras:
            return [self._predict(tensor).numpy()]
        return [output.numpy() for output in self._inspect(tensor)]


def configure_devices() -> None:
    """Lets TensorFlow grow GPU memory as needed instead of taking the whole card."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised (e.g. a second model in one process)
            log.debug("memory growth for %s already fixed", gpu.name)
