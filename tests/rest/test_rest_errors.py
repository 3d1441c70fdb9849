"""Bad HTTP requests get the HTTP status that maps gRPC's, with gRPC's message, and the
server keeps serving; limits apply before a body is read."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from payloads import images
from processes import ServerProcess
from tritonclient.utils import InferenceServerException

TIMEOUT = 60


def kserve_values(values: list) -> dict:
    """A KServe JSON body whose one input holds ``values`` as they are."""
    tensor = {"name": "image", "datatype": "FP32", "shape": [len(values)], "data": values}
    return {"inputs": [tensor]}


def kserve_json(array: np.ndarray, shape=None, **extra) -> dict:
    tensor = {
        "name": "image",
        "datatype": "FP32",
        "shape": list(array.shape) if shape is None else shape,
        "data": array.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def grpc_message(server: ServerProcess, array: np.ndarray, model="digits", outputs=()) -> str:
    client = triton_grpc.InferenceServerClient(server.target)
    tensor = triton_grpc.InferInput("image", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    wanted = [triton_grpc.InferRequestedOutput(name) for name in outputs] or None
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, [tensor], outputs=wanted)
    finally:
        client.close()
    return raised.value.message()


def post(server: ServerProcess, path: str, **kwargs) -> requests.Response:
    return requests.post(server.http_url + path, timeout=TIMEOUT, **kwargs)


@pytest.mark.parametrize(
    "path",
    ["/v2/models/digits/infer", "/v1/models/digits:predict", "/flatscope/v1/models/digits:inspect"],
)
def test_a_body_that_is_not_json_is_400_with_what_was_expected(rest_server, path):
    reply = post(rest_server, path, data=b"\xff{not json")
    assert reply.status_code == 400
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "the request body is not JSON" in reply.json()["error"]
    assert "expected" in reply.json()["error"]


def test_errors_carry_grpc_messages_and_mapped_codes(rest_server: ServerProcess):
    small = images(1)[:, :28, :28, 0]
    reply = post(rest_server, "/v2/models/digits/infer", json=kserve_json(small))
    assert reply.status_code == 400
    assert reply.json()["error"] == grpc_message(rest_server, small)
    assert reply.json()["error"] == (
        "input 'image' shape (1, 28, 28) has rank 3; expected (batch, 48, 48, 3)"
    )
    batch = images(1)
    reply = post(rest_server, "/v2/models/other/infer", json=kserve_json(batch))
    assert reply.status_code == 404
    assert reply.json()["error"] == grpc_message(rest_server, batch, model="other")
    reply = post(
        rest_server,
        "/v2/models/digits/infer",
        json=kserve_json(batch, outputs=[{"name": "nope"}]),
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == grpc_message(rest_server, batch, outputs=["nope"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (kserve_json(images(1), shape=[1, 48, 48]), "shape (1, 48, 48) has rank 3"),
        (kserve_json(images(1), shape="big"), 'has shape "big"; expected a list of ints'),
        ({"inputs": [{"name": "image", "datatype": "INT8", "shape": [1]}]}, "the model takes FP32"),
        ({"inputs": [{"name": "image", "shape": [1]}]}, "input 'image' has no 'datatype'; the"),
        ({**kserve_json(images(1)), "id": 7}, "'id' is 7; expected a JSON string"),
        (
            kserve_json(
                images(1),
                outputs=[{"name": "digit"}, {"name": "digit", "parameters": {"classification": 2}}],
            ),
            "output 'digit' is requested twice, with no 'classification' and with 'classif",
        ),
        ({"inputs": "x"}, "'inputs' is a JSON str; expected a list of tensors"),
        ({"outputs": []}, "'inputs' is missing"),
        (
            {**kserve_json(images(1)), "parameters": {"sequence_id": 3}},
            "the request sets parameter 'sequence_id', which this server does not honour",
        ),
        (
            {
                "inputs": [
                    {"name": "image", "datatype": "FP32", "shape": [1, 2], "data": [[1], [2, 3]]}
                ]
            },
            "the 'data' of input 'image' is not a list of numbers",
        ),
        # JSON has no NaN: Python's json writes JavaScript's literal, which is refused.
        (kserve_json(np.full((1, 48, 48, 3), np.nan, np.float32)), "the request body is not JSON"),
        # numpy would read "0.5" and true as 0.5 and 1.0, and null as NaN.
        (
            kserve_values(["0.5", "1"]),
            "the 'data' of input 'image' holds strings; expected JSON numbers",
        ),
        (
            kserve_values([True, False]),
            "the 'data' of input 'image' holds true/false; expected JSON numbers",
        ),
        (
            kserve_values([0.5, None]),
            "the 'data' of input 'image' holds null, or values of mixed types",
        ),
    ],
    ids=[
        "rank",
        "shape-type",
        "datatype",
        "no-datatype",
        "id-number",
        "output-twice",
        "inputs-type",
        "no-inputs",
        "parameter",
        "ragged",
        "nan",
        "strings",
        "booleans",
        "null",
    ],
)
def test_malformed_kserve_bodies_are_400(rest_server, body, message):
    data = json.dumps(body)
    reply = post(rest_server, "/v2/models/digits/infer", data=data)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v1/models/digits:predict"])
def test_strings_as_numbers_are_400_in_the_row_format_too(rest_server, path):
    image = [[["0.5"] * 3] * 48] * 48
    body = {"instances": [image]} if path.startswith("/v1") else kserve_json(np.zeros(1))
    if not path.startswith("/v1"):
        body["inputs"][0].update(shape=[1, 48, 48, 3], data=[image])
    reply = post(rest_server, path, data=json.dumps(body))
    assert reply.status_code == 400, reply.text
    assert "holds strings; expected JSON numbers" in reply.json()["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(rest_server, encoding):
    before = rest_server.log()
    body = json.dumps(kserve_json(images(1))).encode()  # plain JSON, declared compressed
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    reply = post(rest_server, "/v2/models/digits/infer", data=body, headers=headers)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]
    assert f"could not be decoded (Content-Encoding: {encoding})" in message
    assert "send it encoded as declared" in message
    assert "internal error" not in message
    # The server still serves, and logged no error for it (aiohttp would log its own
    # reading of the rest of the body, with a traceback).
    ok = post(rest_server, "/v2/models/digits/infer", data=json.dumps(kserve_json(images(1))))
    assert ok.status_code == 200, ok.text
    added = rest_server.log()[len(before) :]
    assert " ERROR " not in added and "Traceback" not in added, added[:2000]


def test_requests_aiohttp_cannot_parse_log_no_traceback(rest_server: ServerProcess):
    before = rest_server.log()
    for head in (
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    ):
        address = ("127.0.0.1", rest_server.http_port)
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            sock.sendall(head)
            answer = sock.recv(65536)
        assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    time.sleep(0.2)  # the log line, if any, is written after the answer
    added = rest_server.log()[len(before) :]
    assert "Error handling request" not in added and "Traceback" not in added, added[:2000]
    assert requests.get(rest_server.http_url + "/v2/health/ready", timeout=TIMEOUT).ok


def test_unknown_routes_and_methods_answer_json(rest_server: ServerProcess):
    reply = requests.get(rest_server.http_url + "/v3/nothing", timeout=TIMEOUT)
    assert reply.status_code == 404
    assert reply.json()["error"].startswith("no route GET /v3/nothing; the APIs are")
    reply = requests.get(rest_server.http_url + "/v2/models/digits/infer", timeout=TIMEOUT)
    assert reply.status_code == 405 and "POST" in reply.headers["Allow"]
    assert "GET is not allowed on /v2/models/digits/infer" in reply.json()["error"]


def raw_request(port: int, path: str, length: int) -> socket.socket:
    """Sends only the headers of a POST that declares ``length`` bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def test_a_huge_declared_length_is_refused_before_the_body(rest_server: ServerProcess):
    start = time.monotonic()
    with raw_request(rest_server.http_port, "/v2/models/digits/infer", 10**10) as sock:
        status, body = read_reply(sock)
    assert status == 413
    assert "declares (Content-Length) 10000000000 bytes" in body["error"]
    assert "--max-receive-message-bytes" in body["error"]
    assert time.monotonic() - start < 10  # answered without waiting for the body
    assert post(rest_server, "/v2/models/digits/infer", json=kserve_json(images(1))).ok


