"""Assembles the gRPC server: ModelService, health, reflection, limits, error mapping."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import time
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from flatscope import allocator, logs, open_files, ports
from flatscope.admission import Admission
from flatscope.core import ModelCore
from flatscope.errors import ConfigError
from flatscope.grpc import kserve, tfserving
from flatscope.grpc.interceptors import CallLimits, RpcInterceptor
from flatscope.grpc.methods import add_methods
from flatscope.grpc.servicer import ModelServicer
from flatscope.http.app import HttpServer
from flatscope.metrics import Metrics, serve_metrics
from flatscope.settings import Settings
from flatscope.v1 import model_service_pb2

log = logging.getLogger(__name__)

SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
SERVICE_NAME = SERVICE.full_name


class Server:
    """One flatscope server: a gRPC server, the HTTP server beside it, and the model core.

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
        self.admission = Admission(settings.max_concurrent_rpcs, settings.memory_budget)
        limits = CallLimits(
            self.admission,
            settings.receive_timeout,
            self._count_drop,
            settings.stream_idle_timeout,
        )
        if self.metrics is not None:
            admission = self.admission
            self.metrics.memory_held.set_function(lambda: admission.bytes)
        self._server = grpc.aio.server(
            interceptors=[RpcInterceptor(self.metrics, limits)],
            options=_channel_options(settings),
        )
        max_reply = settings.max_send_message_bytes
        add_methods(
            self._server,
            SERVICE,
            ModelServicer(self.core, max_reply),
            [method.name for method in SERVICE.methods],
        )
        # The standard protocols, on the same port and the same core (batcher, metrics).
        kserve.InferenceServicer(self.core, max_reply, limits).add_to_server(self._server)
        tfserving.ModelStatusServicer(self.core, max_reply).add_to_server(self._server)
        tfserving.PredictionServicer(
            self.core, max_reply, settings.tfserving_tensor_content
        ).add_to_server(self._server)
        # Registered too: probes get their own queue in gRPC core (flatscope.grpc.methods).
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        served = (
            SERVICE,
            kserve.SERVICE,
            tfserving.SERVICE,
            tfserving.MODEL_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        )
        reflection.enable_server_reflection(
            [service.full_name for service in served],
            self._server,
            pool=_reflection_pool(service.file for service in served),
        )
        self.http: HttpServer | None = None
        if settings.http_port:
            http_metrics = self.metrics.http if self.metrics is not None else None
            self.http = HttpServer(
                settings, self.core, self.admission, http_metrics, self._count_drop
            )
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0

    async def start(self) -> int:
        """Opens the ports and starts answering; returns the bound gRPC port.

        Raises:
            ConfigError: A port cannot be listened on, or a TLS file cannot be read.
        """
        settings = self.settings
        address = ports.address(settings.host, settings.port)
        credentials = _server_credentials(settings)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            raise ConfigError(f"cannot listen on {address}: {self._bind_problem()}") from exc
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}: {self._bind_problem()}")
        # HTTP and /metrics bind before gRPC starts, so that a busy port starts nothing.
        if self.http is not None:
            try:
                self.http_port = await self.http.start()
            except ConfigError:
                await self._server.stop(None)
                raise
        metrics_host = settings.metrics_host or settings.host
        if settings.metrics_port and self.metrics:
            try:
                self._metrics_http = serve_metrics(
                    self.metrics, metrics_host, settings.metrics_port
                )
            except OSError as exc:
                await self._server.stop(None)
                if self.http is not None:
                    await self.http.stop()
                problem = ports.bind_problem(exc, "--metrics-port", "--metrics-host")
                where = ports.address(metrics_host, settings.metrics_port)
                raise ConfigError(f"cannot serve /metrics on {where}: {problem}") from exc
            self.metrics_port = self._metrics_http.server_port
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        transport = "plaintext"
        if credentials is not None:
            transport = "mutual TLS" if settings.tls_client_ca else "TLS"
        log.info("listening on %s (gRPC, %s)", ports.address(settings.host, self.port), transport)
        if self._metrics_http is not None:
            where = ports.address(metrics_host, self.metrics_port)
            log.info("metrics on http://%s/metrics", where)
        return self.port

    def _bind_problem(self) -> str:
        settings = self.settings
        error = ports.bind_error(settings.host, settings.port)
        if error is not None:
            return ports.bind_problem(error, "--port", "--host")
        if settings.tls_cert is not None:
            return f"{settings.tls_key} is not the PEM key of {settings.tls_cert}"
        return "gRPC cannot bind it; check --host and --port"

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
        # What is loaded now (TensorFlow's and Keras' objects, ~0.5 M) lives as long as the
        # process: out of the collector's passes, which otherwise walk it all whenever
        # requests allocate many containers (a JSON body of nested lists parsed 2.4x slower
        # at 16 concurrent REST calls; bench/rest.py).
        gc.freeze()
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
        logs.release_stderr()  # startup is over: what it logged (held by the CLI) follows

    async def stop(self, grace: float | None = None, delay: float | None = None) -> None:
        """Shuts down gracefully.

        Health turns NOT_SERVING at once; calls are still served for ``delay`` seconds
        (default ``shutdown_delay``), so that load balancers see the status and stop
        sending. Then model calls are refused with UNAVAILABLE (clients retry it, on
        another replica), calls in flight get up to ``grace`` seconds (default
        ``shutdown_grace``) to finish, and the server stops: at once when none is left,
        else when the grace ends (what is still running then is cancelled).
        """
        settings = self.settings
        delay = settings.shutdown_delay if delay is None else delay
        grace = settings.shutdown_grace if grace is None else grace
        await self._health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.enter_graceful_shutdown()
        if delay > 0:
            log.info("health NOT_SERVING; refusing new calls in %.1f s", delay)
            await asyncio.sleep(delay)
        log.info("refusing new calls; %.1f s for calls in flight", grace)
        # See Admission.close: new calls are held until the admitted ones are done and
        # no call has come for a moment; gRPC's stop then sends GOAWAY, and only then are
        # the held calls refused, so that their clients' retries go elsewhere.
        admission = self.admission
        end = time.monotonic() + grace
        admission.close()
        if not await admission.wait_idle(end - time.monotonic()):
            log.warning("%d calls still running after %.1f s; cancelling", admission.calls, grace)
        # A client that keeps sending is never quiet: it waits a second at most.
        await admission.wait_quiet(QUIET_SECONDS, min(QUIET_LIMIT, end - time.monotonic()))
        stopping = asyncio.create_task(self._server.stop(max(0.0, end - time.monotonic())))
        await asyncio.sleep(0)  # the task starts core's shutdown (GOAWAY) on its first step
        await asyncio.sleep(0)
        admission.release_held()
        await stopping
        if self.http is not None:
            await self.http.stop()
        await self.core.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        await self._server.wait_for_termination()

    def _count_drop(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels(self.core.model_name, reason).inc()

    async def _set_health(self, status: int) -> None:
        # "" is the whole server; each model-serving API answers under its own name too.
        names = (
            "",
            SERVICE_NAME,
            kserve.SERVICE_NAME,
            tfserving.SERVICE_NAME,
            tfserving.MODEL_SERVICE_NAME,
        )
        for name in names:
            await self._health.set(name, status)


def _reflection_pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """One pool with ``files`` and all they import, for reflection to answer from.

    The standard protocols' descriptors live in ``flatscope.protocols.POOL``, the others in
    protobuf's default pool; reflection reads one.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name not in added:
            added.add(file.name)
            for dependency in file.dependencies:
                add(dependency)
            pool.AddSerializedFile(file.serialized_pb)

    for file in files:
        add(file)
    return pool


def _channel_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core's limits: message sizes, connections and their streams, age, keepalive."""
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace * 1000)),
        # Ping idle clients, and drop those that stop answering (a vanished peer's calls).
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
        # Clients may ping as often as every 10 s, data or not; more often is a ping flood.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Calls wait in gRPC core until the asyncio server asks for them, one at a time;
        # past 1000 waiting core drops them at random, past 3000 all, as CANCELLED.
        # Shedding is admission's job (RESOURCE_EXHAUSTED, counted), so no limit here.
        ("grpc.server.max_pending_requests", UNBOUNDED),
        ("grpc.server.max_pending_requests_hard_limit", UNBOUNDED),
        # A second server on a port in use must fail, not share it (gRPC sets SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
        # A connection that never finishes its handshake is closed (gRPC's default: 120 s).
        ("grpc.server_handshake_timeout_ms", int(settings.receive_timeout * 1000)),
    ]
    if settings.max_connections:
        options.append(("grpc.max_allowed_incoming_connections", settings.max_connections))
    return options


# On shutdown, gRPC stops once no call has arrived or ended for this long.
QUIET_SECONDS = 0.2
# The longest new calls are held, waiting for that quiet, before the GOAWAY.
QUIET_LIMIT = 1.0
UNBOUNDED = 2**31 - 1
TRIM_SECONDS = 5.0  # how often freed heap memory goes back to the OS (see allocator)
KEEPALIVE_SECONDS = 60
KEEPALIVE_TIMEOUT_SECONDS = 20


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
    allocator.map_large_buffers()
    caps = {"--max-connections": settings.max_connections}
    if settings.http_port:
        caps["--http-max-connections"] = settings.http_max_connections
    open_files.check_caps(open_files.raise_limit(), caps)
    server = Server(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("event loop: %s", type(loop).__module__.partition(".")[0])
    await server.start()
    trimming = asyncio.create_task(allocator.trim_periodically(TRIM_SECONDS))
    try:
        loading = asyncio.create_task(server.load_model())
        stop_wait = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if loading in done:
            loading.result()  # raises ModelLoadError: startup fails
            await stop_wait
        log.info("shutting down (grace %.1f s)", settings.shutdown_grace)
    finally:
        trimming.cancel()
        await server.stop()
        log.info("stopped")
