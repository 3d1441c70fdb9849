"""Serving some methods of a generated service; gRPC answers UNIMPLEMENTED to the rest.

Methods are added as *generic* handlers, and only the probes (health checks and the
standard protocols' liveness, readiness and status) also as registered ones: grpc.aio
(1.6x-1.8x) keeps one pending task per registered method and, for every call that
arrives, waits on all of them (``asyncio.wait``), so each registered method costs each
call some work (~7 us per call more with the ~20 methods flatscope serves than with two,
``bench/dispatch.py``); but a registered method also has its own queue in gRPC core, so a
probe is handed over at once instead of behind a burst of model calls queued for the
generic handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from flatscope.grpc.interceptors import UNLIMITED_METHODS

if TYPE_CHECKING:
    from flatscope.core import ModelCore


def add_methods(
    server: grpc.aio.Server, service: ServiceDescriptor, servicer: object, methods: Sequence[str]
) -> None:
    """Registers ``servicer``'s handlers for ``methods`` of ``service`` (unary, or streaming
    as the service declares them).

    The generated ``add_..._to_server`` registers every method of a service, so a method
    this server does not implement would reach the generated base class, which raises;
    registering only what is served lets gRPC itself answer UNIMPLEMENTED.

    Args:
        server: The server to add them to (before it starts).
        service: The service's descriptor, e.g. from the generated ``*_pb2`` module.
        servicer: An object with one ``async def`` per method, named as the method.
        methods: The names of the methods to serve.
    """
    handlers = {}
    for name in methods:
        method = service.methods_by_name[name]
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        factory = _HANDLERS[method.client_streaming, method.server_streaming]
        handlers[name] = factory(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    probes = {
        name: handler
        for name, handler in handlers.items()
        if f"/{service.full_name}/{name}" in UNLIMITED_METHODS
    }
    if probes:
        server.add_registered_method_handlers(service.full_name, probes)


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class PartialServicer:
    """Base of a servicer that serves some methods of a standard protocol from a ModelCore.

    Subclasses name the ``service`` and the ``methods`` they serve.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
    """

    service: ClassVar[ServiceDescriptor]
    methods: ClassVar[tuple[str, ...]]

    def __init__(self, core: ModelCore, max_reply_bytes: int):
        self._core = core
        self._max_reply_bytes = max_reply_bytes

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the served methods on ``server``."""
        add_methods(server, self.service, self, self.methods)
