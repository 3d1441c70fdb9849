"""KServe v2 / Triton messages <-> the core's requests and answers.

Replies carry every tensor in ``raw_output_contents``, whatever encoding the request used,
as Triton does: ``tritonclient``'s ``as_numpy`` reads only those.
"""

from __future__ import annotations

import numpy as np

from flatscope.batching import BatchingConfig, BatchStatistics
from flatscope.errors import InvalidInputError
from flatscope.metadata import ModelDescription, TensorSpec, version_number
from flatscope.open_inference import (
    BYTES,
    CLASSIFICATION,
    FP32,
    bytes_tensor,
    check_parameters,
    classification,
    joined,
    layout_parameters,
    platform,
    requested_twice,
    tensor_metadata,
)
from flatscope.protocols import grpc_service_pb2 as pb
from flatscope.protocols import model_config_pb2 as mc
from flatscope.signature import NamedResult, Signature
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

WORDING = Wording(
    dtype=FP32, raw="raw_input_contents", values="contents.fp32_contents", nested=False
)
# A request parameter of Triton's streams: mark each stream response final (every request
# here has one response, which is its final one). perf_analyzer sends it on every call.
FINAL_RESPONSE = "triton_enable_empty_final_response"
# An input's raw byte count, which kserve's InferenceGRPCClient sends with raw contents.
BINARY_DATA_SIZE = "binary_data_size"
# What this binding reads of the parameters (named when refusing the others).
READS = (
    f"only an output's '{CLASSIFICATION}' (a class count), an input's '{BINARY_DATA_SIZE}' "
    f"and the request's '{FINAL_RESPONSE}'"
)
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
    check_parameters("the request", request.parameters, READS, honoured=(FINAL_RESPONSE,))
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of inputs"
        )
    inputs = []
    for k, tensor in enumerate(request.inputs):
        name = tensor.name
        check_parameters(f"input '{name}'", tensor.parameters, READS, (BINARY_DATA_SIZE,))
        if BINARY_DATA_SIZE in tensor.parameters:
            _check_binary_size(name, tensor.parameters[BINARY_DATA_SIZE], raw[k] if raw else None)
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
        check_parameters(what, output.parameters, READS, honoured=(CLASSIFICATION,))
        count = 0
        if CLASSIFICATION in output.parameters:
            count = _class_count(what, output.parameters[CLASSIFICATION])
        if outputs.setdefault(output.name, count) != count:
            raise requested_twice(output.name, (outputs[output.name], count))
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
            reply.raw_output_contents.append(bytes_tensor(top))
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
    number = version_number(description.version)
    if number is not None:
        config.version_policy.specific.versions.append(number)
    if batching.enabled:
        config.dynamic_batching.max_queue_delay_microseconds = round(batching.longest_wait * 1e6)
    extras = signature.outputs[1:]
    parameters = {
        "max_enqueued_examples": str(batching.max_enqueued_batches * batching.max_batch_size),
        EXTRA_OUTPUTS: ",".join(output.spec.name for output in extras),
    }
    for output in extras:
        parameters[EXTRA_DIMS.format(output.spec.name)] = joined(_dims(output.spec))
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


def _check_binary_size(name: str, parameter: pb.InferParameter, raw: bytes | None) -> None:
    """``binary_data_size`` (KServe's client sets it with raw contents) must be their size."""
    kind = parameter.WhichOneof("parameter_choice")
    size = getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None
    if size is None:
        given = f"{getattr(parameter, kind)!r:.60} ({kind})" if kind else "nothing"
        raise InvalidInputError(
            f"input '{name}' sets '{BINARY_DATA_SIZE}' to {given}; expected an int64_param: "
            "the byte count of its raw_input_contents (or leave the parameter out)"
        )
    if raw is None or size != len(raw):
        actual = "no raw_input_contents" if raw is None else f"{len(raw)} bytes of raw contents"
        raise InvalidInputError(
            f"input '{name}' sets '{BINARY_DATA_SIZE}' to {size}, "
            f"but it has {actual}; leave the parameter out, or make it that byte count"
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
    return pb.ModelMetadataResponse.TensorMetadata(**tensor_metadata(spec))


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
