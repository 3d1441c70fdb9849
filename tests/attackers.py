"""Clients that misbehave on purpose, a prober that watches a server meanwhile, and its memory.

Used by ``tests/grpc/test_hostile_load.py`` (small sizes) and ``bench/hostile.py`` (full
sizes). Every attack is bounded in time and returns an :class:`AttackResult`: the final
status of each of its calls and a few facts about what it managed to do.

The raw HTTP/2 attacks speak gRPC by hand over the ``h2`` package (plaintext HTTP/2 with
prior knowledge, as gRPC's own clients do), because a gRPC client will not stall a stream,
stop half way through a message, or leave a reply unread: its library reads and acknowledges
everything it is sent. The prober runs in a child process (``python attackers.py probe``) so
that an attacker's Python work cannot delay it; only the CPUs are shared.

Run alone, the prober prints one JSON line per probe::

    python tests/attackers.py probe 127.0.0.1:8500 --shape 48,48,3
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import tensor_pb2

MiB = 1024 * 1024
PREDICT = "/flatscope.v1.ModelService/Predict"
INSPECT = "/flatscope.v1.ModelService/Inspect"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
PROBE_TIMEOUT = 1.0  # seconds a probe's Predict and health Check each get
# Channels of their own: gRPC shares one connection among channels to the same target
# unless told not to, and a probe must open a fresh one, as a new client would.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_HEALTH_REQUEST = b""  # HealthCheckRequest(service=""): every field at its default
_SERVING_REPLY = b"\x08\x01"  # HealthCheckResponse(status=SERVING), serialized


@dataclasses.dataclass
class AttackResult:
    """What an attack did.

    Attributes:
        statuses: Final outcome of each of the attacker's calls, counted: a gRPC code name,
            ``RST_STREAM(<error>)``, ``GOAWAY``, ``EOF`` (the server closed the connection),
            or ``open`` (the call was still going when the attack let go of it).
        facts: Numbers that describe the attack, e.g. how many streams the server allowed.
    """

    statuses: collections.Counter[str]
    facts: dict[str, float] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """The statuses and facts on one line, most frequent status first."""
        codes = ", ".join(f"{code} {n}" for code, n in self.statuses.most_common())
        facts = ", ".join(f"{k} {v:g}" for k, v in self.facts.items())
        return f"{codes}; {facts}" if facts else codes


# --- request bytes -------------------------------------------------------------------------


def images(shape: tuple[int, ...], batch: int) -> tensor_pb2.Tensor:
    """A batch of float32 inputs (values irrelevant: all 0.5) as a raw Tensor."""
    count = batch * _product(shape)
    raw = struct.pack("<f", 0.5) * count
    return tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[batch, *shape], raw_data=raw)


def predict_request(shape: tuple[int, ...], batch: int = 1, size: int = 0) -> bytes:
    """A serialized PredictRequest, padded up to about ``size`` bytes when that is larger.

    The padding is an unknown field (number 1000), which protobuf parsers keep and the
    server ignores: the request stays valid, so an admitted call ends OK and costs only the
    memory of its bytes.
    """
    message = pb.PredictRequest(inputs=images(shape, batch)).SerializeToString()
    pad = size - len(message) - 8
    if pad <= 0:
        return message
    return message + _varint(1000 << 3 | 2) + _varint(pad) + bytes(pad)


def inspect_request(
    shape: tuple[int, ...], batch: int, *, include_source: bool = True, typed: bool = False
) -> bytes:
    """A serialized InspectRequest; ``typed`` asks for float_values in the reply, not raw bytes."""
    return pb.InspectRequest(
        inputs=images(shape, batch),
        include_source=include_source,
        output_encoding=tensor_pb2.TENSOR_ENCODING_TYPED
        if typed
        else tensor_pb2.TENSOR_ENCODING_RAW,
    ).SerializeToString()


def grpc_message(message: bytes, declared: int | None = None) -> bytes:
    """The 5-byte gRPC message prefix (uncompressed, length) and the message.

    Args:
        message: The serialized message, or the part of it to be sent.
        declared: Length to declare in the prefix (default: ``len(message)``).
    """
    length = len(message) if declared is None else declared
    return b"\x00" + struct.pack(">I", length) + message


def model_input_shape(target: str) -> tuple[int, ...]:
    """The served model's input shape without the batch axis, from GetModelMetadata."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/flatscope.v1.ModelService/GetModelMetadata",
            response_deserializer=pb.GetModelMetadataResponse.FromString,
        )
        reply = call(pb.GetModelMetadataRequest().SerializeToString(), timeout=30)
    return tuple(reply.inputs[0].shape[1:])


