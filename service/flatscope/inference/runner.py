"""Compiled forward passes, per Keras backend: predictions alone, or with the Flatten tensors.

Never ``model.predict``: TensorFlow runs traced concrete graphs, JAX runs ``jax.jit`` of
the model's stateless call, PyTorch a no-grad call. Each returns the predictions and,
when asked, what enters and leaves every Flatten layer, from one pass.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from flatscope.errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


class CompiledModel:
    """A Keras model behind compiled calls.

    Attributes:
        flatten_layers: Names of the Flatten layers whose tensors ``run`` returns.
        device: Where the passes run, "cpu" or "gpu:0".
        warmup_batch_sizes: Batch sizes to run once before serving, so that no
            request pays for a trace or a compile.
        gpu_memory_bytes: Reads the framework's GPU memory in use; None on the CPU.
    """

    flatten_layers: list[str]
    device: str
    warmup_batch_sizes: tuple[int, ...]
    gpu_memory_bytes: Callable[[], int] | None = None

    def run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        """Runs one pass over a batch.

        Returns:
            ``[outputs]``, or with ``extras``
            ``[outputs, source_0, flattened_0, source_1, flattened_1, ...]`` for the
            Flatten layers in the order of ``flatten_layers``.
        """
        raise NotImplementedError


def compile_model(
    model: keras.Model,
    flatten_layers: Sequence[keras.layers.Layer],
    device: str = "auto",
    max_batch_size: int = 1,
) -> CompiledModel:
    """Compiles ``model`` for the Keras backend in use.

    Args:
        model: A loaded single-input, single-output model.
        flatten_layers: The Flatten layers ``run`` can report.
        device: "auto" (a GPU when there is one), "cpu" or "gpu".
        max_batch_size: Largest batch ``run`` will get.

    Raises:
        ModelLoadError: The backend is not supported, or the device is not there.
    """
    backend = keras.backend.backend()
    probe_outputs = [model.outputs[0]]
    for layer in flatten_layers:
        probe_outputs += [layer.input, layer.output]
    probe = keras.Model(model.inputs[0], probe_outputs, name=f"{model.name}_probe")
    names = [layer.name for layer in flatten_layers]
    if backend == "tensorflow":
        return _TensorFlowModel(model, probe, names, device)
    if backend == "jax":
        return _JaxModel(model, probe, names, device, max_batch_size)
    if backend == "torch":
        return _TorchModel(model, probe, names, device)
    raise ModelLoadError(
        f"Keras backend {backend!r} has no compiled inference path in flatscope; "
        "set KERAS_BACKEND to tensorflow, jax or torch"
    )


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota.

    A container limited to 2 CPUs on a 64-core host sees 64 in ``os.cpu_count()``;
    a fractional quota rounds up.

    Args:
        cpu_max: The cgroup v2 ``cpu.max`` file ("QUOTA PERIOD" or "max PERIOD").
    """
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one we cannot read
        pass
    return count


def model_threads(threads: int = 0) -> int:
    """``threads``, or for 0 one fewer than :func:`available_cpus` (at least 1).

    The event loop needs a core of its own under load: a forward pass that takes every
    core stalls the gRPC work that feeds it.
    """
    return threads if threads > 0 else max(1, available_cpus() - 1)


def configure_devices(device: str = "auto", threads: int = 0) -> None:
    """Prepares the backend before first use: threads, GPU memory on demand, the device.

    TensorFlow and torch use :func:`model_threads` threads per pass; TensorFlow grows
    GPU memory as needed instead of taking the whole card, and JAX does not
    preallocate; ``device="cpu"`` hides GPUs from TensorFlow.
    """
    if device not in DEVICES:
        raise ModelLoadError(f"device {device!r} is not one of {DEVICES}")
    backend = keras.backend.backend()
    count = model_threads(threads)
    if backend in ("tensorflow", "torch"):
        log.info("%s: %d thread(s) per forward pass", backend, count)
    if backend == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        return
    if backend == "torch":
        import torch

        torch.set_num_threads(count)
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # only settable before torch's first parallel work
            log.debug("torch inter-op threads already fixed")
        return
    if backend != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:  # TensorFlow already initialised (a second model in one process)
        log.debug("TensorFlow threads already configured")
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if device == "cpu":
            tf.config.set_visible_devices([], "GPU")
        for gpu in gpus if device != "cpu" else ():
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised (e.g. a second model in one process)
        log.debug("TensorFlow devices already configured")


