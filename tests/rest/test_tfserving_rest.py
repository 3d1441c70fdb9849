"""TF Serving's REST API with plain ``requests``, row and columnar formats, against gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import requests
from payloads import images
from processes import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

TIMEOUT = 60


@pytest.fixture(scope="module")
def prediction_stub(rest_server: ServerProcess) -> Iterator:
    with grpc.insecure_channel(rest_server.target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def grpc_predict(stub, array: np.ndarray, signature: str = "") -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = signature
    tensor = request.inputs["image"]
    tensor.dtype = 1  # DT_FLOAT
    for d in array.shape:
        tensor.tensor_shape.dim.add(size=d)
    tensor.tensor_content = array.astype("<f4").tobytes()
    reply = stub.Predict(request, timeout=TIMEOUT)
    arrays = {}
    for name, out in reply.outputs.items():
        shape = [d.size for d in out.tensor_shape.dim]
        arrays[name] = np.asarray(out.float_val, dtype=np.float32).reshape(shape)
    return arrays


def predict(server: ServerProcess, body: dict, path: str = "/v1/models/digits:predict"):
    return requests.post(server.http_url + path, json=body, timeout=TIMEOUT)


def test_status_and_metadata(rest_server: ServerProcess):
    status = requests.get(rest_server.http_url + "/v1/models/digits", timeout=TIMEOUT).json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert requests.get(rest_server.http_url + "/v1/models/digits/versions/1", timeout=TIMEOUT).ok
    metadata = requests.get(
        rest_server.http_url + "/v1/models/digits/metadata", timeout=TIMEOUT
    ).json()
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "flatten"}
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    dims = [d["size"] for d in default["inputs"]["image"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "48", "48", "3"]
    assert set(signatures["flatten"]["outputs"]) == {"digit", "flatten", "flatten/source"}
    reply = requests.get(rest_server.http_url + "/v1/models/digits/labels/stable", timeout=TIMEOUT)
    assert reply.status_code == 404 and "no version labels" in reply.json()["error"]


def test_row_format_equals_grpc(rest_server: ServerProcess, prediction_stub):
    batch = images(3, seed=4)
    reply = predict(rest_server, {"instances": batch.tolist()})
    assert reply.status_code == 200, reply.text
    got = np.asarray(reply.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, grpc_predict(prediction_stub, batch)["digit"], atol=1e-5)
    # Named inputs, one object per instance.
    named = predict(rest_server, {"instances": [{"image": x} for x in batch.tolist()]})
    np.testing.assert_allclose(np.asarray(named.json()["predictions"]), got, atol=1e-6)


def test_columnar_format_and_layer_signature_equal_grpc(rest_server, prediction_stub):
    batch = images(2, seed=5)
    want = grpc_predict(prediction_stub, batch, signature="flatten")
    reply = predict(rest_server, {"inputs": {"image": batch.tolist()}, "signature_name": "flatten"})
    assert reply.status_code == 200, reply.text
    outputs = reply.json()["outputs"]
    assert set(outputs) == set(want) == {"digit", "flatten", "flatten/source"}
    for name, array in want.items():
        np.testing.assert_allclose(np.asarray(outputs[name]), array, atol=1e-5, rtol=0)
    # Rows with several outputs: an object per example.
    rows = predict(rest_server, {"instances": batch.tolist(), "signature_name": "flatten"}).json()
    assert len(rows["predictions"]) == 2
    np.testing.assert_allclose(rows["predictions"][1]["digit"], want["digit"][1], atol=1e-5)
    # One output, columnar: the tensor itself.
    plain = predict(rest_server, {"inputs": batch.tolist()}).json()["outputs"]
    np.testing.assert_allclose(np.asarray(plain), want["digit"], atol=1e-5)
    versioned = predict(
        rest_server, {"inputs": batch.tolist()}, "/v1/models/digits/versions/1:predict"
    )
    assert versioned.ok


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "exactly one of 'instances' (row format) and 'inputs'"),
        ({"instances": [], "inputs": []}, 400, "exactly one of"),
        ({"instances": [[[1.0]], [[1.0, 2.0]]]}, 400, "not a list of numbers"),
        ({"instances": [[[[0.0] * 3] * 48] * 28]}, 400, "shape (1, 28, 48, 3) does not match"),
        ({"instances": [{"pixels": 1}]}, 400, "input 'pixels' is not an input of model 'digits'"),
        ({"inputs": [[1]], "signature_name": "nope"}, 400, "serving signature 'nope' not found"),
        ({"inputs": [[1]], "signature_name": 3}, 400, "'signature_name' is not a string"),
    ],
    ids=["neither", "both", "ragged", "shape", "input-name", "signature", "signature-type"],
)
def test_bad_predict_bodies(rest_server: ServerProcess, body, status, message):
    reply = predict(rest_server, body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]
    assert predict(rest_server, {"instances": images(1).tolist()}).ok