# --- raw HTTP/2 ----------------------------------------------------------------------------


@dataclasses.dataclass
class RawStream:
    """One stream of a :class:`RawConnection`."""

    id: int
    sent: int = 0  # DATA bytes sent, gRPC prefix included
    received: int = 0  # DATA bytes received
    status: str = ""  # the final outcome; empty while the stream is open


class RawConnection:
    """One plaintext HTTP/2 connection on which gRPC calls are made by hand.

    A thread reads the socket and answers the server's SETTINGS and PINGs, as any client
    must; WINDOW_UPDATEs for what the server sends go out only when ``read`` is set.

    Args:
        target: ``host:port`` of the server.
        window: This side's initial stream flow-control window (SETTINGS_INITIAL_WINDOW_SIZE);
            None keeps HTTP/2's 65,535 bytes.
        read: Acknowledge received data (a client that reads its replies).
        timeout: Seconds to connect and to get the server's SETTINGS.

    Raises:
        ConnectionError: The server sent no SETTINGS within ``timeout``.
    """

    def __init__(
        self, target: str, *, window: int | None = None, read: bool = True, timeout: float = 10.0
    ):
        host, _, port = target.rpartition(":")
        self.target = target
        self.streams: dict[int, RawStream] = {}
        self.ended_by_server = ""  # GOAWAY(...) or EOF, once the server ends the connection
        self._read = read
        self._letting_go = False
        self._changed = threading.Condition()
        self._settings = threading.Event()
        self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        with self._changed:
            self._h2.initiate_connection()
            if window is not None:
                self._h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
            self._flush()
        threading.Thread(target=self._read_loop, name="h2-reader", daemon=True).start()
        if not self._settings.wait(timeout):
            self.close()
            raise ConnectionError(f"no SETTINGS from {target} in {timeout} s")

    @property
    def max_streams(self) -> int | None:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS; None when it set no limit."""
        value = self._h2.remote_settings.max_concurrent_streams
        return None if value > 2**31 else value

    def open(self, path: str, end_stream: bool = False) -> int | None:
        """Sends a gRPC request's headers; the stream id, or None when the server's limit
        on concurrent streams (or the end of the connection) leaves no room for it."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "flatscope-attacker/1"),
        ]
        with self._changed:
            if self.ended_by_server:
                return None
            stream_id = self._h2.get_next_available_stream_id()
            try:
                self._h2.send_headers(stream_id, headers, end_stream=end_stream)
            except h2.exceptions.TooManyStreamsError:
                return None
            self.streams[stream_id] = RawStream(stream_id)
            self._flush()
        return stream_id

    def send(
        self,
        stream_id: int,
        data: bytes | int,
        *,
        end_stream: bool = False,
        stall_after: float = 5.0,
    ) -> int:
        """Sends DATA as fast as flow control allows; returns the bytes sent.

        Args:
            stream_id: An open stream.
            data: The bytes, or a count of zero bytes to send.
            end_stream: End the stream with the last byte.
            stall_after: Give up when the server grants no window for this many seconds.
        """
        total = data if isinstance(data, int) else len(data)
        zeros = bytes(min(total, 4 * MiB)) if isinstance(data, int) else b""
        stream = self.streams[stream_id]
        sent = unflushed = 0
        give_up = time.monotonic() + stall_after
        with self._changed:
            while sent < total and not stream.status:
                try:
                    room = min(self._h2.local_flow_control_window(stream_id), total - sent)
                    room = min(room, self._h2.max_outbound_frame_size, len(zeros) or room)
                except h2.exceptions.ProtocolError:  # the stream or connection closed
                    break
                if room <= 0:
                    self._flush()
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                    continue
                chunk = zeros[:room] if zeros else data[sent : sent + room]
                try:
                    self._h2.send_data(
                        stream_id, chunk, end_stream=end_stream and sent + room == total
                    )
                except h2.exceptions.ProtocolError:
                    break
                sent += room
                stream.sent += room
                give_up = time.monotonic() + stall_after
                unflushed += room
                if unflushed > MiB:
                    self._flush()
                    unflushed = 0
            self._flush()
        return sent

    def let_go(self) -> None:
        """Marks the streams still open as ``open`` (held to the end) and closes."""
        with self._changed:
            self._letting_go = True
            for stream in self.streams.values():
                stream.status = stream.status or "open"
        self.close()

    def close(self) -> None:
        with self._changed:
            self._letting_go = True
            with contextlib.suppress(Exception):
                self._h2.close_connection()
                self._flush()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def statuses(self) -> collections.Counter[str]:
        """The final outcome of every stream ("" for those still open)."""
        with self._changed:
            return collections.Counter(s.status for s in self.streams.values())

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            with contextlib.suppress(OSError):
                self._sock.sendall(data)

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except OSError:
                data = b""
            with self._changed:
                try:
                    events = self._h2.receive_data(data) if data else None
                except h2.exceptions.ProtocolError as exc:
                    events, data = None, b""
                    self.ended_by_server = f"h2 error: {exc}"
                if events is None:
                    self._end_open_streams(self.ended_by_server or "EOF")
                    self._settings.set()
                    self._changed.notify_all()
                    return
                for event in events:
                    self._on(event)
                self._flush()
                self._changed.notify_all()

    def _on(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings.set()
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers = dict(event.headers)
            if stream and "grpc-status" in headers:
                stream.status = _CODE_NAMES.get(int(headers["grpc-status"]), "UNKNOWN")
            elif stream and headers.get(":status", "200") != "200":
                stream.status = f"HTTP {headers[':status']}"
        elif isinstance(event, h2.events.DataReceived):
            if stream:
                stream.received += len(event.data)
            if self._read:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset) and stream and not stream.status:
            stream.status = f"RST_STREAM({_error_name(event.error_code)})"
        elif isinstance(event, h2.events.StreamEnded) and stream and not stream.status:
            stream.status = "ended without grpc-status"
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.ended_by_server = "GOAWAY"
            self._end_open_streams("GOAWAY")

    def _end_open_streams(self, status: str) -> None:
        if self._letting_go:
            return
        for stream in self.streams.values():
            stream.status = stream.status or status