class _TensorFlowModel(CompiledModel):
    def __init__(self, model: keras.Model, probe: keras.Model, names: list[str], device: str):
        import tensorflow as tf

        self.flatten_layers = names
        gpus = tf.config.list_logical_devices("GPU")
        if device == "gpu" and not gpus:
            raise ModelLoadError("--device gpu, but TensorFlow sees no GPU")
        self.device = "gpu:0" if gpus else "cpu"
        if device == "auto" and not gpus:
            # The CLI drops TensorFlow's own line on why (the CUDA probe's) from a healthy start.
            log.info("tensorflow: no GPU visible; --log-level debug shows TensorFlow's probe")
        # One trace serves every batch size: the batch axis stays unknown.
        self.warmup_batch_sizes = (1, 2)
        spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)]

        def trace(graph: keras.Model):
            # Calling the concrete graph skips tf.function's argument binding (~0.4 ms).
            return tf.function(
                lambda x: graph(x, training=False), input_signature=spec
            ).get_concrete_function()

        self._to_tensor = tf.convert_to_tensor
        self._session: _FrozenSession | None = None
        if gpus:
            self.gpu_memory_bytes = lambda: tf.config.experimental.get_memory_info("GPU:0")[
                "current"
            ]
        else:
            self._session = _FrozenSession.build(trace(probe), model)
        if self._session is None:
            # Traced after any freezing: freezing replaces, in the eager context, the
            # functions a graph calls (a loop's body, a branch) with frozen copies under
            # the same names, which a graph traced before it would pick up. A CPU start
            # that freezes traces the probe once, and these two not at all.
            self._predict = trace(model)
            self._inspect = trace(probe)
        log.info(
            "tensorflow: passes run %s",
            "as a frozen graph in a session" if self._session else "as eager concrete functions",
        )

    def run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        if self._session is not None:
            return self._session.run(inputs, extras)
        return self._eager_run(inputs, extras)

    def _eager_run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        tensor = self._to_tensor(inputs)
        if not extras:
            return [self._predict(tensor).numpy()]
        return [output.numpy() for output in self._inspect(tensor)]


