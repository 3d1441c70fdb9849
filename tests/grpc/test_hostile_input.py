"""Hostile input, fuzzed with hypothesis against a real server process.

Every ModelService RPC gets random messages (shapes negative, zero, huge or with products
past int64; any dtype number; byte lengths off by a little or a lot; NaN and infinities;
names of any length; coordinates anywhere in int64), and raw bytes that are no valid
protobuf at all through a generic call. Each must get a status, in time; a good request
right after each must succeed; at the end the process is alive, holds no request, has not
grown, and has logged one JSON object per line without a byte of any payload.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from processes import ServerProcess

from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc, tensor_pb2

TIMEOUT = 10.0  # a hung call fails its example instead of stalling the run
EXAMPLE_SHAPE = (48, 48, 3)  # the embedded digits model
ONE = math.prod(EXAMPLE_SHAPE)
MAX_BATCH = 4
RECEIVE_LIMIT = 1024 * 1024
SERVICE = "/flatscope.v1.ModelService/"
METHODS = ("Predict", "Inspect", "GetModelMetadata")
# Every status a hostile message may get. Not INTERNAL or UNKNOWN (a bug), UNAVAILABLE (a
# crash), DEADLINE_EXCEEDED (a hang) or CANCELLED.
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Bytes no log line may ever hold: they only travel inside request tensors.
MARKER = b"FLATSCOPE-PAYLOAD-MARKER"  # 24 bytes; as float32 six finite numbers
# Lines the native runtimes (TensorFlow's C++ core, gRPC core) write to stderr themselves,
# past Python's logging; everything else must be JSON.
NATIVE_LINE = re.compile(
    r"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
FUZZ = settings(
    deadline=None,  # each example makes network calls; TIMEOUT bounds them
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    process = ServerProcess(
        log,
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-coordinates",
        "64",
        "--max-receive-message-bytes",
        str(RECEIVE_LIMIT),
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
        metrics=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    with process.serving() as started:
        yield started


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def start_rss(server: ServerProcess, stub) -> int:
    """RSS after a warm-up, before any hostile message."""
    for _ in range(50):
        stub.Predict(good_request(), timeout=TIMEOUT)
    return server.rss_bytes()


def good_request() -> pb.PredictRequest:
    images = np.full((1, *EXAMPLE_SHAPE), 0.5, np.float32)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=images.shape)
    tensor.raw_data = images.tobytes()
    return pb.PredictRequest(inputs=tensor)


def answered(call, message) -> grpc.StatusCode:
    """Sends ``message``; its status, which must be one of ANSWERS.

    Each status is a hypothesis event: ``--hypothesis-show-statistics`` shows the mix.
    """
    try:
        call(message, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in ANSWERS, f"{code}: {exc.details()}"
    else:
        code = grpc.StatusCode.OK
    if currently_in_test_context():
        event(code.name)
    return code


def still_serving(stub) -> None:
    reply = stub.Predict(good_request(), timeout=TIMEOUT)
    assert tuple(reply.outputs.shape) == (1, 10)


# Strategies.

INT64 = st.integers(-(2**63), 2**63 - 1)
DIMENSION = st.one_of(
    st.integers(-2, 6),
    st.sampled_from([48, 3, 2**31, 2**32 + 48, 2**62, 2**63 - 1, -(2**63)]),
    INT64,
)
SHAPE = st.one_of(
    st.lists(DIMENSION, max_size=6),
    st.builds(lambda n: [n, *EXAMPLE_SHAPE], st.integers(0, MAX_BATCH + 1)),  # near right
    st.builds(lambda n: [n, *EXAMPLE_SHAPE], DIMENSION),  # the model's examples, any batch
    st.builds(lambda n, h, c: [n, h, 48, c], DIMENSION, DIMENSION, DIMENSION),
    st.integers(100, 3000).map(lambda n: [1] * n),  # thousands of axes
)
DTYPE = st.one_of(
    st.just(tensor_pb2.FLOAT32),
    st.sampled_from(tensor_pb2.DataType.values()),
    st.integers(-(2**31), 2**31 - 1),
)
FLOAT = st.floats(width=32)  # NaN and infinities included
CUT = st.sampled_from([0, 0, 0, 1, 3, 4])  # elements or bytes missing at the end
NAME = st.one_of(
    st.sampled_from(["digits", "flatten", "conv", "pool", "digit"]),
    st.text(max_size=30),
    st.integers(1000, 200_000).map(lambda n: "é\n" * n),  # far above any status size
)
# Mostly the served model and its Flatten layer, so that most messages reach the tensors.
MODEL_NAME = st.sampled_from([True, True, False]).flatmap(lambda ok: st.just("") if ok else NAME)
LAYER = st.sampled_from(["", "flatten", None]).flatmap(lambda name: st.just(name) if name else NAME)
ENCODING = st.one_of(st.sampled_from([0, 1]), st.integers(-(2**31), 2**31 - 1))


@st.composite
def tensors(draw) -> tensor_pb2.Tensor:
    shape = draw(SHAPE)
    message = tensor_pb2.Tensor(dtype=draw(DTYPE), shape=shape)
    # Elements the shape declares, when few enough to send them all.
    count = math.prod(shape) if all(0 <= d <= MAX_BATCH * ONE for d in shape) else None
    fits = count is not None and count <= (MAX_BATCH + 1) * ONE
    kind = draw(st.sampled_from(["raw", "values", "both", "neither"]))
    if kind in ("raw", "both"):
        if fits and draw(st.booleans()):
            values = np.full(count, 0.25, "<f4")
            for index in draw(st.lists(st.integers(0, max(count - 1, 0)), max_size=3)):
                if count:
                    values[index] = draw(FLOAT)
            data = values.tobytes()
            message.raw_data = data[: len(data) - draw(CUT)]
        else:
            message.raw_data = draw(st.binary(max_size=512))
    if kind in ("values", "both"):
        if fits and draw(st.booleans()):
            values = [0.25] * count
            for index in draw(st.lists(st.integers(0, max(count - 1, 0)), max_size=3)):
                if count:
                    values[index] = draw(FLOAT)
            message.float_values.extend(values[: len(values) - draw(CUT)])
        else:
            message.float_values.extend(draw(st.lists(FLOAT, max_size=32)))
    return message


PREDICT_REQUESTS = st.builds(
    pb.PredictRequest, model_name=MODEL_NAME, inputs=tensors(), output_encoding=ENCODING
)
INSPECT_REQUESTS = st.builds(
    pb.InspectRequest,
    model_name=MODEL_NAME,
    inputs=tensors(),
    layer=LAYER,
    include_source=st.booleans(),
    coordinate_start=st.one_of(st.integers(-3, 18_500), INT64),
    coordinate_count=st.one_of(st.integers(-3, 70), INT64),
    output_encoding=ENCODING,
)
METADATA_REQUESTS = st.builds(pb.GetModelMetadataRequest, model_name=MODEL_NAME)
VALID_BYTES = good_request().SerializeToString()


@st.composite
def garbage(draw) -> bytes:
    """Bytes that are no valid message, or a valid one cut, spliced or bit-flipped."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    data = bytearray(VALID_BYTES)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        if not data:
            break
    return bytes(data)


