"""TF Serving's PredictionService and ModelService through tensorflow-serving-api's stubs.

Tensors are built and read with TensorFlow's own ``tf.make_tensor_proto`` and
``tf.make_ndarray``, as TF Serving clients do. Answers must equal flatscope's own
Predict and Inspect; bad requests get the right status and message and the server keeps
serving.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerThread, settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.apis.model_service_pb2_grpc import ModelServiceStub
from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub
from waiting import settled

from flatscope.client import Client

TIMEOUT = 60.0
SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
FLAT_SIZE = 24 * 24 * 32
SOURCE_SHAPE = (24, 24, 32)
ALL_OUTPUTS = ["digit", "flatten", "flatten/source"]


def images(batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 48, 48, 3), dtype=np.float32)


def predict_request(array: np.ndarray, *output_filter: str, **spec) -> predict_pb2.PredictRequest:
    """A PredictRequest for the default model; make_tensor_proto sends tensor_content."""
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = spec.pop("name", "digits")
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(array))
    return request


def float_val_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """``array`` as typed float_val, the other way TF Serving clients send tensors."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        ),
        float_val=array.ravel().tolist(),
    )


@pytest.fixture(scope="module")
def stub(default_server: ServerThread) -> Iterator[PredictionServiceStub]:
    with grpc.insecure_channel(default_server.target) as channel:
        yield PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def status_stub(default_server: ServerThread) -> Iterator[ModelServiceStub]:
    with grpc.insecure_channel(default_server.target) as channel:
        yield ModelServiceStub(channel)


def status_request(**spec) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.CopyFrom(predict_request(images(), **spec).model_spec)
    return request


@pytest.fixture(scope="module")
def own(default_server: ServerThread) -> Iterator[Client]:
    with default_server.client() as client:
        yield client


def test_predict_without_output_filter_returns_the_prediction_equal_to_predict(stub, own):
    array = images(3, seed=1)
    reply = stub.Predict(predict_request(array), timeout=TIMEOUT)
    assert list(reply.outputs) == ["digit"]  # serving_default's one output
    assert reply.model_spec.name == "digits"
    assert reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    # tensor_content in, typed float_val out, as TF Serving answers by default.
    assert reply.outputs["digit"].tensor_content == b""
    assert len(reply.outputs["digit"].float_val) == 3 * 10
    np.testing.assert_array_equal(
        tf.make_ndarray(reply.outputs["digit"]), own.predict(array).outputs
    )


def test_the_flatten_signature_without_output_filter_returns_all_its_outputs(stub, own):
    array = images(2, seed=5)
    reply = stub.Predict(predict_request(array, signature_name="flatten"), timeout=TIMEOUT)
    assert sorted(reply.outputs) == sorted(ALL_OUTPUTS)
    seen = own.inspect(array, include_source=True)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["digit"]), seen.outputs)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["flatten"]), seen.flattened)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["flatten/source"]), seen.source)


def test_predict_with_output_filter_returns_the_flatten_tensors_equal_to_inspect(stub, own):
    array = images(2, seed=2)
    reply = stub.Predict(
        predict_request(array, *ALL_OUTPUTS, version=1, signature_name="serving_default"),
        timeout=TIMEOUT,
    )
    assert sorted(reply.outputs) == sorted(ALL_OUTPUTS)
    seen = own.inspect(array, include_source=True)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["digit"]), seen.outputs)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["flatten"]), seen.flattened)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["flatten/source"]), seen.source)
    assert tf.make_ndarray(reply.outputs["flatten/source"]).shape == (2, *SOURCE_SHAPE)


def test_output_filter_selects_among_the_outputs(stub, own):
    array = images(1, seed=3)
    reply = stub.Predict(predict_request(array, "flatten"), timeout=TIMEOUT)
    assert list(reply.outputs) == ["flatten"]
    flattened = tf.make_ndarray(reply.outputs["flatten"])
    assert flattened.shape == (1, FLAT_SIZE)
    np.testing.assert_array_equal(flattened, own.inspect(array).flattened)