def _connect_all(target: str, count: int, **options) -> list[RawConnection]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(count, 16)) as pool:
        return list(pool.map(lambda _: RawConnection(target, **options), range(count)))


def _let_go(connections: list[RawConnection]) -> collections.Counter[str]:
    for connection in connections:
        connection.let_go()
    statuses: collections.Counter[str] = collections.Counter()
    for connection in connections:
        statuses += connection.statuses()
    return statuses


# --- the attacks ---------------------------------------------------------------------------


def stalled_streams(
    target: str, *, connections: int = 1, streams_per_connection: int = 1030, hold: float = 20.0
) -> AttackResult:
    """Opens Predict calls whose request never comes (headers only) and holds them.

    Each connection opens streams until ``streams_per_connection`` or until the server's
    SETTINGS_MAX_CONCURRENT_STREAMS stops it; then nothing is sent for ``hold`` seconds.

    Facts: streams opened, the server's advertised limit per connection (-1: none), and how
    many the server ended within the first second (refused at once).
    """
    links = _connect_all(target, connections, read=True)
    for link in links:
        for _ in range(streams_per_connection):
            if link.open(PREDICT) is None:
                break
    opened = sum(len(link.streams) for link in links)
    time.sleep(min(1.0, hold))
    ended_at_once = sum(sum(n for s, n in link.statuses().items() if s) for link in links)
    time.sleep(max(0.0, hold - 1.0))
    limit = links[0].max_streams
    return AttackResult(
        _let_go(links),
        {
            "streams asked": connections * streams_per_connection,
            "opened": opened,
            "limit per connection": -1 if limit is None else limit,
            "ended in 1 s": ended_at_once,
        },
    )


