"""flatscope's own Inspect and Predict over HTTP in JSON, against the gRPC client."""

from __future__ import annotations

import numpy as np
import requests
from payloads import images
from processes import ServerProcess

TIMEOUT = 60
MODEL = "/flatscope/v1/models/digits"


def get(server: ServerProcess, path: str) -> requests.Response:
    return requests.get(server.http_url + MODEL + path, timeout=TIMEOUT)


def post_text(server: ServerProcess, path: str, body: str) -> requests.Response:
    """POSTs ``body`` as it is written (UTF-8), JSON or not."""
    return requests.post(
        server.http_url + MODEL + path,
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )


def test_layout_and_coordinates_equal_grpc_inspect(rest_server: ServerProcess):
    with rest_server.client() as client:
        seen = client.inspect(images(1), coordinate_start=5000, coordinate_count=4)
    reply = get(rest_server, "/layout?coordinate_start=5000&coordinate_count=4")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    layout = body["layout"]
    assert layout["source_shape"] == list(seen.layout.source_shape)
    assert layout["strides"] == list(seen.layout.strides)
    assert layout["formula"] == seen.layout.formula
    assert layout["flat_size"] == seen.layout.flat_size
    assert body["coordinates"] == seen.coordinates.tolist()
    one = get(rest_server, "/layout?flat_index=835").json()
    assert one["source_index"] == [1, 2, 3]
    back = get(rest_server, "/layout?source_index=1,2,3").json()
    assert back["flat_index"] == 835


def test_layout_errors(rest_server: ServerProcess):
    cases = [
        ("/layout?flat_index=18432", "flat index 18432 is outside [0, 18432)"),
        ("/layout?source_index=1,2", "source index (1, 2) has 2 entries"),
        ("/layout?source_index=a", "not comma-separated integers"),
        ("/layout?layer=pool", "layer 'pool' is a MaxPooling2D, not a Flatten layer"),
        ("/layout?coordinate_count=-1", "coordinate_count is -1"),
        ("/layout?flatindex=3", 'unknown query parameter "flatindex"; expected one of layer,'),
        ("/layout?flat_index=1&flat_index=9", 'query parameter "flat_index" is given more than'),
    ]
    for path, message in cases:
        reply = get(rest_server, path)
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"]
    reply = get(rest_server, "/layout?layer=nothing")
    assert reply.status_code == 404


def test_inspect_and_predict_equal_grpc(rest_server: ServerProcess):
    batch = images(2, seed=9)
    with rest_server.client() as client:
        want = client.inspect(batch, include_source=True, coordinate_count=3)
        predicted = client.predict(batch)
    reply = requests.post(
        rest_server.http_url + MODEL + ":inspect",
        json={
            "inputs": batch.tolist(),
            "include_source": True,
            "include_flattened": True,
            "coordinate_count": 3,
        },
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    got = reply.json()
    np.testing.assert_allclose(got["outputs"], want.outputs, atol=1e-5)
    np.testing.assert_allclose(got["flattened"], want.flattened, atol=1e-5)
    np.testing.assert_allclose(got["source"], want.source, atol=1e-5)
    assert got["classes"] == want.classes.tolist()
    assert got["coordinates"] == want.coordinates.tolist()
    small = requests.post(
        rest_server.http_url + MODEL + ":inspect", json={"inputs": batch.tolist()}, timeout=TIMEOUT
    ).json()
    assert "flattened" not in small and "source" not in small
    reply = requests.post(
        rest_server.http_url + MODEL + ":predict", json={"inputs": batch.tolist()}, timeout=TIMEOUT
    )
    np.testing.assert_allclose(reply.json()["outputs"], predicted.outputs, atol=1e-5)
    assert reply.json()["classes"] == predicted.classes.tolist()
    bad = requests.post(
        rest_server.http_url + MODEL + ":inspect",
        json={"inputs": batch.tolist(), "include_source": "yes"},
        timeout=TIMEOUT,
    )
    assert bad.status_code == 400 and "'include_source' is \"yes\"" in bad.json()["error"]
    missing = requests.post(rest_server.http_url + MODEL + ":predict", json={}, timeout=TIMEOUT)
    assert missing.status_code == 400 and "inputs is not set" in missing.json()["error"]


def test_unknown_fields_are_400_naming_them(rest_server: ServerProcess):
    # A misspelt option must not be ignored: the client would never learn why.
    inputs = images(1).tolist()
    for path, body, field in [
        (":inspect", {"inputs": inputs, "include_sources": True}, "include_sources"),
        (":predict", {"inputs": inputs, "layer": "flatten"}, "layer"),
    ]:
        reply = requests.post(rest_server.http_url + MODEL + path, json=body, timeout=TIMEOUT)
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]
        assert f'unknown field "{field}"' in message and "expected one of inputs" in message
    # Options belong in the body; in the query they would be ignored.
    for path in (":inspect?include_flattened=true", ":predict?include_source=true"):
        body = {"inputs": inputs}
        reply = requests.post(rest_server.http_url + MODEL + path, json=body, timeout=TIMEOUT)
        assert reply.status_code == 400, reply.text
        assert "unknown query parameter" in reply.json()["error"]
        assert "this route takes none" in reply.json()["error"]


def test_nan_in_a_body_says_json_has_none(rest_server: ServerProcess):
    # "é" before the literal: the position orjson gives counts characters, not bytes.
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = '{"note": "é", "inputs": [[[[0.5], [LITERAL]]]]}'.replace("LITERAL", literal)
        reply = post_text(rest_server, ":predict", body)
        assert reply.status_code == 400, reply.text
        assert "JSON has no NaN or Infinity" in reply.json()["error"]


def test_other_json_errors_get_no_nan_hint(rest_server: ServerProcess):
    for body in ('{"inputs": [1,], "info": 1}', '{"inputs": [1, 2] "nanny": 3}'):
        reply = post_text(rest_server, ":predict", body)
        assert reply.status_code == 400, reply.text
        assert "the request body is not JSON" in reply.json()["error"]
        assert "NaN" not in reply.json()["error"]