def test_float_val_and_tensor_content_inputs_get_the_same_float_val_outputs(stub):
    array = images(2, seed=4)
    typed_request = predict_pb2.PredictRequest(output_filter=ALL_OUTPUTS)
    typed_request.inputs["image"].CopyFrom(float_val_proto(array))
    typed = stub.Predict(typed_request, timeout=TIMEOUT)
    raw = stub.Predict(predict_request(array, *ALL_OUTPUTS), timeout=TIMEOUT)
    for name in ALL_OUTPUTS:
        for reply in (typed, raw):
            assert reply.outputs[name].tensor_content == b""
            assert len(reply.outputs[name].float_val) > 0
        np.testing.assert_array_equal(
            tf.make_ndarray(typed.outputs[name]), tf.make_ndarray(raw.outputs[name])
        )


def test_tfserving_tensor_content_setting_replies_with_tensor_content(stub):
    server = ServerThread(settings(tfserving_tensor_content=True)).load_model()
    try:
        array = images(2, seed=6)
        typed_request = predict_pb2.PredictRequest(output_filter=["digit", "flatten"])
        typed_request.inputs["image"].CopyFrom(float_val_proto(array))
        with grpc.insecure_channel(server.target) as channel:
            raw = PredictionServiceStub(channel).Predict(typed_request, timeout=TIMEOUT)
        typed = stub.Predict(typed_request, timeout=TIMEOUT)
        for name in ("digit", "flatten"):
            assert raw.outputs[name].tensor_content
            assert len(raw.outputs[name].float_val) == 0
            np.testing.assert_allclose(
                tf.make_ndarray(raw.outputs[name]), tf.make_ndarray(typed.outputs[name]), atol=1e-5
            )
    finally:
        server.stop()


def test_model_metadata_has_the_serving_default_signature(stub, own):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    reply = stub.GetModelMetadata(request, timeout=TIMEOUT)
    assert reply.model_spec.name == "digits"
    assert reply.model_spec.version.value == int(own.metadata().version)
    definitions = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(definitions)
    assert sorted(definitions.signature_def) == ["flatten", "serving_default"]

    def shapes(infos):
        return {
            name: (info.dtype, [d.size for d in info.tensor_shape.dim])
            for name, info in infos.items()
        }

    prediction = {"digit": (types_pb2.DT_FLOAT, [-1, 10])}
    flatten = {
        "flatten": (types_pb2.DT_FLOAT, [-1, FLAT_SIZE]),
        "flatten/source": (types_pb2.DT_FLOAT, [-1, *SOURCE_SHAPE]),
    }
    for name, outputs in [("serving_default", prediction), ("flatten", prediction | flatten)]:
        signature = definitions.signature_def[name]
        assert signature.method_name == "tensorflow/serving/predict"
        assert shapes(signature.inputs) == {"image": (types_pb2.DT_FLOAT, [-1, 48, 48, 3])}
        assert shapes(signature.outputs) == outputs


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("Classify", classification_pb2.ClassificationRequest()),
        ("Regress", regression_pb2.RegressionRequest()),
        ("MultiInference", inference_pb2.MultiInferenceRequest()),
    ],
)
def test_classify_regress_and_multi_inference_are_unimplemented_naming_predict(
    stub, method, request_
):
    rejected(
        getattr(stub, method),
        request_,
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not served",
        "send a Predict request",
    )


def test_requests_are_measured_under_their_service(default_server, stub):
    registry = default_server.registry
    labels = {
        "grpc_service": SERVICE,
        "grpc_method": "Predict",
        "grpc_type": "unary",
        "grpc_code": "OK",
    }
    before = registry.get_sample_value("grpc_server_handled_total", labels) or 0.0
    stub.Predict(predict_request(images()), timeout=TIMEOUT)
    handled = settled(
        lambda: registry.get_sample_value("grpc_server_handled_total", labels), before + 1
    )
    assert handled == before + 1


def assert_serving(stub) -> None:
    reply = stub.Predict(predict_request(images()), timeout=TIMEOUT)
    assert tf.make_ndarray(reply.outputs["digit"]).shape == (1, 10)