def stalled_uploads(
    target: str,
    *,
    streams: int = 20,
    declared: int = 50 * MiB,
    send: int = 49 * MiB,
    hold: float = 20.0,
    connections: int | None = None,
) -> AttackResult:
    """Predict calls that declare a ``declared``-byte message, send ``send`` bytes of it, and stall.

    Sends as much as the server's flow-control window allows (a stream whose window stays
    shut for 2 s stops there), then holds every stream until ``hold`` seconds after the
    start. One connection per stream unless ``connections`` is given.

    Facts: MiB sent in all, and the least and most any one stream got through.
    """
    links = _connect_all(target, connections or streams, read=True)
    start = time.monotonic()
    calls = [(link, link.open(PREDICT)) for link in _spread(links, streams)]

    def upload(call: tuple[RawConnection, int | None]) -> int:
        link, stream_id = call
        if stream_id is None:
            return 0
        prefix = grpc_message(b"", declared)
        return link.send(stream_id, prefix, stall_after=2.0) + link.send(
            stream_id, send, stall_after=2.0
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=streams) as pool:
        sent = list(pool.map(upload, calls))
    time.sleep(max(0.0, hold - (time.monotonic() - start)))
    return AttackResult(
        _let_go(links),
        {
            "MiB sent": round(sum(sent) / MiB, 1),
            "least MiB": round(min(sent) / MiB, 1),
            "most MiB": round(max(sent) / MiB, 1),
        },
    )


def unread_replies(
    target: str,
    shape: tuple[int, ...],
    *,
    calls: int = 48,
    batch: int = 256,
    window: int = 1024,
    hold: float = 20.0,
    connections: int | None = None,
) -> AttackResult:
    """Inspect calls (``include_source``) with big replies that their client never reads.

    Each connection announces a ``window``-byte stream window and never sends a
    WINDOW_UPDATE, so the server can send at most that much of each reply (and 65,535 bytes
    per connection). Requests are sent whole; the calls are held ``hold`` seconds after
    the last request went out. One connection per call unless ``connections`` is given.

    Facts: MiB of requests sent and KiB of replies received.
    """
    links = _connect_all(target, connections or calls, window=window, read=False)
    message = grpc_message(inspect_request(shape, batch, include_source=True))

    def call(link: RawConnection) -> int:
        stream_id = link.open(INSPECT)
        if stream_id is None:
            return 0
        return link.send(stream_id, message, end_stream=True, stall_after=10.0)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(calls, 16)) as pool:
        sent = list(pool.map(call, _spread(links, calls)))
    time.sleep(hold)
    received = sum(s.received for link in links for s in link.streams.values())
    return AttackResult(
        _let_go(links),
        {"MiB sent": round(sum(sent) / MiB, 1), "KiB received": round(received / 1024, 1)},
    )


def big_requests(
    target: str,
    shape: tuple[int, ...],
    *,
    calls: int = 100,
    size: int = 50 * MiB,
    channels: int = 10,
    timeout: float = 60.0,
) -> AttackResult:
    """``calls`` concurrent Predict calls of ``size`` bytes each (valid, padded: see
    :func:`predict_request`), from a gRPC client whose send limit allows them.

    Facts: MiB of requests in flight at once.
    """
    message = predict_request(shape, batch=1, size=size)
    options = [OWN_CONNECTION, ("grpc.max_send_message_length", 2 * size)]
    statuses = _unary_storm(target, PREDICT, [message] * calls, channels, timeout, options)
    return AttackResult(statuses, {"MiB in flight": round(calls * len(message) / MiB)})


def burst(
    target: str,
    shape: tuple[int, ...],
    *,
    calls: int = 2000,
    channels: int = 4,
    timeout: float = 60,
) -> AttackResult:
    """``calls`` batch-1 Predict calls started at once."""
    message = predict_request(shape)
    return AttackResult(
        _unary_storm(target, PREDICT, [message] * calls, channels, timeout, [OWN_CONNECTION])
    )


def deadlines(
    target: str,
    shape: tuple[int, ...],
    *,
    calls: int = 10_000,
    deadline: float = 0.001,
    channels: int = 4,
    wave: int = 250,
) -> AttackResult:
    """``calls`` batch-1 Predict calls with a ``deadline``-second deadline, ``wave`` at a time
    (all at once, most would expire in the client before they were sent)."""
    message = predict_request(shape)
    statuses: collections.Counter[str] = collections.Counter()
    with _channels(target, channels, [OWN_CONNECTION]) as stubs:
        for start in range(0, calls, wave):
            count = min(wave, calls - start)
            futures = [stubs[k % channels].future(message, timeout=deadline) for k in range(count)]
            statuses.update(_code(f) for f in futures)
    return AttackResult(statuses)


