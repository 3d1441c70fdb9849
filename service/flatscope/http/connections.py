"""A cap on the HTTP connections open at once, applied where connections are accepted.

aiohttp bounds a request's head (line and header sizes) but not how many connections stay
open, nor, by default, how long one may wait for a request (an hour). Clients that open
connections and send nothing, or a request head a byte at a time, would hold them and
their file descriptors, which the gRPC port shares. So the server closes a connection that
waits longer than ``--http-idle-timeout`` for a request's whole head (aiohttp's keep-alive
timer, armed when the connection opens and after each answer, and not pushed back by
partial data), and answers a connection beyond ``--http-max-connections`` with 503 and
closes it before reading it: holding connections can take at most the HTTP port's
connections for a while, never the process's descriptors or the gRPC port.

A connection counts from the moment it is accepted: with TLS, aiohttp learns of it only
once its handshake is done, and a burst accepted in one go would all see the count from
before it; so connections not yet handed to aiohttp are counted here (until the handoff,
or until the connection is gone), and a TLS handshake must end within
``--receive-timeout`` (asyncio's default: 60 s).

A request aiohttp cannot parse (bad framing, a header too long, an unknown encoding) gets
aiohttp's own 400 and closes its connection; aiohttp logs each one at ERROR with its
traceback (and a body that does not decode once more, as it reads what is left of it
after flatscope's 400), which lets any client fill the log. :class:`QuietBadRequests` makes that a
one-line DEBUG record instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from flatscope.http import jsonio

LINGER = 1.0  # seconds a refused connection is read from before it is closed


def refusal(limit: int) -> bytes:
    """The whole HTTP answer to a connection beyond ``limit`` (503, JSON ``error``)."""
    body = jsonio.dumps(
        {
            "error": f"the server holds its limit of {limit} HTTP connections "
            "(--http-max-connections); retry with backoff, and reuse connections (keep-alive)"
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class CappedSite(web.TCPSite):
    """A TCP site that holds at most ``limit`` connections open at once.

    Args:
        runner: The app's runner, set up.
        host: Address to listen on.
        port: Port to listen on (0: any free port).
        limit: Most connections open at once; 0 for no limit.
        refused: Called for each connection refused.
        ssl_context: TLS for the connections; None for plain HTTP.
        handshake_timeout: Seconds a TLS handshake may take.
        stalled_timeout: Seconds the connection's sent bytes may stay unread (the client's
            window closed) or unacknowledged before the kernel closes it.
    """

    __slots__ = ("_limit", "_refused", "_handshake_timeout", "_stalled_timeout")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limit: int,
        refused: Callable[[], None],
        ssl_context,
        handshake_timeout: float,
        stalled_timeout: float,
    ):
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=False)
        self._limit = limit
        self._refused = refused
        self._handshake_timeout = handshake_timeout
        self._stalled_timeout = stalled_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite's own start is replaced
        server = self._runner.server
        assert server is not None  # the runner is set up
        limit, answer = self._limit, refusal(self._limit)
        lingering: set[_Refusal] = set()
        arriving: weakref.WeakSet[_Arriving] = weakref.WeakSet()
        stalled_ms = int(self._stalled_timeout * 1000)

        def accept() -> asyncio.BaseProtocol:
            if limit and len(server.connections) + len(arriving) >= limit:
                self._refused()
                return _Refusal(answer, lingering, limit)
            return _Arriving(server(), arriving, stalled_ms)

        tls = {"ssl_handshake_timeout": self._handshake_timeout} if self._ssl_context else {}
        self._server = await asyncio.get_running_loop().create_server(
            accept,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=False,
            **tls,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


class _Arriving(asyncio.Protocol):
    """aiohttp's handler of an accepted connection, counted in ``arriving`` until the
    connection is handed to it (then aiohttp counts it) or is gone (a TLS handshake that
    failed or timed out never reaches the handler: the set holds it weakly)."""

    __slots__ = ("_handler", "_arriving", "_stalled_ms", "__weakref__")

    def __init__(
        self, handler: asyncio.Protocol, arriving: weakref.WeakSet[_Arriving], stalled_ms: int
    ):
        self._handler = handler
        self._arriving = arriving
        self._stalled_ms = stalled_ms
        arriving.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._arriving.discard(self)
        # A client that stops reading leaves its answer's bytes unsent, and aiohttp's
        # handler waits for them with no deadline; the kernel ends such a connection once
        # nothing it sent has been taken for this long (zero-window probes included).
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self._stalled_ms)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arriving.discard(self)
        self._handler.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Writes the refusal as soon as the connection is made (after TLS), then closes it.

    Closing a socket with request bytes still unread makes the kernel reset it, and a
    client may then see the reset instead of the answer; so the refusal ends its sending
    side and reads (and drops) what comes for up to :data:`LINGER` seconds, or closes at
    once when as many refusals linger (``lingering``) as the limit allows connections.
    """

    def __init__(self, answer: bytes, lingering: set[_Refusal], limit: int):
        self._answer = answer
        self._lingering = lingering
        self._limit = limit
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # asyncio's, or uvloop's (no subclass)
        transport.write(self._answer)
        if len(self._lingering) >= self._limit or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering.add(self)
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        """Dropped: the connection is refused."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._lingering.discard(self)


class QuietBadRequests(logging.Filter):
    """Turns aiohttp's ERROR record of a request it could not parse into one DEBUG line.

    Installed on the ``aiohttp.server`` logger (see :meth:`install`); records of any other
    failure pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # A body that fails to decode raises again when aiohttp reads what is left of it
        # after the answer (RequestPayloadError, "Unhandled exception").
        if not isinstance(error, HttpProcessingError | web.RequestPayloadError):
            return True
        logger = logging.getLogger(record.name)
        if not logger.isEnabledFor(logging.DEBUG):
            return False
        client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "malformed HTTP request from %s: %s", (client, error)
        record.exc_info = record.exc_text = None
        return True

    @classmethod
    def install(cls) -> None:
        """Adds the filter to ``aiohttp.server``, once."""
        logger = logging.getLogger("aiohttp.server")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())
