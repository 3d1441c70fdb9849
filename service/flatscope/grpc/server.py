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
from flatscope.grpc.interceptors import ErrorInterceptor, MetricsInterceptor
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
            interceptors=[
                *([MetricsInterceptor(self.metrics)] if self.metrics else []),
                ErrorInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", settings.max_send_message_bytes),
            ],
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.core, settings.max_send_message_bytes), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        """Opens the ports and starts answering; returns the bound gRPC port."""
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        log.info("listening on %s:%d (gRPC, plaintext)", settings.host, self.port)
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

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets calls in flight finish within ``grace`` s, stops."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.settings.shutdown_grace if grace is None else grace)
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


async def serve(settings: Settings) -> None:
    """Runs a server until SIGINT or SIGTERM, then shuts it down gracefully."""
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
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