def test_declared_lengths_are_charged_to_the_memory_budget_before_the_body(
    rest_server: ServerProcess,
):
    # 1 GiB budget: requests get half; each declares 15 MiB (x3 copies: 45 MiB).
    length = 15 * 1024 * 1024
    stalled = []
    try:
        status = 0
        for _ in range(20):
            sock = raw_request(rest_server.http_port, "/v1/models/digits:predict", length)
            stalled.append(sock)
            sock.settimeout(0.5)
            try:
                status, body = read_reply(sock)
            except TimeoutError:
                continue  # admitted: the server waits for its body
            break
        assert status == 429, status
        assert "--memory-budget" in body["error"]
        assert 10 <= len(stalled) <= 12  # (512 MiB / 45 MiB) held, then refused
        assert rest_server.metric("flatscope_requests_dropped_total", {"reason": "memory"}) >= 1
    finally:
        for sock in stalled:
            sock.close()
    # Closed uploads give their share back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = post(
            rest_server, "/v1/models/digits:predict", json={"instances": images(1).tolist()}
        )
        if reply.ok:
            break
        time.sleep(0.2)
    assert reply.ok, reply.text
    # The uploads that left are counted as such (499), and logged as nothing worse.
    gone = {"route": "/v1/models/{name}:predict", "method": "POST", "code": "499"}
    assert rest_server.metric("flatscope_http_requests_total", gone) >= len(stalled) - 1
    assert "Traceback" not in rest_server.log()


def test_a_body_that_stalls_ends_with_408_after_the_receive_timeout(rest_server):
    start = time.monotonic()
    with raw_request(rest_server.http_port, "/v2/models/digits/infer", 1000) as sock:
        sock.sendall(b'{"inputs": [')
        status, body = read_reply(sock)
    assert status == 408
    assert "did not arrive within 10 s (--receive-timeout)" in body["error"]
    assert 9 < time.monotonic() - start < 30
    assert (
        rest_server.metric("flatscope_requests_dropped_total", {"reason": "receive_timeout"}) >= 1
    )