def big_message_latency(
    target: str,
    shape: tuple[int, ...],
    *,
    seconds: float = 20.0,
    batch: int = 256,
    typed: bool = True,
    health_every: float = 0.02,
) -> AttackResult:
    """Inspect calls of ``batch`` examples with ``include_source`` (typed replies by default),
    one after another for ``seconds``, while a health check every ``health_every`` seconds
    on a channel of its own measures how long the server takes to answer.

    Facts: Inspect calls made, reply MiB, and health-check latency p50, p99 and max in ms.
    """
    message = inspect_request(shape, batch, include_source=True, typed=typed)
    options = [OWN_CONNECTION, ("grpc.max_receive_message_length", 256 * MiB)]
    stop = threading.Event()
    latencies: list[float] = []
    health_codes: collections.Counter[str] = collections.Counter()

    def check_health() -> None:
        with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
            check = channel.unary_unary(HEALTH_CHECK)
            while not stop.is_set():
                begin = time.monotonic()
                try:
                    check(_HEALTH_REQUEST, timeout=10.0)
                    latencies.append(time.monotonic() - begin)
                except grpc.RpcError as exc:
                    health_codes[exc.code().name] += 1
                stop.wait(health_every)

    statuses: collections.Counter[str] = collections.Counter()
    reply_bytes = 0
    watcher = threading.Thread(target=check_health, daemon=True)
    watcher.start()
    with grpc.insecure_channel(target, options=options) as channel:
        inspect = channel.unary_unary(INSPECT)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                reply_bytes = len(inspect(message, timeout=60.0))
                statuses["OK"] += 1
            except grpc.RpcError as exc:
                statuses[exc.code().name] += 1
    stop.set()
    watcher.join()
    facts = {"calls": sum(statuses.values()), "reply MiB": round(reply_bytes / MiB, 1)}
    facts.update(_milliseconds("health", latencies))
    facts.update({f"health {code}": n for code, n in health_codes.items()})
    return AttackResult(statuses, facts)


def _unary_storm(
    target: str, method: str, messages: list[bytes], channels: int, timeout: float, options
) -> collections.Counter[str]:
    with _channels(target, channels, options) as stubs:
        futures = [
            stubs[k % channels].future(message, timeout=timeout)
            for k, message in enumerate(messages)
        ]
        return collections.Counter(_code(f) for f in futures)


@contextlib.contextmanager
def _channels(target: str, count: int, options) -> Iterator[list]:
    """``count`` connected channels' Predict callables (bytes in, bytes out)."""
    with contextlib.ExitStack() as stack:
        opened = [
            stack.enter_context(grpc.insecure_channel(target, options=options))
            for _ in range(count)
        ]
        for channel in opened:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield [channel.unary_unary(PREDICT) for channel in opened]


def _code(future: grpc.Future) -> str:
    error = future.exception()
    return "OK" if error is None else error.code().name


# --- what the server counted --------------------------------------------------------------

MODEL_SERVICE = "flatscope.v1.ModelService"
CODES = tuple(code.name for code in grpc.StatusCode)
DROP_REASONS = (
    "concurrency",
    "memory",
    "receive_timeout",
    "too_large",
    "draining",
    "queue_full",
    "cancelled",
    "deadline",
)
Metric = Callable[[str, dict[str, str]], float]  # e.g. ServerProcess.metric


def handled(metric: Metric, method: str = "Predict") -> collections.Counter[str]:
    """``grpc_server_handled_total`` of one ModelService method, by code (zeros left out)."""
    labels = {"grpc_service": MODEL_SERVICE, "grpc_method": method}
    found = {c: metric("grpc_server_handled_total", {**labels, "grpc_code": c}) for c in CODES}
    return collections.Counter({c: int(n) for c, n in found.items() if n})


