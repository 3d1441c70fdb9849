"""TLS and mutual TLS, with a CA and certificates made at test time.

A real server process requires client certificates signed by its CA (set through FLATSCOPE_*
variables); the Python client and the command line connect with the right files and are
refused without them or with another CA's. A server in this process serves TLS alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from conftest import ServerThread, settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from processes import (
    ServerProcess,
    assert_one_line_error,
    flatscope,
    flatscope_all,
    free_port,
)

from flatscope.client import Client

TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Issued:
    """A PEM certificate and its key, also written to files."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path


class Authority:
    """A certificate authority of its own, valid for a day."""

    def __init__(self, name: str, folder: Path):
        self._folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.file = folder / f"{name}.pem"
        self.file.write_bytes(self.pem)

    def issue(self, name: str, server: bool) -> Issued:
        """A server certificate for 127.0.0.1 and localhost, or a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_file, key_file = self._folder / f"{name}.crt", self._folder / f"{name}.key"
        cert_file.write_bytes(cert)
        key_file.write_bytes(key_pem)
        return Issued(cert, key_pem, cert_file, key_file)

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority("ca", folder), Authority("other-ca", folder)
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        stranger=other.issue("stranger", server=False),
    )


def client_files(pki: Pki, issued: Issued | None = None, ca: Authority | None = None) -> dict:
    """Client keyword arguments: trust ``ca`` (the right one by default), present ``issued``."""
    options = {"root_certificates": (ca or pki.ca).pem}
    if issued is not None:
        options.update(private_key=issued.key, certificate_chain=issued.cert)
    return options


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("mtls") / "serve.log",
        env={
            "FLATSCOPE_TLS_CERT": str(pki.server.cert_file),
            "FLATSCOPE_TLS_KEY": str(pki.server.key_file),
            "FLATSCOPE_TLS_CLIENT_CA": str(pki.ca.file),
        },
        client=client_files(pki, pki.client),
        http=True,
    )
    with process.serving() as started:
        yield started


def images(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(0).random((batch, 48, 48, 3), dtype=np.float32)


def refused(target: str, **options) -> grpc.RpcError:
    with (
        Client(target, timeout=TIMEOUT, **options) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.metadata()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return caught.value


# Mutual TLS, in a server process.


def test_mtls_server_says_so_in_its_log(mtls_server: ServerProcess):
    assert re.search(r"listening on 127\.0\.0\.1:\d+ \(gRPC, mutual TLS\)", mtls_server.log())


def test_client_with_a_certificate_of_the_ca_is_served(mtls_server: ServerProcess, pki: Pki):
    with Client(mtls_server.target, timeout=TIMEOUT, **client_files(pki, pki.client)) as client:
        assert client.health() == "SERVING"
        assert client.predict(images(2)).outputs.shape == (2, 10)


@pytest.mark.parametrize(
    "who",
    ["no-certificate", "certificate-of-another-ca", "plaintext", "trusts-another-ca"],
)
def test_mtls_refuses_clients_without_a_certificate_of_its_ca(
    mtls_server: ServerProcess, pki: Pki, who: str
):
    options = {
        "no-certificate": client_files(pki),
        "certificate-of-another-ca": client_files(pki, pki.stranger),
        "plaintext": {},
        "trusts-another-ca": client_files(pki, pki.client, ca=pki.other_ca),
    }[who]
    refused(mtls_server.target, **options)
    # ... and goes on serving those who have one.
    with Client(mtls_server.target, timeout=TIMEOUT, **client_files(pki, pki.client)) as client:
        assert client.health() == "SERVING"


def test_http_serves_mutual_tls_with_the_same_flags(mtls_server: ServerProcess, pki: Pki):
    assert re.search(r"listening on 127\.0\.0\.1:\d+ \(HTTP/REST, https\)", mtls_server.log())
    url = f"https://127.0.0.1:{mtls_server.http_port}/v2/health/ready"
    client = (str(pki.client.cert_file), str(pki.client.key_file))
    reply = requests.get(url, verify=str(pki.ca.file), cert=client, timeout=TIMEOUT)
    assert reply.json() == {"ready": True}
    stranger = (str(pki.stranger.cert_file), str(pki.stranger.key_file))
    for options in ({}, {"cert": stranger}):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=str(pki.ca.file), timeout=TIMEOUT, **options)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https", "http"), timeout=TIMEOUT)
    assert requests.get(url, verify=str(pki.ca.file), cert=client, timeout=TIMEOUT).ok


def tls_flags(pki: Pki, issued: Issued | None) -> list[str]:
    flags = ["--tls-ca", str(pki.ca.file)]
    if issued is not None:
        flags += ["--tls-cert", str(issued.cert_file), "--tls-key", str(issued.key_file)]
    return flags


def test_cli_client_commands_take_tls_files(mtls_server: ServerProcess, pki: Pki):
    target = ["--target", mtls_server.target]
    health = flatscope("health", *target, *tls_flags(pki, pki.client))
    assert health.returncode == 0, health.stderr
    assert health.stdout.strip() == "SERVING"
    predict = flatscope("predict", *target, *tls_flags(pki, pki.client))
    assert predict.returncode == 0, predict.stderr
    assert re.search(r"^class [0-9] ", predict.stdout, re.MULTILINE)

    for flags in (tls_flags(pki, None), tls_flags(pki, pki.stranger), []):
        result = flatscope("metadata", *target, "--timeout", "5", *flags)
        assert result.returncode == 1
        assert_one_line_error(result.stderr, "flatscope: UNAVAILABLE: ")


def test_cli_needs_tls_cert_and_key_together(pki: Pki):
    result = flatscope(
        "health", "--tls-ca", str(pki.ca.file), "--tls-cert", str(pki.client.cert_file)
    )
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "--tls-cert and --tls-key together")


# TLS alone, and bad TLS files at startup.


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[ServerThread]:
    server = ServerThread(
        settings(tls_cert=pki.server.cert_file, tls_key=pki.server.key_file)
    ).load_model()
    yield server
    server.stop()


def test_tls_server_serves_clients_that_trust_its_ca(tls_server: ServerThread, pki: Pki):
    with Client(tls_server.target, timeout=TIMEOUT, root_certificates=pki.ca.pem) as client:
        assert client.predict(images()).outputs.shape == (1, 10)
    # Without client authentication, a client certificate is not needed (nor checked).
    with Client(tls_server.target, timeout=TIMEOUT, **client_files(pki, pki.stranger)) as client:
        assert client.health() == "SERVING"


@pytest.mark.parametrize("who", ["plaintext", "trusts-another-ca"])
def test_tls_server_refuses_plaintext_and_clients_that_do_not_trust_it(
    tls_server: ServerThread, pki: Pki, who: str
):
    options = {} if who == "plaintext" else {"root_certificates": pki.other_ca.pem}
    refused(tls_server.target, **options)


def test_unusable_tls_files_stop_startup_with_one_line_and_exit_1(pki: Pki, tmp_path: Path):
    serve = ["serve", "--port", "0", "--metrics-port", "0"]
    cases = {
        "missing file": (
            ["--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "no.key")],
            ["cannot read a TLS file", "no.crt"],
        ),
        "key of another certificate": (
            ["--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.client.key_file)],
            ["cannot listen on", "is not the PEM key of"],
        ),
    }
    results = flatscope_all(*([*serve, *flags] for flags, _ in cases.values()))
    for (case, (_, fragments)), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 1, f"{case}: {result.stderr}"
        assert_one_line_error(result.stderr, "cannot start: ", *fragments)


def test_tls_client_ca_needs_a_server_certificate(pki: Pki):
    result = flatscope("serve", "--tls-client-ca", str(pki.ca.file))
    assert result.returncode == 2, result.stderr
    assert "--tls-client-ca needs --tls-cert and --tls-key" in result.stderr


# The metrics endpoint on an address of its own.


def test_metrics_endpoint_binds_to_its_own_address():
    # 127.0.0.2 is loopback too on Linux: gRPC on one address, /metrics on another.
    port = free_port()
    server = ServerThread(settings(metrics_port=port, metrics_host="127.0.0.2"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=TIMEOUT) as reply:
            assert b"grpc_server_started_total" in reply.read()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT)
    finally:
        server.stop()


def test_tls_handshakes_count_against_the_http_cap_and_end_in_time(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
):
    """Connections that never start their TLS handshake count against
    --http-max-connections from the moment they are accepted (aiohttp sees a connection
    only once its handshake is done) and are closed after --receive-timeout."""
    cap, timeout = 5, 2.0
    process = ServerProcess(
        tmp_path_factory.mktemp("tls-cap") / "serve.log",
        *("--http-max-connections", str(cap), "--receive-timeout", str(timeout)),
        env={
            "FLATSCOPE_TLS_CERT": str(pki.server.cert_file),
            "FLATSCOPE_TLS_KEY": str(pki.server.key_file),
        },
        client=client_files(pki),
        http=True,
    )
    with process.serving() as server:
        url = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
        opened = time.monotonic()
        silent = [
            socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT)
            for _ in range(cap)
        ]
        reply = requests.get(url, verify=str(pki.ca.file), timeout=TIMEOUT)
        assert reply.status_code == 503, reply.text
        assert "--http-max-connections" in reply.json()["error"]
        for sock in silent:  # closed by the server once the handshake's time is up
            assert sock.recv(1024) == b""
            sock.close()
        assert timeout <= time.monotonic() - opened < timeout + 10
        assert requests.get(url, verify=str(pki.ca.file), timeout=TIMEOUT).ok
