"""The transport-free core: validates requests, runs the model, assembles answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from flatscope import tensors
from flatscope.admission import expect_reply
from flatscope.batching import Batcher, BatchingConfig, BatchStatistics
from flatscope.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
)
from flatscope.layout import FlattenLayout
from flatscope.metrics import Metrics
from flatscope.results import DenseKernel, InspectResult, Prediction
from flatscope.settings import Settings
from flatscope.signature import NamedResult, Signature, signature_of

if TYPE_CHECKING:
    from flatscope.inference import ServedModel
    from flatscope.metadata import ModelDescription


class ModelCore:
    """Serves one model to any transport.

    Args:
        settings: Request limits and batching knobs.
        metrics: Where queue, batch and inference timings go; None measures nothing.
        executor: Where forward passes run, off the event loop; None makes a
            one-thread pool (the framework parallelises each pass itself).

    Attributes:
        batching: The batcher's knobs, from the settings.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        executor: concurrent.futures.Executor | None = None,
    ):
        self._settings = settings
        self._metrics = metrics
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flatscope-model"
        )
        self._served: ServedModel | None = None
        self._signature: Signature | None = None
        self._batcher: Batcher | None = None
        self.batching = BatchingConfig(
            enabled=settings.batching,
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            max_enqueued_batches=settings.max_enqueued_batches,
        )

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed up."""
        return self._served is not None

    async def load(self, loader: Callable[[], ServedModel]) -> ServedModel:
        """Runs the blocking ``loader`` off the event loop and starts serving its model."""
        served = await asyncio.get_running_loop().run_in_executor(self._executor, loader)
        info = served.description
        if self._metrics is not None:
            self._metrics.set_model(info.name, info.version, info.backend, info.device)
            if served.runner.gpu_memory_bytes is not None:
                self._metrics.watch_gpu_memory(served.runner.gpu_memory_bytes)
        self._batcher = batcher = Batcher(
            served.runner.run, self.batching, self._executor, self._metrics, model=info.name
        )
        if self._metrics is not None:
            # Read at scrape time: nothing to count per request.
            self._metrics.in_flight.labels(info.name).set_function(lambda: batcher.in_flight)
        self._signature = signature_of(info, served.layouts)
        self._served = served
        return served

    async def close(self) -> None:
        """Stops batching (requests still queued fail) and the executor it owns."""
        if self._batcher is not None:
            await self._batcher.close()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def model_name(self) -> str:
        """The served model's name; empty while it loads."""
        served = self._served
        return "" if served is None else served.description.name

    def is_ready(self, model_name: str = "", model_version: str = "") -> bool:
        """True when the model so named (empty: any) is served and warmed up."""
        served = self._served
        if served is None:
            return False
        info = served.description
        return model_name in ("", info.name) and model_version in ("", info.version)

    def metadata(self, model_name: str, model_version: str = "") -> ModelDescription:
        """Describes the served model.

        Raises:
            NotFoundError: ``model_name`` or ``model_version`` is not served.
            NotReadyError: The model is still loading.
        """
        return self._model(model_name, model_version).description

    def signature(self, model_name: str, model_version: str = "") -> Signature:
        """The served model's named input and outputs (see :mod:`flatscope.signature`).

        Raises:
            NotFoundError: ``model_name`` or ``model_version`` is not served.
            NotReadyError: The model is still loading.
        """
        self._model(model_name, model_version)
        assert self._signature is not None  # set with _served
        return self._signature

    def statistics(self, model_name: str, model_version: str = "") -> BatchStatistics:
        """What the served model's batcher has done since the model loaded.

        Raises:
            NotFoundError: ``model_name`` or ``model_version`` is not served.
            NotReadyError: The model is still loading.
        """
        self._model(model_name, model_version)
        assert self._batcher is not None  # set with _served
        return self._batcher.statistics()

    def layout(self, model_name: str, layer: str = "", model_version: str = "") -> FlattenLayout:
        """The layout of a Flatten layer of the served model ("": its only one).

        Raises:
            NotFoundError: ``model_name``, ``model_version`` or ``layer`` is not served.
            InvalidInputError: ``layer`` is no Flatten, or "" names none of several.
            FailedPreconditionError: ``layer`` is empty and the model has no Flatten.
            NotReadyError: The model is still loading.
        """
        return self._layout(self._model(model_name, model_version), layer)

    def coordinates(self, layout: FlattenLayout, start: int, count: int) -> np.ndarray:
        """The source index of each flat index in ``[start, start + count)``, as Inspect's.

        Raises:
            InvalidInputError: The range reaches outside [0, F) or is above the limit.
        """
        self._check_coordinates(layout, start, count)
        return layout.coordinates(start, count)

    async def predict(
        self,
        model_name: str,
        inputs: tensors.TensorPayload,
        deadline: float | None = None,
        model_version: str = "",
    ) -> Prediction:
        """Runs the model on a batch.

        Args:
            model_name: The model addressed; empty for the served one.
            inputs: The batch as sent.
            deadline: ``time.monotonic()`` after which the request is dropped unrun.
            model_version: The version addressed; empty for the served one.

        Raises:
            NotFoundError: ``model_name`` or ``model_version`` is not served.
            InvalidInputError: The batch does not fit the model or the limits.
            NotReadyError: The model is still loading.
        """
        served = self._model(model_name, model_version)
        return await self._predict(served, self._batch(served, inputs), deadline)

    async def infer(
        self,
        model_name: str,
        inputs: Sequence[tuple[str, tensors.TensorPayload]],
        outputs: Sequence[str] = (),
        model_version: str = "",
        deadline: float | None = None,
    ) -> NamedResult:
        """Runs the model once for named outputs: the prediction and the Flatten tensors.

        Only the prediction needs no Inspect pass; any Flatten tensor makes it one
        (still one forward pass, possibly shared with other requests).

        Args:
            model_name: The model addressed; empty for the served one.
            inputs: (name, tensor) pairs; the model takes exactly one, by its input name.
            outputs: Output names (see :mod:`flatscope.signature`); empty for the prediction.
            model_version: The version addressed; empty for the served one.
            deadline: ``time.monotonic()`` after which the request is dropped unrun.

        Raises:
            NotFoundError: ``model_name`` or ``model_version`` is not served.
            InvalidInputError: Inputs that are not the model's one input or do not fit,
                or an output that is not the model's.
            NotReadyError: The model is still loading.
        """
        served = self._model(model_name, model_version)
        assert self._signature is not None  # set with _served
        signature = self._signature
        payload = signature.only_input(served.description.name, inputs)
        selection = signature.select(outputs)
        batch = tensors.to_batch(
            f"input '{signature.input.name}'",
            payload,
            served.example_shape,
            self._settings.max_batch_size,
        )
        if not selection.layer:
            prediction = await self._predict(served, batch, deadline)
            arrays = {signature.prediction.spec.name: prediction.outputs}
            return NamedResult(prediction.model_name, prediction.model_version, arrays, None)
        layout = served.layouts[selection.layer]
        seen = await self._inspect(served, batch, layout, selection.include_source, 0, 0, deadline)
        arrays = {}
        for output in selection.outputs:
            if not output.layer:
                arrays[output.spec.name] = seen.outputs
            else:
                arrays[output.spec.name] = seen.source if output.source else seen.flattened
        return NamedResult(seen.model_name, seen.model_version, arrays, layout)

    async def _predict(
        self, served: ServedModel, batch: np.ndarray, deadline: float | None
    ) -> Prediction:
        expect_reply(_FLOAT * len(batch) * served.output_size)
        outputs, *_ = await self._submit(batch, False, deadline)
        return Prediction(
            model_name=served.description.name,
            model_version=served.description.version,
            outputs=outputs,
            classes=_classes(outputs),
        )

    async def inspect(
        self,
        model_name: str,
        inputs: tensors.TensorPayload,
        layer: str = "",
        include_source: bool = False,
        coordinate_start: int = 0,
        coordinate_count: int = 0,
        deadline: float | None = None,
        model_version: str = "",
        include_dense_kernel: bool = False,
    ) -> InspectResult:
        """Runs the model once and returns what its Flatten layer saw, with the layout.

        The pass may be shared with other requests; its predictions come with it.

        Raises:
            NotFoundError: ``model_name``, ``model_version`` or ``layer`` is not served.
            InvalidInputError: Bad inputs, a layer that is no Flatten, or a coordinate
                range outside [0, F) or longer than the limit.
            FailedPreconditionError: ``layer`` is empty and the model has no Flatten.
        """
        served = self._model(model_name, model_version)
        layout = self._layout(served, layer)
        self._check_coordinates(layout, coordinate_start, coordinate_count)
        # A Flatten layer that feeds no Dense layer has no kernel to return: None.
        dense = served.dense_kernels.get(layout.layer_name) if include_dense_kernel else None
        batch = self._batch(served, inputs)
        return await self._inspect(
            served,
            batch,
            layout,
            include_source,
            coordinate_start,
            coordinate_count,
            deadline,
            dense,
        )

    async def _inspect(
        self,
        served: ServedModel,
        batch: np.ndarray,
        layout: FlattenLayout,
        include_source: bool,
        coordinate_start: int,
        coordinate_count: int,
        deadline: float | None,
        dense: DenseKernel | None = None,
    ) -> InspectResult:
        per_example = served.output_size + layout.flat_size * (1 + include_source)
        kernel = dense.kernel.nbytes if dense is not None else 0
        expect_reply(_FLOAT * len(batch) * per_example + kernel)
        outputs, *tensors_at = await self._submit(batch, True, deadline)
        at = 2 * served.runner.flatten_layers.index(layout.layer_name)
        return InspectResult(
            model_name=served.description.name,
            model_version=served.description.version,
            outputs=outputs,
            classes=_classes(outputs),
            flattened=tensors_at[at + 1],
            source=tensors_at[at] if include_source else None,
            layout=layout,
            coordinate_start=coordinate_start,
            coordinates=layout.coordinates(coordinate_start, coordinate_count),
            dense=dense,
        )

    async def _submit(
        self, batch: np.ndarray, extras: bool, deadline: float | None
    ) -> list[np.ndarray]:
        assert self._batcher is not None  # set with _served
        results = await self._batcher.submit(batch, extras, deadline)
        _check_finite(batch, results[0])
        return results

    def _model(self, model_name: str, model_version: str = "") -> ServedModel:
        served = self._served
        if served is None:
            raise NotReadyError("the model is still loading; retry when health is SERVING")
        info = served.description
        if model_name and model_name != info.name:
            raise NotFoundError(
                f"model '{model_name}' is not served here; this server serves "
                f"'{info.name}' (a gRPC request may leave the model name empty)"
            )
        if model_version and model_version != info.version:
            raise NotFoundError(
                f"model '{info.name}' has no version '{model_version}'; this server serves "
                f"version '{info.version}' (or leave the version empty)"
            )
        return served

    def _batch(self, served: ServedModel, inputs: tensors.TensorPayload) -> np.ndarray:
        return tensors.to_batch(
            "inputs", inputs, served.example_shape, self._settings.max_batch_size
        )

    @staticmethod
    def _layout(served: ServedModel, layer: str) -> FlattenLayout:
        layouts = served.layouts
        if layer:
            if layer in layouts:
                return layouts[layer]
            known = [row.name for row in served.description.layers]
            if layer in known:
                kind = next(row.type for row in served.description.layers if row.name == layer)
                raise InvalidInputError(
                    f"layer '{layer}' is a {kind}, not a Flatten layer; "
                    f"Flatten layers: {sorted(layouts) or 'none'}"
                )
            raise NotFoundError(
                f"model '{served.description.name}' has no layer '{layer}'; "
                f"Flatten layers: {sorted(layouts) or 'none'}"
            )
        if not layouts:
            raise FailedPreconditionError(
                f"model '{served.description.name}' has no Flatten layer to inspect"
            )
        if len(layouts) > 1:
            raise InvalidInputError(
                f"model '{served.description.name}' has {len(layouts)} Flatten layers "
                f"{list(layouts)}; name one in 'layer'"
            )
        return next(iter(layouts.values()))

    def _check_coordinates(self, layout: FlattenLayout, start: int, count: int) -> None:
        size = layout.flat_size
        if count < 0:
            raise InvalidInputError(f"coordinate_count is {count}; expected 0 or more")
        if count == 0:
            if start != 0:
                raise InvalidInputError(
                    f"coordinate_start is {start} but coordinate_count is 0; set a count "
                    f"to list coordinates from a flat index in [0, {size})"
                )
            return
        if count > self._settings.max_coordinates:
            raise InvalidInputError(
                f"coordinate_count {count} is above this server's limit of "
                f"{self._settings.max_coordinates} rows per request; page through the "
                "range with coordinate_start, or compute rows from layout.strides"
            )
        if not 0 <= start < size or start + count > size:
            raise InvalidInputError(
                f"coordinates [{start}, {start + count}) reach outside the flat indices "
                f"[0, {size}) of layer '{layout.layer_name}'"
            )


_FLOAT = 4  # bytes per number in a reply; float32 on every wire format


def _check_finite(batch: np.ndarray, outputs: np.ndarray) -> None:
    """Refuses a prediction that is NaN or infinite: finite inputs far beyond the model's
    scale (3e38) overflow it, and an OK status with NaN scores would pass for an answer.

    Raises:
        InvalidInputError: Naming the first such example and its largest input.
    """
    finite = np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
    if finite.all():
        return
    k = int(np.argmin(finite))
    largest = float(np.abs(batch[k]).max())
    raise InvalidInputError(
        f"the model's output for example {k} is not finite (NaN or infinity): its inputs, "
        f"up to {largest:.3g} in magnitude, overflow the model; send values of the scale "
        "it was trained on"
    )


def _classes(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(outputs.shape[0], -1).argmax(axis=-1)
