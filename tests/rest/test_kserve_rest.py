"""KServe v2 REST through tritonclient.http, JSON and binary, against gRPC on the same server.

Every answer must equal what tritonclient.grpc gets from the same process (1e-5), the
layout parameters included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from payloads import images
from processes import ServerProcess
from tritonclient.utils import InferenceServerException

ALL_OUTPUTS = ["digit", "flatten", "flatten/source"]
TIMEOUT = 60


@pytest.fixture(scope="module")
def http(rest_server: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        rest_server.http_url.removeprefix("http://"), network_timeout=TIMEOUT
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(rest_server: ServerProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(rest_server.target)
    yield client
    client.close()


def http_infer(client, array, outputs, binary: bool, class_count: int = 0):
    tensor = triton_http.InferInput("image", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [
        triton_http.InferRequestedOutput(name, binary_data=binary, class_count=class_count)
        for name in outputs
    ]
    return client.infer("digits", [tensor], outputs=wanted or None, request_id="r-7")


def grpc_infer(client, array, outputs, class_count: int = 0):
    tensor = triton_grpc.InferInput("image", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    wanted = [triton_grpc.InferRequestedOutput(name, class_count=class_count) for name in outputs]
    return client.infer("digits", [tensor], outputs=wanted or None)


def test_health_and_metadata_answer_as_over_grpc(http, grpc_client):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("digits") and http.is_model_ready("digits", "1")
    assert not http.is_model_ready("digits", "2") and not http.is_model_ready("other")
    served = http.get_server_metadata()
    assert served["name"] == "flatscope"
    assert "binary_tensor_data" in served["extensions"]
    over_grpc = grpc_client.get_model_metadata("digits", as_json=True)
    over_http = http.get_model_metadata("digits")
    assert over_http["name"] == over_grpc["name"] and over_http["versions"] == over_grpc["versions"]
    assert over_http["platform"] == over_grpc["platform"]
    for key in ("inputs", "outputs"):
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_http[key]]
        want = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_grpc[key]]
        assert got == want
    assert http.get_model_metadata("digits", "1") == over_http


def test_model_config_answers_as_over_grpc_with_numbers(http, grpc_client):
    # Triton's model configuration extension; tritonclient.grpc's JSON writes 64-bit
    # integers as strings, Triton's HTTP config (and this one) as numbers.
    assert "model_configuration" in http.get_server_metadata()["extensions"]
    over_grpc = grpc_client.get_model_config("digits", as_json=True)["config"]
    over_http = http.get_model_config("digits")
    assert http.get_model_config("digits", "1") == over_http
    assert over_http["name"] == over_grpc["name"] == "digits"
    assert over_http["max_batch_size"] == over_grpc["max_batch_size"] > 0
    (image,) = over_http["input"]
    assert (image["name"], image["data_type"], image["format"]) == (
        "image",
        "TYPE_FP32",
        "FORMAT_NHWC",
    )
    assert image["dims"] == [48, 48, 3] == [int(d) for d in over_grpc["input"][0]["dims"]]
    assert over_http["output"][0]["dims"] == [10]
    delay = over_http["dynamic_batching"]["max_queue_delay_microseconds"]
    assert delay == int(over_grpc["dynamic_batching"]["max_queue_delay_microseconds"]) > 0
    assert over_http["version_policy"] == {"specific": {"versions": [1]}}
    assert over_http["parameters"] == over_grpc["parameters"]
    with pytest.raises(InferenceServerException, match="has no version '7'"):
        http.get_model_config("digits", "7")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_grpc_for_every_output(http, grpc_client, binary: bool):
    batch = images(3, seed=1)
    over_http = http_infer(http, batch, ALL_OUTPUTS, binary)
    over_grpc = grpc_infer(grpc_client, batch, ALL_OUTPUTS)
    for name in ALL_OUTPUTS:
        got, want = over_http.as_numpy(name), over_grpc.as_numpy(name)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    response = over_http.get_response()
    assert response["id"] == "r-7"
    layout = {k: v for k, v in response["parameters"].items()}
    want = {
        k: next(iter(v.values())) for k, v in over_grpc.get_response(True)["parameters"].items()
    }
    assert {k: str(v) for k, v in layout.items()} == {k: str(v) for k, v in want.items()}
    assert layout["formula"] == "flat = h*768 + w*32 + c"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_and_default_outputs_equal_grpc(http, grpc_client, binary: bool):
    batch = images(2, seed=2)
    got = http_infer(http, batch, ["digit"], binary, class_count=3).as_numpy("digit")
    want = grpc_infer(grpc_client, batch, ["digit"], class_count=3).as_numpy("digit")
    assert [[str(v if isinstance(v, str) else v.decode()) for v in row] for row in got] == [
        [v.decode() for v in row] for row in want
    ]
    # No outputs named: tritonclient asks for binary_data_output, and gets the prediction.
    plain = http_infer(http, batch, [], binary)
    assert plain.get_response()["outputs"][0]["name"] == "digit"
    np.testing.assert_allclose(
        plain.as_numpy("digit"),
        grpc_infer(grpc_client, batch, []).as_numpy("digit"),
        atol=1e-5,
        rtol=0,
    )


def test_versioned_route_and_wrong_version(http, rest_server: ServerProcess):
    batch = images(1)
    tensor = triton_http.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    assert http.infer("digits", [tensor], model_version="1").as_numpy("digit").shape == (1, 10)
    with pytest.raises(InferenceServerException, match="has no version '7'") as raised:
        http.infer("digits", [tensor], model_version="7")
    assert raised.value.status() == "404"


def infer_url(server: ServerProcess) -> str:
    return f"{server.http_url}/v2/models/digits/infer"


def binary_body(array: np.ndarray, size: int | None = None) -> tuple[bytes, int]:
    data = array.astype("<f4").tobytes()
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(data) if size is None else size},
            }
        ],
    }
    head = json.dumps(header).encode()
    return head + data, len(head)


def test_truncated_binary_data_and_wrong_header_length(rest_server: ServerProcess, grpc_client):
    url = infer_url(rest_server)
    body, head = binary_body(images(1))
    cases = [
        (
            body[:-100],
            str(head),
            "binary_data_size 27648 from byte 0 of the binary data, which has only 27548 bytes",
        ),
        (
            body + b"xyz",
            str(head),
            "27651 bytes of binary data after the JSON header, but the inputs' "
            "binary_data_size parameters add up to 27648",
        ),
        (body, str(head + 5), "is not JSON"),
        (body, str(len(body) + 1), "Inference-Header-Content-Length is"),
        (body, "many", "Inference-Header-Content-Length is 'many'"),
    ]
    for data, length, message in cases:
        reply = requests.post(
            url, data=data, headers={"Inference-Header-Content-Length": length}, timeout=TIMEOUT
        )
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"], reply.text
    # Still serving.
    ok, head = binary_body(images(1))
    reply = requests.post(
        url, data=ok, headers={"Inference-Header-Content-Length": str(head)}, timeout=TIMEOUT
    )
    assert reply.status_code == 200, reply.text
    assert int(reply.headers["Inference-Header-Content-Length"]) < len(reply.content)
