"""Assembles the gRPC server: ModelService, health, reflection, limits, error mapping."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from flatscope.core import ModelCore
from flatscope.errors import ConfigError
from flatscope.grpc import kserve, tfserving
from flatscope.grpc.interceptors import RpcInterceptor
from flatscope.grpc.servicer import ModelServicer
from flatscope.metrics import Metrics, serve_metrics
from flatscope.settings import Settings
from flatscope.v1 import model_service_pb2, model_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


class Server:
    """One flatscope server: a gRPC server and the model core behind it.

    The port opens first with health NOT_SERVING; :meth:`load_model` loads and warms
    up the model, then health turns SERVING. Until then model calls get UNAVAILABLE.

    Args:
        settings: The server settings.
        registry: Where the metrics go. None makes a fresh one when
            ``settings.metrics_port`` is set, and measures nothing when it is 0.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None):
        self.settings = settings
        measure = registry is not None or settings.metrics_port != 0
        self.metrics = Metrics(registry or CollectorRegistry()) if measure else None
        self.core = ModelCore(settings, self.metrics)
        self._health = health.aio.HealthServicer()
        self._metrics_http: WSGIServer | None = None
        self._server = grpc.aio.server(
            interceptors=[RpcInterceptor(self.metrics)],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", settings.max_send_message_bytes),
            ],
            # Past it, calls get RESOURCE_EXHAUSTED before their message is read.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.core, settings.max_send_message_bytes), self._server
        )
        # The standard protocols, on the same port and the same core (batcher, metrics).
        for standard in (kserve.InferenceServicer, tfserving.PredictionServicer):
            standard(self.core, settings.max_send_message_bytes).add_to_server(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                kserve.SERVICE_NAME,
                tfserving.SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        """Opens the ports and starts answering; returns the bound gRPC port."""
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        credentials = _server_credentials(settings)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            problem = "in use, or not an address of this host"
            if credentials is not None:
                problem += f"; or {settings.tls_key} is not the PEM key of {settings.tls_cert}"
            raise ConfigError(f"cannot listen on {address} ({problem})") from exc
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        transport = "plaintext"
        if credentials is not None:
            transport = "mutual TLS" if settings.tls_client_ca else "TLS"
        log.info("listening on %s:%d (gRPC, %s)", settings.host, self.port, transport)
        if settings.metrics_port and self.metrics:
            host = settings.metrics_host or settings.host
            self._metrics_http = serve_metrics(self.metrics, host, settings.metrics_port)
            self.metrics_port = self._metrics_http.server_port
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
        return self.port

    async def load_model(self) -> None:
        """Loads, compiles and warms up the model, then reports SERVING.

        Raises:
            ModelLoadError: The model cannot be served.
        """
        from flatscope.inference import load_served_model

        loader = functools.partial(
            load_served_model,
            self.settings.model,
            name=self.settings.model_name,
            version=self.settings.model_version,
            max_batch_size=self.settings.max_batch_size,
            device=self.settings.device,
            threads=self.settings.model_threads,
        )
        served = await self.core.load(loader)
        description = served.description
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving model %s v%s (%s) on backend %s, device %s",
            description.name,
            description.version,
            description.source,
            description.backend,
            description.device,
        )

    async def stop(self, grace: float | None = None, delay: float | None = None) -> None:
        """Shuts down gracefully.

        Health turns NOT_SERVING at once; calls are still accepted for ``delay`` seconds
        (default ``shutdown_delay``), so that load balancers see the status and stop
        sending; then new calls are refused (UNAVAILABLE), calls in flight get ``grace``
        seconds (default ``shutdown_grace``) to finish, and the server stops.
        """
        settings = self.settings
        delay = settings.shutdown_delay if delay is None else delay
        grace = settings.shutdown_grace if grace is None else grace
        await self._health.enter_graceful_shutdown()
        if delay > 0:
            log.info("health NOT_SERVING; refusing new calls in %.1f s", delay)
            await asyncio.sleep(delay)
        log.info("refusing new calls; %.1f s for calls in flight", grace)
        await self._server.stop(grace)
        await self.core.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        await self._server.wait_for_termination()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files the settings name; None for plaintext.

    Raises:
        ConfigError: A file cannot be read.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        chain = settings.tls_cert.read_bytes()
        key = settings.tls_key.read_bytes()
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def serve(settings: Settings) -> None:
    """Runs a server until SIGINT or SIGTERM, then shuts it down gracefully."""
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("event loop: %s", type(loop).__module__.partition(".")[0])
    await server.start()
    try:
        loading = asyncio.create_task(server.load_model())
        stop_wait = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if loading in done:
            loading.result()  # raises ModelLoadError: startup fails
            await stop_wait
        log.info("shutting down (grace %.1f s)", settings.shutdown_grace)
    finally:
        await server.stop()
        log.info("stopped")