def rejected(call, request, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    details = caught.value.details()
    assert caught.value.code() == code, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"


def with_input(proto: tensor_pb2.TensorProto, name: str = "image") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.inputs[name].CopyFrom(proto)
    return request


ONE_COUNT = 48 * 48 * 3
SHORT = tf.make_tensor_proto(images())
SHORT.tensor_content = SHORT.tensor_content[:-4]
BOTH = tf.make_tensor_proto(images())
BOTH.float_val.extend([0.0] * ONE_COUNT)
UNKNOWN_RANK = tensor_pb2.TensorProto(
    dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
)
NAN = images()
NAN[0, 3, 4, 1] = np.nan
SHAPE_ONE = tensor_shape_pb2.TensorShapeProto(
    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 48, 48, 3)]
)
FEW_VALUES = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=SHAPE_ONE)
FEW_VALUES.float_val.extend([0.5] * 10)
TWO_INPUTS = with_input(tf.make_tensor_proto(images()))
TWO_INPUTS.inputs["mask"].CopyFrom(tf.make_tensor_proto(images()))

INVALID = [
    pytest.param(
        with_input(tf.make_tensor_proto(images().astype(np.float64))),
        ["input 'image' has dtype DT_DOUBLE", "DT_FLOAT", "tensor_content", "float_val"],
        id="float64",
    ),
    pytest.param(
        with_input(tf.make_tensor_proto(np.zeros((1, 48, 48, 3), np.int32))),
        ["dtype DT_INT32", "DT_FLOAT"],
        id="int32",
    ),
    pytest.param(
        with_input(tf.make_tensor_proto(np.zeros((1, 28, 28, 3), np.float32))),
        ["input 'image' shape (1, 28, 28, 3) does not match (batch, 48, 48, 3)"],
        id="wrong-shape",
    ),
    pytest.param(
        with_input(tf.make_tensor_proto(np.zeros((48, 48, 3), np.float32))),
        ["shape (48, 48, 3) has rank 3", "(batch, 48, 48, 3)"],
        id="no-batch-axis",
    ),
    pytest.param(
        with_input(SHORT),
        [f"input 'image': tensor_content has {ONE_COUNT * 4 - 4} bytes", "DT_FLOAT needs"],
        id="tensor-content-too-short",
    ),
    pytest.param(
        with_input(FEW_VALUES),
        ["input 'image': float_val has 10 values", f"needs {ONE_COUNT}"],
        id="float-val-wrong-count",
    ),
    pytest.param(with_input(BOTH), ["both tensor_content and float_val", "exactly one"], id="both"),
    pytest.param(
        with_input(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=SHAPE_ONE)),
        ["neither tensor_content nor float_val", f"{ONE_COUNT} elements"],
        id="neither",
    ),
    pytest.param(with_input(UNKNOWN_RANK), ["unknown_rank", "send its dims"], id="unknown-rank"),
    pytest.param(with_input(tf.make_tensor_proto(NAN)), ["NaN or infinite", "example 0"], id="nan"),
    pytest.param(
        with_input(tf.make_tensor_proto(images()), name="pixels"),
        ["input 'pixels' is not an input of model 'digits'", "'image' of shape (batch, 48"],
        id="unknown-input",
    ),
    pytest.param(TWO_INPUTS, ["takes one input, 'image'", "got 2"], id="two-inputs"),
    pytest.param(predict_pb2.PredictRequest(), ["takes one input", "got 0"], id="no-inputs"),
    pytest.param(
        predict_request(images(), "probabilities"),
        ["output 'probabilities' is not an output", "'digit', 'flatten', 'flatten/source'"],
        id="unknown-output",
    ),
]


@pytest.mark.parametrize(("request_", "fragments"), INVALID)
def test_bad_predict_requests_are_invalid_argument(stub, request_, fragments):
    rejected(stub.Predict, request_, grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_serving(stub)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        pytest.param({"name": "no-such-model"}, ["'no-such-model'", "'digits'"], id="model"),
        pytest.param({"version": 2}, ["no version '2'", "version '1'"], id="version"),
        pytest.param(
            {"version_label": "stable"}, ["version label 'stable'", "no version labels"], id="label"
        ),
    ],
)
def test_unknown_model_or_version_is_not_found(stub, spec, fragments):
    rejected(stub.Predict, predict_request(images(), **spec), grpc.StatusCode.NOT_FOUND, *fragments)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.CopyFrom(predict_request(images(), **spec).model_spec)
    rejected(stub.GetModelMetadata, metadata, grpc.StatusCode.NOT_FOUND, *fragments)
    assert_serving(stub)