def started(metric: Metric, method: str = "Predict") -> int:
    """``grpc_server_started_total`` of one ModelService method."""
    labels = {"grpc_service": MODEL_SERVICE, "grpc_method": method}
    return int(metric("grpc_server_started_total", labels))


def dropped(metric: Metric) -> collections.Counter[str]:
    """``flatscope_requests_dropped_total`` by reason (zeros left out)."""
    found = {r: metric("flatscope_requests_dropped_total", {"reason": r}) for r in DROP_REASONS}
    return collections.Counter({r: int(n) for r, n in found.items() if n})


def counted_since(metric: Metric, before: dict[str, collections.Counter[str]]) -> dict:
    """What the server counted since ``before`` (a :func:`server_counts`), by series."""
    now = server_counts(metric)
    return {key: now[key] - before[key] for key in now}


def server_counts(metric: Metric) -> dict[str, collections.Counter[str]]:
    """Predict's handled codes and started calls, and dropped requests by reason, now."""
    return {
        "handled": handled(metric),
        "started": collections.Counter({"Predict": started(metric)}),
        "dropped": dropped(metric),
    }


# --- watching the server -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe: a Predict and a health Check on a fresh connection."""

    at: float  # when it began: time.monotonic() (seconds since the watch began, in a Watch)
    predict: str  # status code name
    predict_seconds: float
    health: str  # status code name, or the health status when not SERVING
    health_seconds: float

    @property
    def ok(self) -> bool:
        """Both answered, the health check SERVING, each within PROBE_TIMEOUT."""
        return (
            self.predict == "OK"
            and self.health == "OK"
            and max(self.predict_seconds, self.health_seconds) <= PROBE_TIMEOUT
        )


