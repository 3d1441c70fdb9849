"""KServe v2 / Triton messages <-> the core's requests and answers.

Replies carry every tensor in ``raw_output_contents``, whatever encoding the request used,
as Triton does: ``tritonclient``'s ``as_numpy`` reads only those.
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from flatscope.batching import BatchingConfig, BatchStatistics
from flatscope.errors import InvalidInputError
from flatscope.layout import FlattenLayout
from flatscope.metadata import ModelDescription, TensorSpec
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

FP32 = "FP32"
BYTES = "BYTES"
WORDING = Wording(
    dtype=FP32, raw="raw_input_contents", values="contents.fp32_contents", nested=False
)
CLASSIFICATION = "classification"
# A request parameter of Triton's streams: mark each stream response final (every request
# here has one response, which is its final one). perf_analyzer sends it on every call.
FINAL_RESPONSE = "triton_enable_empty_final_response"
# ModelConfig parameters that list the outputs ModelMetadata leaves out (see model_config).
EXTRA_OUTPUTS = "extra_outputs"
EXTRA_DIMS = "extra_output.{}.dims"


def infer_request(
    request: pb.ModelInferRequest,
) -> tuple[list[tuple[str, TensorPayload]], dict[str, int]]:
    """Reads a ModelInferRequest: (name, tensor) pairs, and the requested outputs, each
    with its ``classification`` class count (0: the tensor itself).

    Raises:
        InvalidInputError: A datatype other than FP32, typed contents other than
            ``fp32_contents``, a ``raw_input_contents`` count that does not match the
            inputs, or a parameter this server does not honour.
    """
    _check_parameters("the request", request.parameters, honoured=(FINAL_RESPONSE,))
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of inputs"
        )
    inputs = []
    for k, tensor in enumerate(request.inputs):
        name = tensor.name
        _check_parameters(f"input '{name}'", tensor.parameters)
        if tensor.datatype != FP32:
            raise InvalidInputError(
                f"input '{name}' has datatype '{tensor.datatype}'; the model takes {FP32} "
                "(as little-endian float32 in raw_input_contents, or contents.fp32_contents)"
            )
        values = ()
        if tensor.HasField("contents"):
            for field, _ in tensor.contents.ListFields():
                if field.name != "fp32_contents":
                    raise InvalidInputError(
                        f"input '{name}' carries contents.{field.name}; {FP32} values go "
                        "in contents.fp32_contents (or raw_input_contents)"
                    )
            values = tensor.contents.fp32_contents
        payload = TensorPayload(
            ACCEPTED_DTYPE, tensor.shape, raw[k] if raw else b"", values, WORDING
        )
        inputs.append((name, payload))
    outputs: dict[str, int] = {}
    for output in request.outputs:
        what = f"output '{output.name}'"
        _check_parameters(what, output.parameters, honoured=(CLASSIFICATION,))
        count = 0
        if CLASSIFICATION in output.parameters:
            count = _class_count(what, output.parameters[CLASSIFICATION])
        outputs.setdefault(output.name, count)
    return inputs, outputs


def infer_response(
    result: NamedResult,
    request_id: str,
    classes: dict[str, int],
    labels: dict[str, tuple[str, ...]],
) -> pb.ModelInferResponse:
    """The ModelInferResponse: the outputs in the order asked for, in ``raw_output_contents``,
    and the layout as parameters.

    Args:
        result: The core's answer.
        request_id: The request's ``id``, echoed.
        classes: Output name -> top-k count for outputs asked as classification.
        labels: Output name -> class labels, appended to its classification strings.
    """
    reply = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=request_id
    )
    for name, array in result.outputs.items():
        count = classes.get(name, 0)
        if count:
            top = classification(array, count, labels.get(name, ()))
            reply.outputs.add(name=name, datatype=BYTES, shape=top.shape)
            reply.raw_output_contents.append(_bytes_tensor(top))
            continue
        array = np.ascontiguousarray(array, dtype="<f4")
        reply.outputs.add(name=name, datatype=FP32, shape=array.shape)
        reply.raw_output_contents.append(array.tobytes())
    if result.layout is not None:
        for key, value in layout_parameters(result.layout).items():
            if isinstance(value, int):
                reply.parameters[key].int64_param = value
            else:
                reply.parameters[key].string_param = value
    return reply


def classification(array: np.ndarray, count: int, labels: tuple[str, ...] = ()) -> np.ndarray:
    """Triton's classification of each example: its ``count`` largest values, largest
    first, as "score:index[:label]" strings (the score printed as C++ ``std::to_string``).

    Args:
        array: (N, ...) scores; each example's values are taken in row-major order.
        count: How many classes per example; more than there are gives them all.
        labels: Labels by index; an index with none gets no label.

    Returns:
        An (N, k) array of bytes objects.
    """
    scores = np.asarray(array, dtype=np.float32).reshape(len(array), -1)
    k = min(count, scores.shape[1])
    # Ties keep the lower index first (Triton's sort leaves their order unspecified).
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = []
    for example, indices in zip(scores, order, strict=True):
        row = []
        for index in indices.tolist():
            text = f"{example[index]:f}:{index}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            row.append(text.encode())
        rows.append(row)
    return np.asarray(rows, dtype=object).reshape(len(array), k)


def _bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw contents: each element as a 4-byte little-endian length, then it."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel())


def layout_parameters(layout: FlattenLayout) -> dict[str, str | int]:
    """The FlattenLayout fields under their flatscope.v1 names; lists comma-separated."""
    return {
        "layer_name": layout.layer_name,
        "data_format": layout.data_format,
        "source_shape": _joined(layout.source_shape),
        "axis_names": _joined(layout.axis_names),
        "strides": _joined(layout.strides),
        "flat_size": layout.flat_size,
        "flat_order": _joined(layout.flat_order),
        "formula": layout.formula,
        "source_data_format": layout.source_data_format,
        "note": layout.note,
    }


def model_metadata(description: ModelDescription, signature: Signature) -> pb.ModelMetadataResponse:
    """The ModelMetadataResponse: the model's own input and output, as Triton lists them.

    The Flatten tensors are not listed (clients such as Triton's image_client expect the
    model's one output); ModelConfig names them, and ModelInfer returns them when asked.
    """
    return pb.ModelMetadataResponse(
        name=description.name,
        versions=[description.version],
        platform=platform(description),
        inputs=[_tensor_metadata(signature.input)],
        outputs=[_tensor_metadata(signature.prediction.spec)],
    )


def platform(description: ModelDescription) -> str:
    """The ``platform`` both ModelMetadata and ModelConfig report."""
    return f"keras_{description.backend}"


def model_config(
    description: ModelDescription, signature: Signature, batching: BatchingConfig
) -> pb.ModelConfigResponse:
    """Triton's ModelConfig of the served model.

    Dims leave out the batch axis (``max_batch_size`` > 0). The one ``output`` is the
    prediction, as in ModelMetadata; the Flatten tensors, which ModelInfer also returns
    by name, are in ``parameters``: ``extra_outputs`` lists their names (comma-separated)
    and ``extra_output.<name>.dims`` each one's dims (all FP32). Dynamic batching, when
    on, reports the longest wait for a batch (``batch_timeout``, or the adaptive
    policy's bound) as ``max_queue_delay_microseconds``; the queue bound,
    counted in examples (Triton's counts requests), is the ``max_enqueued_examples``
    parameter.
    """
    config = mc.ModelConfig(
        name=description.name,
        platform=platform(description),
        backend="flatscope",
        max_batch_size=description.max_batch_size,
        input=[
            mc.ModelInput(
                name=signature.input.name,
                data_type=mc.TYPE_FP32,
                format=_input_format(description, signature.input),
                dims=_dims(signature.input),
            )
        ],
        output=[
            mc.ModelOutput(
                name=signature.prediction.spec.name,
                data_type=mc.TYPE_FP32,
                dims=_dims(signature.prediction.spec),
            )
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                name=description.name,
                count=1,
                kind=mc.ModelInstanceGroup.KIND_GPU
                if description.device.lower().startswith("gpu")
                else mc.ModelInstanceGroup.KIND_CPU,
            )
        ],
    )
    if description.version.isdigit():
        config.version_policy.specific.versions.append(int(description.version))
    if batching.enabled:
        config.dynamic_batching.max_queue_delay_microseconds = round(batching.longest_wait * 1e6)
    extras = signature.outputs[1:]
    parameters = {
        "max_enqueued_examples": str(batching.max_enqueued_batches * batching.max_batch_size),
        EXTRA_OUTPUTS: ",".join(output.spec.name for output in extras),
    }
    for output in extras:
        parameters[EXTRA_DIMS.format(output.spec.name)] = _joined(_dims(output.spec))
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=config)


def model_statistics(description: ModelDescription, stats: BatchStatistics) -> pb.ModelStatistics:
    """Triton's ModelStatistics from the batcher's counters.

    ``compute_infer`` is the forward pass; flatscope does not time input and output
    handling apart from it, so ``compute_input`` and ``compute_output`` have its counts
    (clients such as perf_analyzer require the three to agree) and zero time.
    """
    duration = pb.StatisticDuration
    success = stats.success_count
    return pb.ModelStatistics(
        name=description.name,
        version=description.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(count=success, ns=_ns(stats.success_seconds)),
            fail=duration(count=stats.fail_count, ns=_ns(stats.fail_seconds)),
            queue=duration(count=success, ns=_ns(stats.queue_seconds)),
            compute_input=duration(count=success),
            compute_infer=duration(count=success, ns=_ns(stats.compute_seconds)),
            compute_output=duration(count=success),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=duration(count=count),
                compute_infer=duration(count=count, ns=_ns(seconds)),
                compute_output=duration(count=count),
            )
            for size, (count, seconds) in sorted(stats.passes.items())
        ],
    )


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _check_parameters(what: str, parameters, honoured: tuple[str, ...] = ()) -> None:
    """Refuses parameters this server would otherwise ignore (sequence_id, priority, ...)."""
    refused = sorted(key for key in parameters if key not in honoured)
    if refused:
        names = ", ".join(f"'{key}'" for key in refused)
        raise InvalidInputError(
            f"{what} sets parameter {names}, which this server does not honour; it reads "
            f"only an output's '{CLASSIFICATION}' (a class count) and the request's "
            f"'{FINAL_RESPONSE}'"
        )


def _class_count(what: str, parameter: pb.InferParameter) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, kind) if kind else None
    if kind not in ("int64_param", "uint64_param") or value < 1:
        raise InvalidInputError(
            f"{what} sets '{CLASSIFICATION}' to {value!r} ({kind}); expected a class "
            "count of 1 or more as int64_param"
        )
    return value


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    # FP32 whatever the model declares: the server takes and sends float32 only.
    shape = [-1 if d is None else d for d in spec.shape]
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=FP32, shape=shape)


def _dims(spec: TensorSpec) -> list[int]:
    return [-1 if d is None else d for d in spec.shape[1:]]


def _input_format(description: ModelDescription, spec: TensorSpec) -> int:
    """NHWC or NCHW for an image input (rank 3 per example), from the model's first layer
    with a data format; else FORMAT_NONE."""
    if len(spec.shape) != 4:
        return mc.ModelInput.FORMAT_NONE
    for row in description.layers:
        if row.data_format == "channels_last":
            return mc.ModelInput.FORMAT_NHWC
        if row.data_format == "channels_first":
            return mc.ModelInput.FORMAT_NCHW
    return mc.ModelInput.FORMAT_NONE


def _joined(values) -> str:
    return ",".join(str(v) for v in values)