def test_unknown_signature_is_failed_precondition_as_in_tf_serving(stub):
    spec = {"signature_name": "predict_images"}
    fragments = ["signature 'predict_images' not found", "['serving_default', 'flatten']"]
    for output_filter in [(), ("digit",)]:
        request = predict_request(images(), *output_filter, **spec)
        rejected(stub.Predict, request, grpc.StatusCode.FAILED_PRECONDITION, *fragments)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.CopyFrom(predict_request(images(), **spec).model_spec)
    rejected(stub.GetModelMetadata, metadata, grpc.StatusCode.FAILED_PRECONDITION, *fragments)
    assert_serving(stub)


def test_unsupported_metadata_field_is_invalid_argument(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def", "x"])
    rejected(
        stub.GetModelMetadata,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "metadata_field 'x' is not supported",
        "'signature_def'",
    )
    assert_serving(stub)


@pytest.mark.parametrize(
    "spec",
    [{}, {"version": 1}, {"name": ""}, {"signature_name": "not-looked-at"}],
    ids=["name", "version", "served-model", "any-signature"],
)
def test_get_model_status_is_available_with_the_version(status_stub, own, spec):
    reply = status_stub.GetModelStatus(status_request(**spec), timeout=TIMEOUT)
    [status] = reply.model_version_status
    assert status.state == AVAILABLE
    assert status.version == int(own.metadata().version) == 1
    assert status.HasField("status")
    assert status.status.error_code == 0  # OK
    assert status.status.error_message == ""


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        pytest.param({"name": "no-such-model"}, ["'no-such-model'", "'digits'"], id="model"),
        pytest.param({"version": 2}, ["no version '2'", "version '1'"], id="version"),
    ],
)
def test_get_model_status_of_an_unknown_model_or_version_is_not_found(status_stub, spec, fragments):
    rejected(
        status_stub.GetModelStatus, status_request(**spec), grpc.StatusCode.NOT_FOUND, *fragments
    )


def test_model_service_reload_config_is_unimplemented(status_stub):
    with pytest.raises(grpc.RpcError) as caught:
        status_stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(), timeout=TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_model_status_follow_the_loading_under_the_tf_serving_names():
    server = ServerThread(settings())
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = ModelServiceStub(channel)

            def states() -> list[int]:
                asks = [health_pb2.HealthCheckRequest(service=n) for n in (SERVICE, MODEL_SERVICE)]
                return [health.Check(ask, timeout=TIMEOUT).status for ask in asks]

            assert states() == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
            rejected(
                status.GetModelStatus, status_request(), grpc.StatusCode.UNAVAILABLE, "loading"
            )
            server.load_model()
            assert states() == [health_pb2.HealthCheckResponse.SERVING] * 2
            reply = status.GetModelStatus(status_request(), timeout=TIMEOUT)
            assert [s.state for s in reply.model_version_status] == [AVAILABLE]
    finally:
        server.stop()


# TF Serving's example clients, as copies adapted in names only, run against the server.


# Adapted from TensorFlow Serving's tensorflow_serving/example/resnet_client_grpc.py
# (Apache 2.0). Changed: the model, input and output names ('resnet' -> 'digits',
# 'input_1' -> 'image', 'activation_49' -> 'digit'); the flags became arguments, the image
# comes from a file only (no download), and it returns the scores it prints the argmax of.
def resnet_client_grpc(server, image):
    with open(image, "rb") as f:
        data = f.read()

    channel = grpc.insecure_channel(server)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    # Send request
    # See prediction_service.proto for gRPC request/response details.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "serving_default"
    data = Image.open(io.BytesIO(data))
    # Normalize and batchify the image
    data = np.array(data) / 255.0
    data = np.expand_dims(data, 0)
    data = data.astype(np.float32)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(data))

    result = stub.Predict(request, 10.0)  # 10 secs timeout
    result = result.outputs["digit"].float_val
    print("Prediction class: {}".format(np.argmax(result)))  # noqa: UP032
    return result