class _FrozenSession:
    """A model's probe graph, weights folded in as constants, run by a TF1 session.

    Calling a concrete function eagerly costs ~0.3 ms of Python and C++ dispatch per
    pass on this kind of machine, while a session's callable feeds numpy and returns
    numpy in one C++ call that releases the GIL (TF Serving runs sessions too): the
    difference is a quarter of a small model's batch-1 pass. Used on the CPU, for models
    whose weights fit :data:`FROZEN_WEIGHTS_LIMIT` (constants are held twice more), and
    only when the frozen graph gives the eager graph's floats on probe batches, up to
    rounding (:data:`FROZEN_TOLERANCE`; most models match bit for bit).
    """

    def __init__(self, predict: Callable, inspect: Callable):
        self._predict = predict
        self._inspect = inspect

    @classmethod
    def build(cls, function, model: keras.Model) -> _FrozenSession | None:
        """A session running ``function`` (the traced probe), or None where it cannot.

        The session must give the floats ``function`` gives, run eagerly before it is
        frozen, on probe batches, up to rounding (:data:`FROZEN_TOLERANCE`).
        """
        import tensorflow as tf

        weight_bytes = sum(
            int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights
        )
        if weight_bytes > FROZEN_WEIGHTS_LIMIT:
            log.info("tensorflow: %d MiB of weights, not frozen", weight_bytes >> 20)
            return None
        rng = np.random.default_rng(0)
        example_shape = tuple(function.inputs[0].shape[1:])
        probes = [  # kernels may differ by batch size
            rng.standard_normal((batch, *example_shape), dtype=np.float32) for batch in (1, 3)
        ]
        expected = [[t.numpy() for t in function(tf.convert_to_tensor(p))] for p in probes]
        try:
            from tensorflow.core.protobuf import rewriter_config_pb2
            from tensorflow.python.framework.convert_to_constants import (
                convert_variables_to_constants_v2,
            )

            frozen = convert_variables_to_constants_v2(function)
            graph = tf.Graph()
            with graph.as_default():
                tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
            feed = [graph.get_tensor_by_name(frozen.inputs[0].name)]
            fetches = [graph.get_tensor_by_name(output.name) for output in frozen.outputs]
            # Ops run on the calling thread (a negative inter-op count), one after the
            # other as the layers of a CNN must: handing each op to TensorFlow's inter-op
            # pool costs a wake-up of its thread per op and a spin before it sleeps again,
            # which on a busy machine waits for a core (batch 1: 1.75 ms a pass against
            # 0.72 ms inline, and 15 % more CPU). Each op still uses the intra-op threads.
            config = tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                inter_op_parallelism_threads=-1,
                device_count={"GPU": 0},
            )
            # With the weights constant, Grappler would fold a batch norm into the
            # convolution's weights and fuse MatMul with its bias: the same maths in
            # other floats than Keras computes (and no faster here). Those two stay off,
            # so Inspect shows what Keras' own call gives.
            rewrite = config.graph_options.rewrite_options
            rewrite.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
            rewrite.remapping = rewriter_config_pb2.RewriterConfig.OFF
            session = tf.compat.v1.Session(graph=graph, config=config)
            built = cls(
                _session_callable(session, feed, fetches[:1]),
                _session_callable(session, feed, fetches),
            )
            worst = 0.0
            for probe, outputs in zip(probes, expected, strict=True):
                for extras in (False, True):
                    want = outputs if extras else outputs[:1]
                    got = built.run(probe, extras)
                    if len(got) != len(want):
                        session.close()
                        raise ValueError("it returns other tensors than the eager graph")
                    for a, b in zip(got, want, strict=True):
                        error = rounding_error(a, b)
                        if not error <= FROZEN_TOLERANCE:
                            session.close()
                            raise ValueError(
                                f"its results differ from the eager graph's by {error:.2g} "
                                f"of their largest magnitude, over {FROZEN_TOLERANCE:g}"
                            )
                        worst = max(worst, error)
        except Exception as exc:  # any model the freezer or a session cannot take
            log.warning("tensorflow: the frozen graph will not do (%s); running eagerly", exc)
            return None
        if worst:
            log.info(
                "tensorflow: the frozen graph's floats differ from the eager graph's by up to "
                "%.2g of their largest magnitude (oneDNN picked another kernel)",
                worst,
            )
        return built

    def run(self, inputs: np.ndarray, extras: bool) -> list[np.ndarray]:
        return self._inspect(inputs) if extras else self._predict(inputs)


def _session_callable(session, feed: list, fetches: list) -> Callable:
    """A C++ callable of ``session`` that feeds numpy and returns a list of numpy arrays.

    ``Session.make_callable`` with a ``feed_list`` runs every call through
    ``Session.run``'s Python (feed and fetch mapping, graph checks: ~200 us of the
    caller's CPU a call here); ``_make_callable_from_options`` builds the callable in
    C++ once (Keras 2's backend ran sessions this way), and a call is one C++ call
    (batch 1 of the default model: ~0.1 ms of CPU against ~0.3 ms).
    """
    from tensorflow.core.protobuf import config_pb2

    make = getattr(session, "_make_callable_from_options", None)
    if make is None:  # a TensorFlow without it: the slower public way
        return session.make_callable(fetches, feed_list=feed)
    return make(
        config_pb2.CallableOptions(
            feed=[tensor.name for tensor in feed], fetch=[tensor.name for tensor in fetches]
        )
    )


# Above this, the weights' constant copies in a frozen graph cost more than its speed.
FROZEN_WEIGHTS_LIMIT = 64 << 20

# How far the frozen graph's floats may stray from the eager graph's, as a fraction of
# the largest magnitude in each tensor (float32 resolves 1.2e-7): about eight units in
# the last place, rounding and nothing more. oneDNN chooses its convolution kernel per
# shape and weight layout: a session reorders constant weights into a blocked layout
# where the eager function reads them plain, and for some shapes (one input channel at
# batch 1, say) that sums the products in another order.
FROZEN_TOLERANCE = 1e-6


