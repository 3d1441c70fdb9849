"""Assembles the HTTP server: routes of each API, limits, errors and metrics in one middleware."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from aiohttp import web

from flatscope import ports
from flatscope.admission import Admission
from flatscope.core import ModelCore
from flatscope.errors import ConfigError, FlatscopeError, status_message
from flatscope.http import inspect, kserve, tfserving
from flatscope.http.bodies import TICKET, BodyLimits
from flatscope.http.connections import CappedSite, QuietBadRequests
from flatscope.http.errors import INTERNAL, error_response, http_error, status_of
from flatscope.http.serving import SERVING, Serving
from flatscope.metrics import HttpCollector
from flatscope.settings import Settings

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"
CLIENT_GONE = 499  # the client left before its answer (nginx's code for it)


class HttpServer:
    """flatscope's HTTP server, in the running event loop.

    Args:
        settings: The server settings (--http-port, --host, TLS, limits).
        core: The model core, shared with gRPC.
        admission: Admission shared with gRPC; None admits all.
        metrics: Where HTTP requests are counted; None counts nothing.
        dropped: Counts a call refused by a limit, by reason.
    """

    def __init__(
        self,
        settings: Settings,
        core: ModelCore,
        admission: Admission | None,
        metrics: HttpCollector | None,
        dropped: Callable[[str], None],
    ):
        self._settings = settings
        self._metrics = metrics
        self._dropped = dropped
        self.serving = Serving(
            core,
            BodyLimits(settings.max_receive_message_bytes, settings.receive_timeout, admission),
            settings.max_send_message_bytes,
        )
        app = web.Application(
            middlewares=[self._answer], client_max_size=settings.max_receive_message_bytes
        )
        app[SERVING] = self.serving
        for api in (kserve, tfserving, inspect):
            app.add_routes(api.ROUTES)
        QuietBadRequests.install()
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=settings.shutdown_grace,
            keepalive_timeout=settings.http_idle_timeout,
        )
        self.port = 0

    async def start(self) -> int:
        """Listens on --host:--http-port; returns the bound port.

        Raises:
            ConfigError: The port cannot be listened on, or a TLS file cannot be read.
        """
        settings = self._settings
        context = ssl_context(settings)
        await self._runner.setup()
        site = CappedSite(
            self._runner,
            settings.host,
            settings.http_port,
            limit=settings.http_max_connections,
            refused=lambda: self._dropped("connections"),
            ssl_context=context,
            handshake_timeout=settings.receive_timeout,
            stalled_timeout=settings.http_idle_timeout,
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            problem = ports.bind_problem(exc, "--http-port", "--host")
            where = ports.address(settings.host, settings.http_port)
            raise ConfigError(f"cannot serve HTTP on {where}: {problem}") from exc
        self.port = self._runner.addresses[0][1]
        scheme = "https" if context is not None else "http"
        where = ports.address(settings.host, self.port)
        log.info("listening on %s (HTTP/REST, %s)", where, scheme)
        return self.port

    def enter_graceful_shutdown(self) -> None:
        """Readiness answers 503 from now on; model calls are refused once admission closes."""
        self.serving.ready = False

    async def stop(self) -> None:
        """Closes the port and the connections; requests still running get --shutdown-grace."""
        await self._runner.cleanup()

    @web.middleware
    async def _answer(self, request: web.Request, handler) -> web.StreamResponse:
        """Maps errors to JSON answers, writes the answer, releases admission, counts it."""
        start = time.perf_counter()
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else UNMATCHED
        status = 500
        try:
            try:
                response = await handler(request)
                ticket = request.get(TICKET)
                if ticket is not None and isinstance(response, web.Response):
                    ticket.charge_reply(len(response.body or b""))
            except FlatscopeError as exc:
                reason = getattr(exc, "reason", None)
                if reason is not None:
                    self._dropped(reason)
                response = error_response(status_of(exc), status_message(str(exc)))
                if not self.serving.ready or getattr(exc, "close_connection", False):
                    response.force_close()
            except web.HTTPException as exc:
                response = http_error(exc, request.method, request.path)
            except asyncio.CancelledError:
                status = CLIENT_GONE
                raise
            except ConnectionError:  # the client left while its body was arriving
                status = CLIENT_GONE
                self._dropped("cancelled")
                return web.Response(status=CLIENT_GONE)  # aiohttp drops it quietly
            except Exception:
                log.exception("%s %s failed", request.method, route)
                response = error_response(500, INTERNAL)
            status = response.status
            # Written here, so that the call's bytes stay counted until they are sent.
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:  # the client left before its answer
                status = CLIENT_GONE
            return response
        finally:
            ticket = request.get(TICKET)
            if ticket is not None:
                ticket.release()
            if self._metrics is not None:
                self._metrics.finished(route, request.method, status, time.perf_counter() - start)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of --tls-cert, --tls-key and --tls-client-ca; None for plaintext.

    Raises:
        ConfigError: A file cannot be read or is not what it should be.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use a TLS file for HTTP: {exc}") from exc
    return context
