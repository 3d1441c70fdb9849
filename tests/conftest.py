"""Shared fixtures: real flatscope servers on 127.0.0.1 with OS-assigned ports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import pytest
from processes import ServerProcess
from prometheus_client import CollectorRegistry

from flatscope.client import Client
from flatscope.grpc.server import Server
from flatscope.settings import Settings


class ServerThread:
    """A production Server running on its own event loop in a background thread.

    Tests talk to it with real gRPC clients, as any user would.
    """

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        measure: bool = True,
    ):
        self.settings = settings
        # Test servers measure into a registry of their own unless told not to.
        self.registry = registry or (CollectorRegistry() if measure else None)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self._call(self._make())
        self.port = self._call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    async def _make(self) -> Server:
        return Server(self.settings, self.registry)

    def _call(self, coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def load_model(self) -> ServerThread:
        """Loads and warms up the model; health turns SERVING."""
        self._call(self.server.load_model())
        return self

    def client(self, **kwargs) -> Client:
        """A new client of this server."""
        return Client(self.target, **kwargs)

    def stop(self) -> None:
        self._call(self.server.stop(grace=0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def settings(**overrides) -> Settings:
    """Settings for a test server: loopback, any free port, no HTTP unless asked for."""
    defaults = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "http_port": 0}
    return Settings(**{**defaults, **overrides})


@pytest.fixture(scope="session")
def default_server() -> Iterator[ServerThread]:
    """A server of the embedded default model, shared by the whole session."""
    server = ServerThread(settings(max_batch_size=256)).load_model()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A ``flatscope serve`` process with gRPC and HTTP on (answers compare on one model),
    and /metrics; shared by the REST tests."""
    log = tmp_path_factory.mktemp("rest") / "serve.log"
    with ServerProcess(log, http=True, metrics=True).serving() as server:
        yield server


@pytest.fixture()
def default_client(default_server: ServerThread) -> Iterator[Client]:
    with default_server.client() as client:
        yield client


@pytest.fixture()
def serve_model(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Saves a Keras model to a .keras file and serves it; stops every server at the end."""
    servers: list[ServerThread] = []

    def serve(model: keras.Model, **overrides) -> ServerThread:
        path = tmp_path / f"{model.name}-{len(servers)}.keras"
        model.save(path)
        server = ServerThread(settings(model=path, **overrides)).load_model()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()
