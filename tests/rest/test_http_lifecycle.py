"""The HTTP port's life: metrics by route, a busy port, drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
import time

import requests
from payloads import images
from processes import ServerProcess, assert_one_line_error, flatscope

TIMEOUT = 60


def test_requests_are_counted_by_route_template_and_code(rest_server: ServerProcess):
    url = rest_server.http_url
    body = {"instances": images(1).tolist()}
    assert requests.post(url + "/v1/models/digits:predict", json=body, timeout=TIMEOUT).ok
    assert (
        requests.post(url + "/v1/models/digits:predict", json={}, timeout=TIMEOUT).status_code
        == 400
    )
    assert requests.get(url + "/no/such/route/42", timeout=TIMEOUT).status_code == 404
    ok = {"route": "/v1/models/{name}:predict", "method": "POST", "code": "200"}
    assert rest_server.metric("flatscope_http_requests_total", ok) >= 1
    assert rest_server.metric("flatscope_http_requests_total", {**ok, "code": "400"}) >= 1
    unmatched = {"route": "unmatched", "method": "GET", "code": "404"}
    assert rest_server.metric("flatscope_http_requests_total", unmatched) >= 1
    seconds = {"route": "/v1/models/{name}:predict", "method": "POST"}
    assert rest_server.metric("flatscope_http_request_duration_seconds_count", seconds) >= 2


def test_a_busy_http_port_stops_startup_with_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = flatscope("serve", "--port", "0", "--metrics-port", "0", "--http-port", str(port))
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr, f"cannot serve HTTP on 127.0.0.1:{port}", "in use", "--http-port"
    )


def test_sigterm_drains_http_like_grpc(tmp_path):
    """Readiness turns 503 at once; calls go on for the delay, then are refused with 503
    (retry elsewhere) or answered; a call in flight finishes; the process exits 0."""
    server = ServerProcess(
        tmp_path / "serve.log", "--shutdown-delay", "1.5", "--shutdown-grace", "5", http=True
    )
    with server.serving():
        url = server.http_url
        body = {"inputs": images(64).tolist(), "include_source": True}
        statuses: list[int] = []
        errors: list[Exception] = []

        def call_until_closed() -> None:
            while True:
                try:
                    reply = requests.post(
                        url + "/flatscope/v1/models/digits:inspect", json=body, timeout=TIMEOUT
                    )
                except requests.ConnectionError as exc:
                    errors.append(exc)
                    return
                statuses.append(reply.status_code)

        callers = [threading.Thread(target=call_until_closed) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = requests.get(url + "/v2/health/ready", timeout=TIMEOUT)
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        for caller in callers:
            caller.join(timeout=TIMEOUT)
        assert server.proc.wait(timeout=TIMEOUT) == 0
    assert statuses and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 4, statuses  # served during the delay
    assert len(errors) == 4  # each caller ended on the closed port, not on a failed call


def test_connections_that_never_send_a_request_are_capped_then_closed(tmp_path):
    """Slow-loris: connections that send part of a request head and stop hold at most
    --http-max-connections, for at most --http-idle-timeout; one beyond the cap is answered
    503 (with the flag in its message) and the gRPC port, which shares the process's
    descriptors, keeps serving."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cap, idle = 20, 3.0
    server = ServerProcess(
        tmp_path / "serve.log",
        *("--http-max-connections", str(cap), "--http-idle-timeout", str(idle)),
        http=True,
        metrics=True,
    )
    with server.serving():
        opened = time.monotonic()
        held = []
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT)
            sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")  # no end
            held.append(sock)
        # The server counts a connection once its loop has accepted it: ask until it has.
        while (reply := requests.get(server.http_url + "/v2", timeout=TIMEOUT)).ok:
            assert time.monotonic() - opened < idle, "the cap never refused a connection"
        assert reply.status_code == 503
        assert "--http-max-connections" in reply.json()["error"]
        assert server.metric("flatscope_requests_dropped_total", {"reason": "connections"}) >= 1
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for sock in held:  # closed by the server once idle has passed since it opened
            assert sock.recv(1024) == b""
            sock.close()
        assert idle <= time.monotonic() - opened < idle + 10
        assert requests.get(server.http_url + "/v2/health/ready", timeout=TIMEOUT).ok


def test_connections_of_clients_that_never_read_their_answers_are_closed(tmp_path):
    """Clients that pipeline requests and never read the answers leave the server's
    writes stuck (aiohttp waits on them with no deadline): the kernel ends such a
    connection once nothing sent has been taken for --http-idle-timeout."""
    cap, idle = 5, 3.0
    server = ServerProcess(
        tmp_path / "serve.log",
        *("--http-max-connections", str(cap), "--http-idle-timeout", str(idle)),
        http=True,
    )
    request = b"GET /v1/models/digits/metadata HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    with server.serving():
        stuck = []
        for _ in range(cap):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.http_port))
            sock.setblocking(False)
            try:  # until the server stops reading: its answers fill both buffers
                for _ in range(500):
                    sock.send(request)
            except BlockingIOError:
                pass
            stuck.append(sock)
        started = time.monotonic()
        url = server.http_url + "/v2/health/ready"
        assert requests.get(url, timeout=TIMEOUT).status_code == 503  # the cap is full
        while (code := requests.get(url, timeout=TIMEOUT).status_code) != 200:
            assert code == 503
            assert time.monotonic() - started < idle + 15, "stuck connections were kept"
            time.sleep(0.5)
        for sock in stuck:
            sock.close()
