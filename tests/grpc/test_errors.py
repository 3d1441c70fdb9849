"""Bad requests get the right gRPC status and a message naming what was wrong and expected.

Every case sends its request with a raw stub, so that malformed messages reach the server,
then sends a good request on the same channel to show the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import keras
import numpy as np
import pytest
from conftest import ServerThread, settings

from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc, tensor_pb2

# A deadline so that a hung server fails a test instead of stalling the run.
TIMEOUT = 60.0
# The embedded default model: input (N, 48, 48, 3); its Flatten 'flatten' takes (24, 24, 32).
EXAMPLE_SHAPE = (48, 48, 3)
EXPECTED_INPUT = "(batch, 48, 48, 3)"
FLAT_SIZE = 24 * 24 * 32
METHODS = ["Predict", "Inspect"]


def images(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A batch of finite float32 inputs for the default model."""
    return np.random.default_rng(seed).random((batch, *EXAMPLE_SHAPE), dtype=np.float32)


def raw_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """``array`` as FLOAT32 little-endian raw bytes."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=array.shape, raw_data=array.tobytes())


def request(method: str, inputs: tensor_pb2.Tensor, **fields):
    """A PredictRequest or InspectRequest carrying ``inputs``."""
    message = pb.PredictRequest if method == "Predict" else pb.InspectRequest
    return message(inputs=inputs, **fields)


def rejected(call, message, code: grpc.StatusCode, *fragments: str) -> str:
    """Sends ``message``, checks it fails with ``code`` and a message holding ``fragments``.

    Returns:
        The status message.
    """
    with pytest.raises(grpc.RpcError) as caught:
        call(message, timeout=TIMEOUT)
    details = caught.value.details()
    assert caught.value.code() == code, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


def assert_serving(stub: model_service_pb2_grpc.ModelServiceStub, batch: int = 1) -> None:
    """A good Predict on the same channel still succeeds."""
    reply = stub.Predict(pb.PredictRequest(inputs=raw_tensor(images(batch))), timeout=TIMEOUT)
    assert tuple(reply.outputs.shape) == (batch, 10)
    assert len(reply.classes) == batch


def stub_of(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def stub(default_server: ServerThread) -> Iterator[model_service_pb2_grpc.ModelServiceStub]:
    with grpc.insecure_channel(default_server.target) as channel:
        yield stub_of(channel)


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerThread]:
    """The default model behind small limits.

    A batch of 3 (82,944 bytes) fits under the 100,000-byte receive limit, so it reaches
    the batch check; a batch of 8 (221,184 bytes) does not.
    """
    server = ServerThread(
        settings(max_batch_size=2, max_coordinates=8, max_receive_message_bytes=100_000)
    )
    try:
        server.load_model()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def limited_stub(limited_server: ServerThread) -> Iterator[model_service_pb2_grpc.ModelServiceStub]:
    with grpc.insecure_channel(limited_server.target) as channel:
        yield stub_of(channel)


ONE = (1, *EXAMPLE_SHAPE)
ONE_COUNT = 48 * 48 * 3
ONE_BYTES = ONE_COUNT * 4
NAN_IN_SECOND = images(2)
NAN_IN_SECOND[1, 5, 6, 2] = np.nan
INF_IN_FIRST = images(2)
INF_IN_FIRST[0, 0, 0, 0] = -np.inf

BAD_INPUTS = [
    pytest.param(
        raw_tensor(np.zeros((1, 48, 48), np.float32)),
        ["(1, 48, 48)", "rank 3", EXPECTED_INPUT],
        id="wrong-rank",
    ),
    pytest.param(
        raw_tensor(np.zeros((1, 28, 28, 3), np.float32)),
        ["(1, 28, 28, 3)", "does not match", EXPECTED_INPUT],
        id="wrong-shape",
    ),
    pytest.param(
        raw_tensor(np.zeros((1, 3, 48, 48), np.float32)),
        ["(1, 3, 48, 48)", "does not match", EXPECTED_INPUT],
        id="channels-first-shape",
    ),
    pytest.param(
        tensor_pb2.Tensor(
            dtype=tensor_pb2.FLOAT64, shape=ONE, raw_data=np.zeros(ONE, "<f8").tobytes()
        ),
        ["inputs.dtype is FLOAT64", "FLOAT32"],
        id="float64-raw-data",
    ),
    pytest.param(
        tensor_pb2.Tensor(shape=ONE, raw_data=np.zeros(ONE, "<f4").tobytes()),
        ["inputs.dtype is DATA_TYPE_UNSPECIFIED", "FLOAT32"],
        id="raw-data-without-dtype",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=ONE, float_values=[0.0] * ONE_COUNT),
        ["float_values", "dtype is FLOAT64", "set dtype to FLOAT32"],
        id="float-values-with-float64-dtype",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=99, shape=ONE, raw_data=np.zeros(ONE, "<f4").tobytes()),
        ["inputs.dtype is DataType(99)", "FLOAT32"],
        id="unknown-dtype-enum",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=ONE, raw_data=bytes(ONE_BYTES - 4)),
        [f"{ONE_BYTES - 4} bytes", str(ONE), f"= {ONE_BYTES} bytes"],
        id="raw-data-too-short",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=ONE, raw_data=bytes(ONE_BYTES + 1)),
        [f"{ONE_BYTES + 1} bytes", str(ONE), f"= {ONE_BYTES} bytes"],
        id="raw-data-too-long",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=ONE, float_values=[0.5] * 10),
        ["float_values has 10 values", str(ONE), f"needs {ONE_COUNT}"],
        id="float-values-wrong-count",
    ),
    pytest.param(
        tensor_pb2.Tensor(
            dtype=tensor_pb2.FLOAT32,
            shape=ONE,
            raw_data=np.zeros(ONE, "<f4").tobytes(),
            float_values=[0.0] * ONE_COUNT,
        ),
        ["both raw_data and float_values", "exactly one"],
        id="raw-data-and-float-values",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=ONE),
        ["neither raw_data nor float_values", f"{ONE_COUNT} elements", str(ONE)],
        id="no-data",
    ),
    pytest.param(
        tensor_pb2.Tensor(),
        ["inputs is not set", "FLOAT32", "(batch, 48, 48, 3)"],
        id="inputs-unset",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=(-1, *EXAMPLE_SHAPE)),
        ["(-1, 48, 48, 3)", "negative dimension", "expected (batch, 48, 48, 3)"],
        id="negative-dimension",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=(0, *EXAMPLE_SHAPE)),
        ["empty batch", "at least one example"],
        id="empty-batch",
    ),
    pytest.param(
        raw_tensor(NAN_IN_SECOND),
        ["NaN or infinite", "example 1", "finite"],
        id="nan",
    ),
    pytest.param(
        raw_tensor(INF_IN_FIRST),
        ["NaN or infinite", "example 0", "finite"],
        id="inf",
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("inputs", "fragments"), BAD_INPUTS)
def test_bad_inputs_are_invalid_argument(stub, method, inputs, fragments):
    call = getattr(stub, method)
    rejected(call, request(method, inputs), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_serving(stub)


# Shapes a hostile or buggy client may declare. The shape is checked before any data, so
# none of them allocates anything, and the message abbreviates what it quotes.
HOSTILE_SHAPES = [
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[1] * 70, raw_data=bytes(4)),
        ["rank 70", "... 70 axes)", EXPECTED_INPUT],
        id="70-axes",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[0, 2**62, 2**62, 3]),
        [f"(0, {2**62}, {2**62}, 3)", "does not match", EXPECTED_INPUT],
        id="huge-example-shape",
    ),
    pytest.param(
        tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2**40, *EXAMPLE_SHAPE]),
        [f"batch of {2**40}", "at most 256"],
        id="huge-batch",
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("inputs", "fragments"), HOSTILE_SHAPES)
def test_hostile_shapes_are_invalid_argument_with_a_short_message(stub, method, inputs, fragments):
    call = getattr(stub, method)
    details = rejected(call, request(method, inputs), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert len(details) < 300, details
    assert_serving(stub)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_output_encoding_is_invalid_argument(stub, method):
    rejected(
        getattr(stub, method),
        request(method, raw_tensor(images()), output_encoding=7),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output_encoding 7",
        "TENSOR_ENCODING_RAW",
        "TENSOR_ENCODING_TYPED",
    )
    assert_serving(stub)


@pytest.mark.parametrize("method", METHODS)
def test_batch_above_max_batch_size_is_invalid_argument(limited_stub, method):
    call = getattr(limited_stub, method)
    rejected(
        call,
        request(method, raw_tensor(images(3))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch of 3",
        "at most 2",
    )
    assert_serving(limited_stub, batch=2)
    metadata = limited_stub.GetModelMetadata(pb.GetModelMetadataRequest(), timeout=TIMEOUT)
    assert metadata.max_batch_size == 2


@pytest.mark.parametrize("method", METHODS)
def test_request_above_max_receive_message_bytes_is_resource_exhausted(limited_stub, method):
    call = getattr(limited_stub, method)
    rejected(
        call,
        request(method, raw_tensor(images(8))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "100000",
    )
    assert_serving(limited_stub)


@pytest.mark.parametrize(
    ("start", "count", "fragments"),
    [
        pytest.param(-1, 1, ["[-1, 0)", f"[0, {FLAT_SIZE})", "'flatten'"], id="start-negative"),
        pytest.param(
            FLAT_SIZE, 1, [f"[{FLAT_SIZE}, {FLAT_SIZE + 1})", f"[0, {FLAT_SIZE})"], id="start-at-F"
        ),
        pytest.param(
            FLAT_SIZE - 1,
            2,
            [f"[{FLAT_SIZE - 1}, {FLAT_SIZE + 1})", f"[0, {FLAT_SIZE})"],
            id="end-past-F",
        ),
        pytest.param(0, -1, ["coordinate_count is -1", "0 or more"], id="count-negative"),
        pytest.param(
            5,
            0,
            ["coordinate_start is 5", "coordinate_count is 0", f"[0, {FLAT_SIZE})"],
            id="start-without-count",
        ),
    ],
)
def test_coordinates_outside_the_flat_range_are_invalid_argument(stub, start, count, fragments):
    message = request(
        "Inspect", raw_tensor(images()), coordinate_start=start, coordinate_count=count
    )
    rejected(stub.Inspect, message, grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_serving(stub)


def test_no_coordinates_from_the_start_lists_none(stub):
    message = request("Inspect", raw_tensor(images()), coordinate_start=0, coordinate_count=0)
    reply = stub.Inspect(message, timeout=TIMEOUT)
    assert reply.layout.flat_size == FLAT_SIZE
    assert list(reply.layout.coordinates) == []


def test_coordinates_up_to_the_last_flat_index_are_listed(stub):
    message = request(
        "Inspect", raw_tensor(images()), coordinate_start=FLAT_SIZE - 2, coordinate_count=2
    )
    reply = stub.Inspect(message, timeout=TIMEOUT)
    assert reply.layout.flat_size == FLAT_SIZE
    assert [c.flat_index for c in reply.layout.coordinates] == [FLAT_SIZE - 2, FLAT_SIZE - 1]
    assert [tuple(c.source_index) for c in reply.layout.coordinates] == [(23, 23, 30), (23, 23, 31)]


def test_coordinate_count_above_max_coordinates_is_invalid_argument(limited_stub):
    message = request("Inspect", raw_tensor(images()), coordinate_count=9)
    rejected(
        limited_stub.Inspect,
        message,
        grpc.StatusCode.INVALID_ARGUMENT,
        "coordinate_count 9",
        "limit of 8",
        "coordinate_start",
    )
    reply = limited_stub.Inspect(
        request("Inspect", raw_tensor(images()), coordinate_start=100, coordinate_count=8),
        timeout=TIMEOUT,
    )
    assert [c.flat_index for c in reply.layout.coordinates] == list(range(100, 108))


def test_reply_above_max_send_message_bytes_is_resource_exhausted():
    # Inspect with the source for 2 examples is 2 x 2 x 18432 x 4 bytes = 294,912 > 100,000;
    # Predict for 2 examples and Inspect without the source for 1 (73,728 bytes) fit.
    server = ServerThread(settings(max_send_message_bytes=100_000))
    try:
        server.load_model()
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_of(channel)
            rejected(
                stub.Inspect,
                request("Inspect", raw_tensor(images(2)), include_source=True),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "100000",
                "--max-send-message-bytes",
                "include_source",
            )
            assert_serving(stub, batch=2)
            reply = stub.Inspect(request("Inspect", raw_tensor(images())), timeout=TIMEOUT)
            assert tuple(reply.flattened.shape) == (1, FLAT_SIZE)
            assert not reply.HasField("source")
    finally:
        server.stop()


@pytest.mark.parametrize("method", [*METHODS, "GetModelMetadata"])
def test_unknown_model_name_is_not_found(stub, method):
    if method == "GetModelMetadata":
        message = pb.GetModelMetadataRequest(model_name="no-such-model")
    else:
        message = request(method, raw_tensor(images()), model_name="no-such-model")
    rejected(
        getattr(stub, method),
        message,
        grpc.StatusCode.NOT_FOUND,
        "'no-such-model'",
        "'digits'",
    )
    assert_serving(stub)
    named = stub.Predict(
        pb.PredictRequest(model_name="digits", inputs=raw_tensor(images())), timeout=TIMEOUT
    )
    assert named.model_name == "digits"


def test_unknown_layer_is_not_found(stub):
    message = request("Inspect", raw_tensor(images()), layer="no_such_layer")
    rejected(
        stub.Inspect,
        message,
        grpc.StatusCode.NOT_FOUND,
        "no layer 'no_such_layer'",
        "Flatten layers: ['flatten']",
    )
    assert_serving(stub)


def test_layer_that_is_no_flatten_is_invalid_argument(stub):
    message = request("Inspect", raw_tensor(images()), layer="conv")
    rejected(
        stub.Inspect,
        message,
        grpc.StatusCode.INVALID_ARGUMENT,
        "'conv' is a Conv2D",
        "not a Flatten layer",
        "Flatten layers: ['flatten']",
    )
    reply = stub.Inspect(request("Inspect", raw_tensor(images()), layer="flatten"), timeout=TIMEOUT)
    assert reply.layout.layer_name == "flatten"
    assert tuple(reply.flattened.shape) == (1, FLAT_SIZE)


def test_model_without_flatten_answers_predict_but_not_inspect(serve_model):
    inputs = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    outputs = keras.layers.Dense(2, name="dense")(pooled)
    server = serve_model(keras.Model(inputs, outputs, name="no_flatten"))
    batch = raw_tensor(np.ones((2, 4, 4, 3), np.float32))
    with grpc.insecure_channel(server.target) as channel:
        stub = stub_of(channel)
        rejected(
            stub.Inspect,
            pb.InspectRequest(inputs=batch),
            grpc.StatusCode.FAILED_PRECONDITION,
            "'no_flatten'",
            "no Flatten layer",
        )
        rejected(
            stub.Inspect,
            pb.InspectRequest(inputs=batch, layer="dense"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "'dense' is a Dense",
            "Flatten layers: none",
        )
        reply = stub.Predict(pb.PredictRequest(inputs=batch), timeout=TIMEOUT)
        assert tuple(reply.outputs.shape) == (2, 2)
        metadata = stub.GetModelMetadata(pb.GetModelMetadataRequest(), timeout=TIMEOUT)
        assert list(metadata.flatten_layers) == []


def test_model_with_two_flattens_needs_a_layer_name(serve_model):
    inputs = keras.Input((4, 4, 3))
    flat_a = keras.layers.Flatten(name="flat_a")(inputs)
    conv = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    flat_b = keras.layers.Flatten(name="flat_b")(conv)
    joined = keras.layers.Concatenate(name="join")([flat_a, flat_b])
    outputs = keras.layers.Dense(2, name="dense")(joined)
    server = serve_model(keras.Model(inputs, outputs, name="two_flattens"))
    batch = raw_tensor(np.ones((1, 4, 4, 3), np.float32))
    with grpc.insecure_channel(server.target) as channel:
        stub = stub_of(channel)
        rejected(
            stub.Inspect,
            pb.InspectRequest(inputs=batch),
            grpc.StatusCode.INVALID_ARGUMENT,
            "2 Flatten layers",
            "'flat_a'",
            "'flat_b'",
            "name one in 'layer'",
        )
        for layer, flat_size in (("flat_a", 4 * 4 * 3), ("flat_b", 4 * 4 * 2)):
            reply = stub.Inspect(pb.InspectRequest(inputs=batch, layer=layer), timeout=TIMEOUT)
            assert reply.layout.layer_name == layer
            assert reply.layout.flat_size == flat_size
            assert tuple(reply.flattened.shape) == (1, flat_size)


def assert_typed_equals_raw(typed: tensor_pb2.Tensor, raw: tensor_pb2.Tensor) -> None:
    """A TYPED reply tensor holds in float_values exactly what the RAW one holds in raw_data."""
    assert typed.dtype == raw.dtype == tensor_pb2.FLOAT32
    assert tuple(typed.shape) == tuple(raw.shape)
    assert typed.raw_data == b""
    assert len(typed.float_values) > 0
    np.testing.assert_array_equal(
        np.asarray(typed.float_values, np.float32), np.frombuffer(raw.raw_data, "<f4")
    )


def test_typed_predict_output_holds_the_raw_output_values(stub):
    inputs = raw_tensor(images(3, seed=7))
    raw = stub.Predict(pb.PredictRequest(inputs=inputs), timeout=TIMEOUT)
    typed = stub.Predict(
        pb.PredictRequest(inputs=inputs, output_encoding=tensor_pb2.TENSOR_ENCODING_TYPED),
        timeout=TIMEOUT,
    )
    assert tuple(typed.outputs.shape) == (3, 10)
    assert_typed_equals_raw(typed.outputs, raw.outputs)
    assert list(typed.classes) == list(raw.classes)


def test_typed_inspect_output_holds_the_raw_output_values(stub):
    inputs = raw_tensor(images(3, seed=7))
    raw = stub.Inspect(pb.InspectRequest(inputs=inputs, include_source=True), timeout=TIMEOUT)
    typed = stub.Inspect(
        pb.InspectRequest(
            inputs=inputs, include_source=True, output_encoding=tensor_pb2.TENSOR_ENCODING_TYPED
        ),
        timeout=TIMEOUT,
    )
    assert tuple(typed.flattened.shape) == (3, FLAT_SIZE)
    assert tuple(typed.source.shape) == (3, 24, 24, 32)
    for field in ("outputs", "flattened", "source"):
        assert_typed_equals_raw(getattr(typed, field), getattr(raw, field))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "dtype", [tensor_pb2.DATA_TYPE_UNSPECIFIED, tensor_pb2.FLOAT32], ids=["unspecified", "float32"]
)
def test_float_values_input_matches_raw_input(stub, method, dtype):
    array = images(2, seed=3)
    typed_inputs = tensor_pb2.Tensor(
        dtype=dtype, shape=array.shape, float_values=array.ravel().tolist()
    )
    call = getattr(stub, method)
    from_values = call(request(method, typed_inputs), timeout=TIMEOUT)
    from_raw = call(request(method, raw_tensor(array)), timeout=TIMEOUT)
    assert from_values.outputs.raw_data == from_raw.outputs.raw_data
    assert list(from_values.classes) == list(from_raw.classes)


@pytest.mark.parametrize("method", METHODS)
def test_finite_inputs_that_overflow_the_model_are_refused_not_answered_nan(stub, method):
    # 3e38 is finite float32, so the input check passes; the model's arithmetic overflows
    # to NaN scores, which an OK status would pass off as an answer.
    batch = images(2)
    batch[1] = 3e38
    rejected(
        getattr(stub, method),
        request(method, raw_tensor(batch)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the model's output for example 1 is not finite (NaN or infinity)",
        "up to 3e+38 in magnitude",
    )
    assert_serving(stub, batch=2)