@dataclasses.dataclass
class Watch:
    """What a :func:`watching` block saw: probes and the server's memory."""

    probes: list[Probe] = dataclasses.field(default_factory=list)
    rss: list[int] = dataclasses.field(default_factory=list)  # bytes, about every 50 ms

    @property
    def success(self) -> float:
        """The fraction of probes that succeeded (0 when there were none)."""
        return sum(p.ok for p in self.probes) / len(self.probes) if self.probes else 0.0

    @property
    def health_success(self) -> float:
        """The fraction of probes whose health check succeeded in time (0 when none)."""
        healthy = sum(p.health == "OK" and p.health_seconds <= PROBE_TIMEOUT for p in self.probes)
        return healthy / len(self.probes) if self.probes else 0.0

    @property
    def peak_rss(self) -> int:
        return max(self.rss, default=0)

    def failures(self) -> collections.Counter[str]:
        """How the failed probes failed, e.g. ``predict DEADLINE_EXCEEDED``."""
        found: collections.Counter[str] = collections.Counter()
        for probe in self.probes:
            if probe.ok:
                continue
            for name, code, took in (
                ("predict", probe.predict, probe.predict_seconds),
                ("health", probe.health, probe.health_seconds),
            ):
                if code != "OK":
                    found[f"{name} {code}"] += 1
                elif took > PROBE_TIMEOUT:
                    found[f"{name} slow"] += 1
        return found

    def describe(self) -> str:
        text = f"{sum(p.ok for p in self.probes)}/{len(self.probes)} ({100 * self.success:.0f} %)"
        failures = self.failures()
        if failures:
            text += " [" + ", ".join(f"{k} {n}" for k, n in failures.most_common()) + "]"
        return text


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from /proc."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def watching(
    target: str, pid: int, shape: tuple[int, ...], interval: float = 0.1, min_probes: int = 5
) -> Iterator[Watch]:
    """Probes the server from a child process and samples its RSS while the block runs.

    Args:
        target: ``host:port`` of the server.
        pid: The server's process id (for its RSS).
        shape: The model's input shape without the batch axis (the probes' Predict).
        interval: Seconds from the start of one probe to the start of the next.
        min_probes: After a short block, go on probing until there are this many (at most
            5 s more), so that a fraction of them means something.
    """
    watch = Watch()
    command = [sys.executable, __file__, "probe", target, "--shape", ",".join(map(str, shape))]
    command += ["--interval", str(interval)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError("the prober did not start")
    began = time.monotonic()
    done = threading.Event()

    def read_probes() -> None:
        for line in child.stdout:
            fields = json.loads(line)
            fields["at"] = round(fields["at"] - began, 3)
            watch.probes.append(Probe(**fields))

    def sample_rss() -> None:
        while not done.wait(0.05):
            with contextlib.suppress(OSError):
                watch.rss.append(rss_bytes(pid))

    threads = [threading.Thread(target=f, daemon=True) for f in (read_probes, sample_rss)]
    for thread in threads:
        thread.start()
    try:
        yield watch
        enough = time.monotonic() + 5
        while len(watch.probes) < min_probes and time.monotonic() < enough:
            time.sleep(0.05)
    finally:
        done.set()
        child.stdin.close()  # the prober finishes its probe and exits
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        for thread in threads:
            thread.join(timeout=10)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """How the server did after an attack."""

    serves: bool  # a probe succeeded within the time allowed
    serves_after: float  # seconds until it did
    rss: int  # RSS when the memory check ended
    rss_returned: bool  # RSS fell to the bound within the time allowed


def recovery(
    target: str, pid: int, shape: tuple[int, ...], rss_bound: int, timeout: float = 10.0
) -> Recovery:
    """Waits up to ``timeout`` seconds for a probe to succeed and RSS to fall to ``rss_bound``."""
    start = time.monotonic()
    end = start + timeout
    serves_after = -1.0
    while time.monotonic() < end:
        if probe(target, predict_request(shape)).ok:
            serves_after = time.monotonic() - start
            break
        time.sleep(0.2)
    rss = rss_bytes(pid)
    while rss > rss_bound and time.monotonic() < end:
        time.sleep(0.2)
        rss = rss_bytes(pid)
    return Recovery(serves_after >= 0, round(serves_after, 2), rss, rss <= rss_bound)


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """The server's RSS once it stops changing by more than 1 MiB in ``seconds`` (at most 10 s)."""
    last = rss_bytes(pid)
    for _ in range(int(10 / seconds)):
        time.sleep(seconds)
        now = rss_bytes(pid)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


def probe(target: str, message: bytes) -> Probe:
    """One Predict and one health Check, each with a PROBE_TIMEOUT deadline, on a new connection.

    Args:
        target: ``host:port`` of the server.
        message: A serialized PredictRequest (:func:`predict_request`).
    """
    at = time.monotonic()
    with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
        predict, predict_seconds, _ = _timed(channel.unary_unary(PREDICT), message)
        health, health_seconds, reply = _timed(channel.unary_unary(HEALTH_CHECK), _HEALTH_REQUEST)
    if health == "OK" and reply != _SERVING_REPLY:
        health = "NOT_SERVING"
    return Probe(at, predict, round(predict_seconds, 4), health, round(health_seconds, 4))


def _timed(call: Callable, message: bytes) -> tuple[str, float, bytes]:
    begin = time.monotonic()
    try:
        reply, code = call(message, timeout=PROBE_TIMEOUT), "OK"
    except grpc.RpcError as exc:
        reply, code = b"", exc.code().name
    return code, time.monotonic() - begin, reply


def _probe_main(args: argparse.Namespace) -> None:
    shape = tuple(int(d) for d in args.shape.split(","))
    message = predict_request(shape)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    while not stop.is_set():
        result = probe(args.target, message)
        print(json.dumps(dataclasses.asdict(result)), flush=True)
        stop.wait(max(0.0, args.interval - (time.monotonic() - result.at)))


def _milliseconds(name: str, seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {f"{name} answers": 0}
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        f"{name} p50 ms": round(1000 * statistics.median(ordered), 1),
        f"{name} p99 ms": round(1000 * p99, 1),
        f"{name} max ms": round(1000 * ordered[-1], 1),
    }


def _spread(links: list[RawConnection], count: int) -> list[RawConnection]:
    return [links[k % len(links)] for k in range(count)]


def _product(shape: tuple[int, ...]) -> int:
    result = 1
    for d in shape:
        result *= d
    return result


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    prober = commands.add_parser("probe", help="probe a server until stdin closes")
    prober.add_argument("target")
    prober.add_argument("--shape", required=True, help="model input shape, e.g. 48,48,3")
    prober.add_argument("--interval", type=float, default=0.1)
    prober.set_defaults(run=_probe_main)
    parsed = parser.parse_args()
    parsed.run(parsed)
