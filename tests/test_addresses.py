"""IPv6: a server told ``--host ::1`` (or ``[::1]``, as in URLs) serves gRPC, HTTP and /metrics."""

from __future__ import annotations

import json
import socket
import urllib.request

import keras
import numpy as np
import pytest
from pydantic import ValidationError

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
def test_a_server_on_ipv6_loopback_answers_every_port(serve_model, caplog, host):
    caplog.set_level("INFO", logger="flatscope")
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
    # Logged as addresses are written in URLs, which "::1:8500" is not.
    assert f"listening on [::1]:{server.port} (gRPC" in caplog.text
    assert f"listening on [::1]:{http_port} (HTTP" in caplog.text
    assert f"metrics on http://[::1]:{metrics_port}/metrics" in caplog.text


@pytest.mark.parametrize(
    ("given", "kept"), [("[::1]", "::1"), ("::1", "::1"), (" 0.0.0.0", "0.0.0.0")]
)
def test_addresses_are_kept_without_brackets(given, kept):
    assert Settings(host=given, metrics_host=given).host == kept
    assert Settings(metrics_host=given).metrics_host == kept


@pytest.mark.parametrize("given", ["[[::1]]", "[::1", "::1]", "[::1]:8500"])
def test_bracket_misuse_is_refused(given):
    with pytest.raises(ValidationError, match="is not an address; write IPv6 as ::1 or"):
        Settings(host=given)


def test_empty_variables_mean_unset(monkeypatch):
    # As a deployment template leaves them: FLATSCOPE_MODEL= is the embedded model.
    for name in ("MODEL", "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "HOST"):
        monkeypatch.setenv(f"FLATSCOPE_{name}", " ")
    settings = Settings()
    assert settings.model is None and settings.tls_cert is None and settings.tls_key is None
    assert settings.tls_client_ca is None and settings.host == "127.0.0.1"