# Adapted from TensorFlow Serving's tensorflow_serving/example/mnist_client.py
# (Apache 2.0). Changed: the names ('mnist' -> 'digits', 'predict_images' ->
# 'serving_default', 'images' -> 'image', 'scores' -> 'digit'); the MNIST test set read
# from work_dir became a data set argument, and the tensor's shape is the image's own
# (1, 48, 48, 3) where MNIST's model takes flat (1, 784) rows.
class _ResultCounter(object):  # noqa: UP004
    """Counter for the prediction results."""

    def __init__(self, num_tests, concurrency):
        self._num_tests = num_tests
        self._concurrency = concurrency
        self._error = 0
        self._done = 0
        self._active = 0
        self._condition = threading.Condition()

    def inc_error(self):
        with self._condition:
            self._error += 1

    def inc_done(self):
        with self._condition:
            self._done += 1
            self._condition.notify()

    def dec_active(self):
        with self._condition:
            self._active -= 1
            self._condition.notify()

    def get_error_rate(self):
        with self._condition:
            while self._done != self._num_tests:
                self._condition.wait()
            return self._error / float(self._num_tests)

    def throttle(self):
        with self._condition:
            while self._active == self._concurrency:
                self._condition.wait()
            self._active += 1


def _create_rpc_callback(label, result_counter):
    def _callback(result_future):
        exception = result_future.exception()
        if exception:
            result_counter.inc_error()
            print(exception)
        else:
            sys.stdout.write(".")
            sys.stdout.flush()
            response = np.array(result_future.result().outputs["digit"].float_val)
            prediction = np.argmax(response)
            if label != prediction:
                result_counter.inc_error()
        result_counter.inc_done()
        result_counter.dec_active()

    return _callback


def do_inference(hostport, test_data_set, concurrency, num_tests):
    channel = grpc.insecure_channel(hostport)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result_counter = _ResultCounter(num_tests, concurrency)
    for _ in range(num_tests):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = "serving_default"
        image, label = test_data_set.next_batch(1)
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(image[0], shape=[1, *image[0].shape]))
        result_counter.throttle()
        result_future = stub.Predict.future(request, 5.0)  # 5 seconds
        result_future.add_done_callback(_create_rpc_callback(label[0], result_counter))
    return result_counter.get_error_rate()


class DataSet:
    """What mnist_client reads from MNIST's test set: ``next_batch(n)`` in order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self._images, self._labels, self._at = images, labels, 0

    def next_batch(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        at, self._at = self._at, self._at + count
        return self._images[at : at + count], self._labels[at : at + count]


def test_resnet_client_grpc_reads_float_val_equal_to_predict(default_server, own, tmp_path, capsys):
    array = (images(1, seed=7) * 255).astype(np.uint8)
    path = tmp_path / "digit.png"  # PNG: lossless, so the client sends these very pixels
    Image.fromarray(array[0]).save(path)
    scores = resnet_client_grpc(default_server.target, str(path))
    expected = own.predict((array / 255.0).astype(np.float32))
    np.testing.assert_allclose(np.reshape(scores, (1, 10)), expected.outputs, atol=1e-5)
    assert capsys.readouterr().out == f"Prediction class: {expected.classes[0]}\n"


def test_mnist_client_predict_futures_get_every_label_right(default_server, stub, own):
    array = images(8, seed=8)
    expected = own.predict(array)
    data_set = DataSet(array, expected.classes)
    rates = []
    # The copy waits for its callbacks without a deadline: a thread bounds the test.
    runner = threading.Thread(
        target=lambda: rates.append(do_inference(default_server.target, data_set, 2, 8)),
        daemon=True,
    )
    runner.start()
    runner.join(TIMEOUT)
    assert rates == [0.0]
    # The same requests' float_val, through Predict.future, equal flatscope's Predict.
    for index in range(len(array)):
        request = predict_request(array[index : index + 1])
        reply = stub.Predict.future(request, TIMEOUT).result()
        scores = np.array(reply.outputs["digit"].float_val).reshape(1, 10)
        np.testing.assert_allclose(scores, expected.outputs[index : index + 1], atol=1e-5)
