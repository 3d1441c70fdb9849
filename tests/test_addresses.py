"""IPv6: a server told ``--host ::1`` (or ``[::1]``, as in URLs) serves gRPC, HTTP and /metrics."""

from __future__ import annotations

import json
import socket
import urllib.request

import keras
import numpy as np
import pytest

from flatscope.client import Client
from flatscope.settings import Settings


def _free_port_v6() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return sock.getsockname()[1]


def _ipv6_loopback() -> bool:
    try:
        _free_port_v6()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_server_on_ipv6_loopback_answers_every_port(serve_model, host):
    inputs = keras.Input((4, 4, 2), name="image")
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    http_port, metrics_port = _free_port_v6(), _free_port_v6()
    server = serve_model(
        keras.Model(inputs, outputs, name="v6"),
        host=host,
        http_port=http_port,
        metrics_port=metrics_port,
    )
    with Client(f"[::1]:{server.port}") as client:
        assert client.predict(np.ones((1, 4, 4, 2), np.float32)).outputs.shape == (1, 3)
    with urllib.request.urlopen(f"http://[::1]:{http_port}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://[::1]:{http_port}/v2/models/v6", timeout=10) as r:
        assert json.load(r)["name"] == "v6"
    with urllib.request.urlopen(f"http://[::1]:{metrics_port}/metrics", timeout=10) as r:
        assert b"flatscope_" in r.read()


@pytest.mark.parametrize(
    ("given", "kept"), [("[::1]", "::1"), ("::1", "::1"), (" 0.0.0.0", "0.0.0.0")]
)
def test_addresses_are_kept_without_brackets(given, kept):
    assert Settings(host=given, metrics_host=given).host == kept
    assert Settings(metrics_host=given).metrics_host == kept


def test_an_empty_model_variable_means_the_embedded_model(monkeypatch):
    monkeypatch.setenv("FLATSCOPE_MODEL", "")
    assert Settings().model is None
    monkeypatch.setenv("FLATSCOPE_MODEL", "  ")
    assert Settings().model is None