def rounding_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference between two arrays, over ``expected``'s largest finite magnitude.

    0.0 for equal arrays (NaN where ``expected`` has NaN counts as equal); inf where
    shapes or the positions of non-finite values differ.
    """
    if got.shape != expected.shape:
        return math.inf
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(
        got[~finite], expected[~finite], equal_nan=True
    ):
        return math.inf
    if not finite.any():
        return 0.0
    difference = float(np.max(np.abs(got[finite] - expected[finite])))
    if difference == 0.0:
        return 0.0
    scale = float(np.max(np.abs(expected[finite])))
    return difference / scale if scale else math.inf


class _JaxModel(CompiledModel):
    """``jax.jit`` of the stateless call; batches are padded to a power of two.

    jit compiles once per input shape, so batches are padded up to the next allowed
    size (as TF Serving's ``allowed_batch_sizes``) and each size is compiled at warm-up.
    """

    def __init__(
        self,
        model: keras.Model,
        probe: keras.Model,
        names: list[str],
        device: str,
        max_batch_size: int,
    ):
        import jax

        self.flatten_layers = names
        try:
            target = jax.devices("gpu")[0] if device == "gpu" else jax.devices()[0]
            if device == "cpu":
                target = jax.devices("cpu")[0]
        except RuntimeError as exc:
            raise ModelLoadError(f"--device {device}: JAX has no such device ({exc})") from exc
        self._target = target
        self.device = "cpu" if target.platform == "cpu" else f"gpu:{target.id}"
        sizes = {1 << k for k in range(max_batch_size.bit_length()) if 1 << k <= max_batch_size}
        self.warmup_batch_sizes = tuple(sorted(sizes | {max_batch_size}))
        self._predict = self._compile(model)
        self._inspect = self._compile(probe)
        if target.platform != "cpu":
            self.gpu_memory_bytes = lambda: int(target.memory_stats().get("bytes_in_use", 0))

    def _compile(self, graph: keras.Model):
        import jax

        trainable = jax.device_put([v.value for v in graph.trainable_variables], self._target)
        frozen = jax.device_put([v.value for v in graph.non_trainable_variables], self._target)

        def forward(trainable, frozen, x):
            outputs, _ = graph.stateless_call(trainable, frozen, x, training=False)
            return outputs

        compiled = jax.jit(forward)
        return lambda x: compiled(trainable, frozen, x)

    def run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        import jax

        count = len(inputs)
        size = next((s for s in self.warmup_batch_sizes if s >= count), count)
        if size != count:
            padding = np.zeros((size - count, *inputs.shape[1:]), dtype=inputs.dtype)
            inputs = np.concatenate([inputs, padding])
        x = jax.device_put(inputs, self._target)
        outputs = self._inspect(x) if extras else [self._predict(x)]
        return [np.asarray(output)[:count] for output in outputs]


class _TorchModel(CompiledModel):
    """A no-grad call; Keras' torch backend has put the weights on its device already."""

    def __init__(self, model: keras.Model, probe: keras.Model, names: list[str], device: str):
        import torch

        self.flatten_layers = names
        placed = str(model.weights[0].value.device) if model.weights else "cpu"
        on_gpu = placed.startswith("cuda")
        if device == "gpu" and not on_gpu:
            raise ModelLoadError("--device gpu, but Keras' torch backend put the model on the CPU")
        if device == "cpu" and on_gpu:
            raise ModelLoadError(
                "--device cpu with the torch backend: set KERAS_TORCH_DEVICE=cpu, which Keras "
                "reads when it is imported"
            )
        self.device = "gpu:0" if on_gpu else "cpu"
        self.warmup_batch_sizes = (1, 2)
        self._torch = torch
        self._placed = placed
        self._model = model
        self._probe = probe
        if on_gpu:
            self.gpu_memory_bytes = lambda: int(torch.cuda.memory_allocated())

    def run(self, inputs: np.ndarray, extras: bool = False) -> list[np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            # A copy: request arrays are read-only views of the wire bytes.
            x = torch.tensor(inputs, device=self._placed)
            outputs = self._probe(x, training=False) if extras else [self._model(x, training=False)]
        return [output.cpu().numpy() for output in outputs]
