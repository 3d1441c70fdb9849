"""The Open Inference Protocol (KServe v2) through tritonclient's real gRPC client.

Answers must equal flatscope's own Predict and Inspect for the same inputs; bad requests
get the right status and message and the server keeps serving. Malformed requests go
through tritonclient's generated stub, since its client refuses to build them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import ServerThread, settings
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException
from waiting import settled

import flatscope
from flatscope import admission as admitting
from flatscope.batching import BatchingConfig
from flatscope.client import Client

TIMEOUT = 60.0
SERVICE = "inference.GRPCInferenceService"
FLAT_SIZE = 24 * 24 * 32
SOURCE_SHAPE = (24, 24, 32)
ALL_OUTPUTS = ["digit", "flatten", "flatten/source"]

# Field numbers of every message and field this server reads or writes, as the published
# KServe v2 grpc_predict_v2.proto numbers them. tritonclient's grpc_service.proto must agree.
PUBLISHED_FIELDS = {
    "ServerLiveResponse": {"live": 1},
    "ServerReadyResponse": {"ready": 1},
    "ModelReadyRequest": {"name": 1, "version": 2},
    "ModelReadyResponse": {"ready": 1},
    "ServerMetadataResponse": {"name": 1, "version": 2, "extensions": 3},
    "ModelMetadataRequest": {"name": 1, "version": 2},
    "ModelMetadataResponse": {"name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5},
    "ModelMetadataResponse.TensorMetadata": {"name": 1, "datatype": 2, "shape": 3},
    "ModelInferRequest": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    "ModelInferRequest.InferInputTensor": {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    "ModelInferRequest.InferRequestedOutputTensor": {"name": 1, "parameters": 2},
    "ModelInferResponse": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    "ModelInferResponse.InferOutputTensor": {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    "InferParameter": {"bool_param": 1, "int64_param": 2, "string_param": 3},
    "InferTensorContents": {"int_contents": 2, "fp32_contents": 6, "fp64_contents": 7},
}
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def images(batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 48, 48, 3), dtype=np.float32)


def infer_input(array: np.ndarray, name: str = "image") -> triton.InferInput:
    """An FP32 input that tritonclient sends as raw_input_contents."""
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def raw_request(array: np.ndarray, *outputs: str, **fields) -> pb.ModelInferRequest:
    """A ModelInferRequest with ``array`` in raw_input_contents."""
    request = pb.ModelInferRequest(model_name="digits", **fields)
    request.inputs.add(name="image", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def typed_request(array: np.ndarray, *outputs: str) -> pb.ModelInferRequest:
    """A ModelInferRequest with ``array`` in contents.fp32_contents."""
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=array.shape)
    tensor.contents.fp32_contents.extend(array.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    return request


@pytest.fixture(scope="module")
def client(default_server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(default_server.target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(default_server: ServerThread) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(default_server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def own(default_server: ServerThread) -> Iterator[Client]:
    with default_server.client() as client:
        yield client


def test_tritonclient_protos_use_the_published_kserve_field_numbers():
    for path, fields in PUBLISHED_FIELDS.items():
        outer, _, inner = path.partition(".")
        message = pb.DESCRIPTOR.message_types_by_name[outer]
        if inner:
            message = message.nested_types_by_name[inner]
        numbers = {field.name: field.number for field in message.fields}
        assert {name: numbers.get(name) for name in fields} == fields, path
    assert pb.DESCRIPTOR.package == "inference"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    for name, (request, response) in METHODS.items():
        method = service.methods_by_name[name]
        assert (method.input_type.name, method.output_type.name) == (request, response)


def test_liveness_and_readiness(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready("digits", "2")


def test_readiness_follows_the_model_warm_up():
    server = ServerThread(settings())
    try:
        client = triton.InferenceServerClient(server.target)
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert not client.is_model_ready("digits")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits", [infer_input(images())])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "still loading" in caught.value.message()
        server.load_model()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        client.close()
    finally:
        server.stop()


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata.name == "flatscope"
    assert metadata.version == flatscope.__version__
    assert list(metadata.extensions) == ["classification", "model_configuration", "statistics"]


def test_model_metadata_lists_the_models_own_input_and_output(client, own):
    metadata = client.get_model_metadata("digits", "1")
    description = own.metadata()
    assert metadata.name == description.name == "digits"
    assert list(metadata.versions) == [description.version]
    assert metadata.platform == f"keras_{description.backend}"
    shapes = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    assert shapes == {"image": ("FP32", [-1, 48, 48, 3])}
    shapes = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert shapes == {"digit": ("FP32", [-1, 10])}
    assert description.outputs[0].name == "digit"
    assert description.flatten_layers == ("flatten",)


def test_model_config_as_triton_writes_it(client, default_server):
    config = client.get_model_config("digits", "1").config
    assert (config.name, config.platform, config.backend) == (
        "digits",
        "keras_tensorflow",
        "flatscope",
    )
    assert config.max_batch_size == 256
    [image] = config.input
    assert (image.name, image.data_type, list(image.dims)) == ("image", mc.TYPE_FP32, [48, 48, 3])
    assert image.format == mc.ModelInput.FORMAT_NHWC
    [digit] = config.output
    assert (digit.name, digit.data_type, list(digit.dims)) == ("digit", mc.TYPE_FP32, [10])
    settings = default_server.settings
    delay = round(BatchingConfig(batch_timeout=settings.batch_timeout).longest_wait * 1e6)
    assert config.dynamic_batching.max_queue_delay_microseconds == delay
    assert list(config.version_policy.specific.versions) == [1]
    [group] = config.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_CPU)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {
        "extra_outputs": "flatten,flatten/source",
        "extra_output.flatten.dims": str(FLAT_SIZE),
        "extra_output.flatten/source.dims": "24,24,32",
        "max_enqueued_examples": str(settings.max_enqueued_batches * 256),
    }


def test_infer_raw_returns_the_prediction_only_and_equals_predict(client, own):
    array = images(3, seed=1)
    result = client.infer("digits", [infer_input(array)], request_id="req-7")
    response = result.get_response()
    assert [output.name for output in response.outputs] == ["digit"]
    assert response.id == "req-7"
    assert (response.model_name, response.model_version) == ("digits", "1")
    assert len(response.raw_output_contents) == 1
    assert dict(response.parameters) == {}
    np.testing.assert_array_equal(result.as_numpy("digit"), own.predict(array).outputs)


def test_infer_requested_flatten_tensors_equal_inspect(client, own):
    array = images(2, seed=2)
    requested = [triton.InferRequestedOutput(name) for name in ALL_OUTPUTS]
    result = client.infer("digits", [infer_input(array)], outputs=requested)
    seen = own.inspect(array, include_source=True)
    np.testing.assert_array_equal(result.as_numpy("digit"), seen.outputs)
    np.testing.assert_array_equal(result.as_numpy("flatten"), seen.flattened)
    np.testing.assert_array_equal(result.as_numpy("flatten/source"), seen.source)
    assert result.as_numpy("flatten").shape == (2, FLAT_SIZE)
    assert result.as_numpy("flatten/source").shape == (2, *SOURCE_SHAPE)
    parameters = result.get_response().parameters
    layout = seen.layout
    assert parameters["layer_name"].string_param == "flatten"
    assert parameters["data_format"].string_param == layout.data_format == "channels_last"
    assert parameters["source_shape"].string_param == "24,24,32"
    assert parameters["axis_names"].string_param == "height,width,channels"
    assert parameters["strides"].string_param == "768,32,1"
    assert parameters["flat_order"].string_param == "height,width,channels"
    assert parameters["flat_size"].int64_param == FLAT_SIZE
    assert parameters["formula"].string_param == layout.formula == "flat = h*768 + w*32 + c"
    assert parameters["source_data_format"].string_param == "channels_last"
    strides = tuple(int(s) for s in parameters["strides"].string_param.split(","))
    assert strides == layout.strides


def test_infer_only_the_flatten_output_in_the_order_asked(client, own):
    array = images(1, seed=3)
    requested = [triton.InferRequestedOutput(n) for n in ("flatten", "digit", "flatten")]
    result = client.infer("digits", [infer_input(array)], outputs=requested)
    assert [output.name for output in result.get_response().outputs] == ["flatten", "digit"]
    np.testing.assert_array_equal(result.as_numpy("flatten"), own.inspect(array).flattened)


def test_typed_contents_get_raw_replies_equal_to_raw(stub, client):
    # Triton replies raw whatever the request sent; tritonclient's as_numpy reads only that.
    array = images(2, seed=4)
    typed = stub.ModelInfer(typed_request(array, *ALL_OUTPUTS), timeout=TIMEOUT)
    raw = stub.ModelInfer(raw_request(array, *ALL_OUTPUTS), timeout=TIMEOUT)
    assert len(typed.raw_output_contents) == len(raw.raw_output_contents) == 3
    for k, (t, r) in enumerate(zip(typed.outputs, raw.outputs, strict=True)):
        assert t.name == r.name == ALL_OUTPUTS[k]
        assert list(t.shape) == list(r.shape)
        assert t.datatype == r.datatype == "FP32"
        assert not t.HasField("contents")
        assert typed.raw_output_contents[k] == raw.raw_output_contents[k]
    result = triton.InferResult(typed)
    assert result.as_numpy("digit").shape == (2, 10)


def test_unimplemented_triton_methods_are_unimplemented(stub):
    calls = [
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="digits")),
        (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
        (stub.TraceSetting, pb.TraceSettingRequest()),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_describes_the_service(default_server):
    with grpc.insecure_channel(default_server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE in set(database.get_services())
        service = DescriptorPool(database).FindServiceByName(SERVICE)
        assert "ModelInfer" in service.methods_by_name


def test_requests_through_each_api_share_one_batcher_and_the_metrics(default_server, client):
    registry = default_server.registry

    def sample(name: str, **labels) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    handled = {"grpc_method": "ModelInfer", "grpc_type": "unary", "grpc_code": "OK"}
    before = (
        sample("grpc_server_handled_total", grpc_service=SERVICE, **handled),
        sample("flatscope_batch_size_count", model="digits"),
    )
    client.infer("digits", [infer_input(images())])
    after = settled(
        lambda: (
            sample("grpc_server_handled_total", grpc_service=SERVICE, **handled),
            sample("flatscope_batch_size_count", model="digits"),
        ),
        (before[0] + 1, before[1] + 1),
    )
    assert after == (before[0] + 1, before[1] + 1)


ONE = (1, 48, 48, 3)
ONE_BYTES = 48 * 48 * 3 * 4
NAN = images()
NAN[0, 1, 2, 0] = np.nan


def request_with(mutate) -> pb.ModelInferRequest:
    request = raw_request(images())
    mutate(request)
    return request


def _typed_as(datatype: str, field: str, values):
    def mutate(request):
        request.ClearField("raw_input_contents")
        request.inputs[0].datatype = datatype
        getattr(request.inputs[0].contents, field).extend(values)

    return mutate


def _classification_twice(request):
    request.outputs.add(name="digit").parameters["classification"].int64_param = 3
    request.outputs.add(name="digit")


def _set(name=None, datatype=None, shape=None, raw=None, outputs=(), **request_fields):
    """Changes the one input's ``name``, ``datatype``, ``shape``, the ``raw`` contents,
    adds requested ``outputs``, and sets request fields."""

    def mutate(request):
        tensor = request.inputs[0]
        if name is not None:
            tensor.name = name
        if datatype is not None:
            tensor.datatype = datatype
        if shape is not None:
            tensor.ClearField("shape")
            tensor.shape.extend(shape)
        if raw is not None:
            request.ClearField("raw_input_contents")
            request.raw_input_contents.extend(raw)
        for output in outputs:
            request.outputs.add(name=output)
        for key, value in request_fields.items():
            setattr(request, key, value)

    return mutate


def _both(request):
    request.inputs[0].contents.fp32_contents.extend([0.0] * (ONE_BYTES // 4))


def _neither(request):
    request.ClearField("raw_input_contents")


def _two_inputs(request):
    request.inputs.add(name="other", datatype="FP32", shape=ONE)
    request.raw_input_contents.append(bytes(ONE_BYTES))


def _no_inputs(request):
    request.ClearField("inputs")
    request.ClearField("raw_input_contents")


def _classification(value):
    def mutate(request):
        request.outputs.add(name="digit").parameters["classification"].int64_param = value

    return mutate


def _request_parameter(name, **value):
    def mutate(request):
        request.parameters[name].MergeFrom(pb.InferParameter(**value))

    return mutate


def _shared_memory(request):
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"


INVALID = [
    pytest.param(
        _set(datatype="FP64", raw=[bytes(ONE_BYTES * 2)]),
        ["input 'image' has datatype 'FP64'", "FP32", "raw_input_contents"],
        id="fp64",
    ),
    pytest.param(
        _typed_as("INT32", "int_contents", [0] * (ONE_BYTES // 4)),
        ["datatype 'INT32'", "takes FP32"],
        id="int32-contents",
    ),
    pytest.param(
        _typed_as("FP32", "int_contents", [0] * (ONE_BYTES // 4)),
        ["contents.int_contents", "contents.fp32_contents"],
        id="fp32-in-int-contents",
    ),
    pytest.param(_set(datatype=""), ["datatype ''", "FP32"], id="no-datatype"),
    pytest.param(
        _set(shape=[1, 28, 28, 3], raw=[bytes(28 * 28 * 3 * 4)]),
        ["input 'image' shape (1, 28, 28, 3) does not match (batch, 48, 48, 3)"],
        id="wrong-shape",
    ),
    pytest.param(
        _set(shape=[48, 48, 3]),
        ["input 'image' shape (48, 48, 3) has rank 3", "(batch, 48, 48, 3)"],
        id="no-batch-axis",
    ),
    pytest.param(
        _set(raw=[bytes(ONE_BYTES - 4)]),
        [
            f"input 'image': raw_input_contents has {ONE_BYTES - 4} bytes",
            f"= {ONE_BYTES} bytes",
        ],
        id="raw-too-short",
    ),
    pytest.param(
        _typed_as("FP32", "fp32_contents", [0.5] * 10),
        ["input 'image': contents.fp32_contents has 10 values", "needs 6912"],
        id="contents-wrong-count",
    ),
    pytest.param(_both, ["both raw_input_contents and contents.fp32_contents"], id="both"),
    pytest.param(_neither, ["neither raw_input_contents nor contents.fp32_contents"], id="neither"),
    pytest.param(
        _set(raw=[bytes(ONE_BYTES), bytes(ONE_BYTES)]),
        ["raw_input_contents has 2 entries for 1 inputs"],
        id="raw-count",
    ),
    pytest.param(
        _set(name="pixels"),
        ["input 'pixels' is not an input of model 'digits'", "'image' of shape (batch, 48"],
        id="unknown-input",
    ),
    pytest.param(_two_inputs, ["takes one input, 'image'", "got 2"], id="two-inputs"),
    pytest.param(_no_inputs, ["takes one input, 'image'", "got 0"], id="no-inputs"),
    pytest.param(
        lambda r: r.raw_input_contents.__setitem__(0, NAN.tobytes()),
        ["NaN or infinite", "example 0"],
        id="nan",
    ),
    pytest.param(
        _set(outputs=["probabilities"]),
        ["output 'probabilities' is not an output", "'digit', 'flatten', 'flatten/source'"],
        id="unknown-output",
    ),
    pytest.param(_classification(0), ["'classification' to 0", "1 or more"], id="class-count"),
    pytest.param(
        _classification_twice,
        ["output 'digit' is requested twice, with 'classification' 3 and with no 'class"],
        id="output-twice-differently",
    ),
    pytest.param(
        _shared_memory,
        ["input 'image' sets parameter 'shared_memory_region'", "does not honour"],
        id="shared-memory",
    ),
    pytest.param(
        _request_parameter("sequence_id", int64_param=7),
        ["the request sets parameter 'sequence_id'", "does not honour", "'classification'"],
        id="sequence-id",
    ),
    pytest.param(
        _request_parameter("priority", uint64_param=1),
        ["parameter 'priority'"],
        id="priority",
    ),
    pytest.param(
        _request_parameter("timeout", int64_param=1000),
        ["parameter 'timeout'"],
        id="timeout",
    ),
]


def assert_serving(stub) -> None:
    reply = stub.ModelInfer(raw_request(images()), timeout=TIMEOUT)
    assert [output.name for output in reply.outputs] == ["digit"]


def rejected(call, request, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    details = caught.value.details()
    assert caught.value.code() == code, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"


@pytest.mark.parametrize(("mutate", "fragments"), INVALID)
def test_bad_requests_are_invalid_argument(stub, mutate, fragments):
    rejected(stub.ModelInfer, request_with(mutate), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_serving(stub)


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        pytest.param(_set(model_name="no-such-model"), ["'no-such-model'", "'digits'"], id="model"),
        pytest.param(_set(model_version="2"), ["no version '2'", "version '1'"], id="version"),
    ],
)
def test_unknown_model_or_version_is_not_found(stub, mutate, fragments):
    rejected(stub.ModelInfer, request_with(mutate), grpc.StatusCode.NOT_FOUND, *fragments)
    metadata = pb.ModelMetadataRequest(name="no-such-model")
    rejected(stub.ModelMetadata, metadata, grpc.StatusCode.NOT_FOUND, "'no-such-model'")
    assert_serving(stub)


def test_the_client_reports_status_and_message(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [infer_input(np.zeros((1, 28, 28, 3), np.float32))])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "(1, 28, 28, 3) does not match (batch, 48, 48, 3)" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [infer_input(images())], outputs=[triton.InferRequestedOutput("x")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'x' is not an output" in caught.value.message()
    result = client.infer("digits", [infer_input(images())])
    assert result.as_numpy("digit").shape == (1, 10)


def test_classification_is_top_k_as_triton_formats_it(client, own):
    array = images(2, seed=5)
    requested = [triton.InferRequestedOutput("digit", class_count=3)]
    result = client.infer("digits", [infer_input(array)], outputs=requested)
    [output] = result.get_response().outputs
    assert (output.datatype, list(output.shape)) == ("BYTES", [2, 3])
    scores = own.predict(array).outputs
    for row, example in zip(result.as_numpy("digit"), scores, strict=True):
        top = np.argsort(-example, kind="stable")[:3]
        fields = [item.decode().split(":") for item in row]
        assert [int(index) for _, index, _ in fields] == top.tolist()
        assert [label for *_, label in fields] == [str(k) for k in top]  # the digits
        np.testing.assert_allclose([float(score) for score, *_ in fields], example[top], atol=1e-5)


def test_classification_of_a_flatten_tensor_has_no_labels(client, own):
    array = images(1, seed=6)
    requested = [
        triton.InferRequestedOutput("flatten", class_count=2),
        triton.InferRequestedOutput("digit"),
    ]
    result = client.infer("digits", [infer_input(array)], outputs=requested)
    seen = own.inspect(array)
    flat = seen.flattened[0]
    top = np.argsort(-flat, kind="stable")[:2]
    fields = [item.decode().split(":") for item in result.as_numpy("flatten")[0]]
    assert [int(index) for _, index in fields] == top.tolist()
    np.testing.assert_allclose([float(score) for score, _ in fields], flat[top], atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("digit"), seen.outputs, atol=1e-5)


def test_stream_infer_answers_each_request_in_order(default_server, own):
    import queue

    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(default_server.target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        arrays = [images(k + 1, seed=10 + k) for k in range(4)]
        for k, array in enumerate(arrays):
            client.async_stream_infer("digits", [infer_input(array)], request_id=f"s{k}")
        bad = infer_input(np.zeros((1, 28, 28, 3), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        wanted = [triton.InferRequestedOutput("digit", class_count=1)]
        client.async_stream_infer(
            "digits", [infer_input(arrays[0])], outputs=wanted, enable_empty_final_response=True
        )
        got = [answers.get(timeout=TIMEOUT) for _ in range(6)]
    finally:
        client.stop_stream()
        client.close()
    for k, array in enumerate(arrays):
        result, error = got[k]
        assert error is None
        assert result.get_response().id == f"s{k}"
        np.testing.assert_allclose(result.as_numpy("digit"), own.predict(array).outputs, atol=1e-5)
    result, error = got[4]
    assert result is None
    assert "(1, 28, 28, 3) does not match (batch, 48, 48, 3)" in error.message()
    result, error = got[5]
    assert error is None
    best = int(own.predict(arrays[0]).classes[0])
    assert result.as_numpy("digit")[0][0].decode().split(":")[1:] == [str(best), str(best)]
    assert result.get_response().parameters["triton_final_response"].bool_param


def test_statistics_count_requests_and_passes(client):
    def stats():
        [model] = client.get_inference_statistics("digits").model_stats
        return model

    before = stats()
    client.infer("digits", [infer_input(images(3))])
    after = stats()
    assert (after.name, after.version) == ("digits", "1")
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 1
    inference, earlier = after.inference_stats, before.inference_stats
    assert inference.success.count - earlier.success.count == 1
    assert inference.queue.count == inference.compute_infer.count == inference.success.count
    assert inference.success.ns > inference.compute_infer.ns > earlier.compute_infer.ns
    assert after.last_inference >= before.last_inference > 0
    sizes = {entry.batch_size: entry.compute_infer.count for entry in after.batch_stats}
    assert sizes.get(3, 0) >= 1
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("no-such-model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index_lists_the_served_model(client):
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("digits", "1", "READY")]


def test_stream_requests_are_admitted_like_calls_and_give_their_share_back(monkeypatch):
    import queue

    # Refusals at once: no waiting for room (for which each answer written makes some).
    monkeypatch.setattr(admitting, "ROOM_PATIENCE", 0.0)
    budget = 4 * 2**20  # replies' half 2 MiB: one 16-example source reply (2.4 MB held) alone
    server = ServerThread(settings(memory_budget=budget)).load_model()
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(server.target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        wanted = [triton.InferRequestedOutput("flatten/source")]
        for k in range(8):
            client.async_stream_infer(
                "digits", [infer_input(images(16, seed=k))], outputs=wanted, request_id=f"{k}"
            )
        got = [answers.get(timeout=TIMEOUT) for _ in range(8)]
    finally:
        client.stop_stream()
        client.close()
    served = [result for result, error in got if error is None]
    refused = [error.message() for result, error in got if error is not None]
    assert served, "the first request, alone, is over the budget's half but passes"
    assert refused, "requests beside it must be refused: the stream is under the budget"
    assert all(re.search("memory.budget", message) for message in refused), refused
    assert served[0].as_numpy("flatten/source").shape == (16, *SOURCE_SHAPE)
    sample = server.registry.get_sample_value
    dropped = sample("flatscope_requests_dropped_total", {"model": "digits", "reason": "memory"})
    assert dropped == len(refused)
    assert settled(lambda: sample("flatscope_memory_budget_used_bytes"), 0) == 0
    server.stop()


def test_a_stream_that_goes_quiet_ends_after_the_idle_timeout():
    # A stream that sends no further message, or none at all, holds its connection's
    # buffers until --stream-idle-timeout; then DEADLINE_EXCEEDED, after its answers.
    import queue
    import threading

    server = ServerThread(settings(stream_idle_timeout=0.5)).load_model()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
            for sent in ([raw_request(images())], []):
                never = threading.Event()
                outgoing: queue.Queue = queue.Queue()
                for request in sent:
                    outgoing.put(request)

                def requests(outgoing=outgoing, never=never):
                    while not never.is_set():
                        try:
                            yield outgoing.get(timeout=0.1)
                        except queue.Empty:
                            continue

                call = stream(requests(), timeout=TIMEOUT)
                answers = []
                with pytest.raises(grpc.RpcError) as ended:
                    for answer in call:
                        answers.append(answer)
                never.set()
                assert [a.error_message for a in answers] == [""] * len(sent)
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no request message on this stream for 0.5 s" in ended.value.details()
                assert "--stream-idle-timeout" in ended.value.details()
        sample = server.registry.get_sample_value
        labels = {"model": "digits", "reason": "stream_idle"}
        assert settled(lambda: sample("flatscope_requests_dropped_total", labels), 2) == 2
    finally:
        server.stop()


def test_streams_cancelled_by_their_clients_are_counted_cancelled_and_log_nothing(caplog):
    # A client that sends large requests, never reads, then cancels: gRPC fails the write
    # of an answer; that is the client leaving, not a server error.
    server = ServerThread(settings()).load_model()
    labels = {
        "grpc_service": "inference.GRPCInferenceService",
        "grpc_method": "ModelStreamInfer",
        "grpc_type": "bidi_stream",
    }

    def handled(code: str) -> float:
        value = server.registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": code}
        )
        return value or 0.0

    try:
        with grpc.insecure_channel(server.target) as channel:
            stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
            for k in range(4):
                big = [raw_request(images(16, seed=k), "flatten/source") for _ in range(12)]
                call = stream(iter(big), timeout=TIMEOUT)
                time.sleep(0.5)  # answers pile up unread
                call.cancel()
        assert settled(lambda: handled("CANCELLED"), 4) == 4
        assert handled("UNKNOWN") == 0 and handled("OK") == 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage()[:200] for r in errors]
    finally:
        server.stop()


def test_binary_data_size_is_read_as_kserve_client_sends_it(stub):
    """kserve's InferenceGRPCClient sets an input's binary_data_size with raw contents."""
    array = images()
    request = raw_request(array)
    size = len(request.raw_input_contents[0])
    request.inputs[0].parameters["binary_data_size"].int64_param = size
    plain = stub.ModelInfer(raw_request(array), timeout=TIMEOUT)
    assert stub.ModelInfer(request, timeout=TIMEOUT).raw_output_contents == (
        plain.raw_output_contents
    )
    request.inputs[0].parameters["binary_data_size"].int64_param = size - 4
    rejected(
        stub.ModelInfer,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"'binary_data_size' to {size - 4}",
        f"{size} bytes of raw contents",
    )
    typed = typed_request(array)
    typed.inputs[0].parameters["binary_data_size"].int64_param = size
    rejected(stub.ModelInfer, typed, grpc.StatusCode.INVALID_ARGUMENT, "no raw_input_contents")
    request.inputs[0].parameters["binary_data_size"].string_param = str(size)
    rejected(
        stub.ModelInfer,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"'binary_data_size' to '{size}' (string_param); expected an int64_param",
    )
    assert_serving(stub)