# The fuzzing.


@settings(FUZZ, max_examples=120)
@given(message=PREDICT_REQUESTS)
def test_fuzzed_predict_gets_a_status_and_the_server_goes_on(stub, start_rss, message):
    answered(stub.Predict, message)
    still_serving(stub)


@settings(FUZZ, max_examples=120)
@given(message=INSPECT_REQUESTS)
def test_fuzzed_inspect_gets_a_status_and_the_server_goes_on(stub, start_rss, message):
    answered(stub.Inspect, message)
    still_serving(stub)


@settings(FUZZ, max_examples=30)
@given(message=METADATA_REQUESTS)
def test_fuzzed_metadata_gets_a_status_and_the_server_goes_on(stub, start_rss, message):
    answered(stub.GetModelMetadata, message)
    still_serving(stub)


@settings(FUZZ, max_examples=150)
@given(method=st.sampled_from(METHODS), data=garbage())
def test_bytes_that_are_no_valid_message_get_a_status(channel, stub, start_rss, method, data):
    # No serializers: the bytes go out as they are, and come back as bytes.
    call = channel.unary_unary(SERVICE + method)
    answered(call, data)
    still_serving(stub)


def test_unparsable_bytes_are_invalid_argument_naming_the_message(channel, stub):
    call = channel.unary_unary(SERVICE + "Predict")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff\xff\xff\xff", timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid flatscope.v1.PredictRequest message" in caught.value.details()
    assert "DecodeError" not in caught.value.details()
    still_serving(stub)


@pytest.mark.parametrize("method", METHODS)
def test_oversized_messages_are_resource_exhausted(channel, stub, method):
    call = channel.unary_unary(SERVICE + method)
    for data in (bytes(RECEIVE_LIMIT + 1), np.random.default_rng(0).bytes(2 * RECEIVE_LIMIT)):
        with pytest.raises(grpc.RpcError) as caught:
            call(data, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        still_serving(stub)


def test_long_names_are_cut_in_the_status_message(stub):
    message = pb.PredictRequest(model_name="x" * 100_000, inputs=good_request().inputs)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(message, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details()
    assert len(details) <= 600
    assert "characters cut" in details
    assert details.endswith(
        "this server serves 'digits' (a gRPC request may leave the model name empty)"
    )


def test_payload_bytes_never_reach_the_log(stub):
    data = MARKER * (ONE * 4 // len(MARKER))
    shape = (1, *EXAMPLE_SHAPE)
    valid = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=shape, raw_data=data)
    assert tuple(stub.Predict(pb.PredictRequest(inputs=valid), timeout=TIMEOUT).classes)
    short = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=shape, raw_data=data[:-4])
    wrong_dtype = tensor_pb2.Tensor(dtype=tensor_pb2.INT32, shape=shape, raw_data=data)
    for tensor in (short, wrong_dtype):
        for call, message in (
            (stub.Predict, pb.PredictRequest(inputs=tensor)),
            (stub.Inspect, pb.InspectRequest(inputs=tensor, include_source=True)),
        ):
            assert answered(call, message) == grpc.StatusCode.INVALID_ARGUMENT


# After all of it (pytest runs a module's tests in order).


def test_the_server_survived_holds_nothing_and_did_not_grow(server: ServerProcess, start_rss):
    assert server.proc.poll() is None, server.log()
    assert server.metric("flatscope_requests_in_flight", {"model": "digits"}) == 0
    handled = server.metric("grpc_server_handled_total", {"grpc_code": "INTERNAL"})
    assert handled == 0
    growth = server.rss_bytes() - start_rss
    assert growth < 128 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"


def test_log_is_json_lines_without_payloads(server: ServerProcess):
    text = server.log()
    assert MARKER.decode() not in text
    assert "PAYLOAD" not in text
    events = []
    for line in text.splitlines():
        if NATIVE_LINE.match(line):
            continue
        event = json.loads(line)  # anything else is one JSON object
        assert {"time", "level", "logger", "message"} <= set(event), line
        events.append(event)
    messages = [e["message"] for e in events if e["logger"].startswith("flatscope")]
    assert any(m.startswith("listening on 127.0.0.1:") for m in messages), messages
    assert any(m.startswith("serving model digits") for m in messages), messages
    assert not [e for e in events if e["level"] in ("ERROR", "CRITICAL")], events
