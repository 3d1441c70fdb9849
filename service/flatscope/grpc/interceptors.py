"""Server interceptors: errors mapped to statuses in one place, and RPC metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from flatscope.batching import DEADLINE_SLACK
from flatscope.errors import FlatscopeError
from flatscope.metrics import Metrics

log = logging.getLogger(__name__)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a FlatscopeError into its status and message; anything else into INTERNAL.

    Unexpected errors reach the client as a generic message; the traceback goes to
    the log, never over the wire. Request bytes that do not parse as the method's
    message get INVALID_ARGUMENT (gRPC itself would answer UNKNOWN, with the parser's
    exception in the message).
    """

    def __init__(self):
        self._handlers = _HandlerCache(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return await self._handlers.get(continuation, handler_call_details)

    @staticmethod
    def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        parse = handler.request_deserializer
        expected = _message_name(parse)

        def lenient(data: bytes):
            try:
                return parse(data) if parse else data
            except Exception:  # any parser error means the client's bytes are bad
                return _UNREADABLE

        async def guarded(request, context: grpc.aio.ServicerContext):
            if request is _UNREADABLE:
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {expected} message (the bytes do not parse)",
                )
            try:
                return await inner(request, context)
            except FlatscopeError as exc:
                await _abort(context, grpc.StatusCode[exc.code.value], status_message(str(exc)))
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("%s failed", method)
                await _abort(
                    context, grpc.StatusCode.INTERNAL, "internal error; the server log has details"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=lenient,
            response_serializer=handler.response_serializer,
        )


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str):
    """Ends the call with ``code`` and ``message``.

    A call that already ended (its deadline passed, its client went away) has no status
    left to send: it ends as cancelled, as gRPC ends such calls itself.
    """
    try:
        await context.abort(code, message)
    except grpc.aio.AbortError:
        raise
    except Exception:  # gRPC core refuses to send a status on a finished call
        raise asyncio.CancelledError from None


def status_message(text: str) -> str:
    """``text`` cut to at most MAX_STATUS_MESSAGE characters, keeping its start and end.

    A message may quote what the client sent (a model or layer name of any length);
    gRPC clients drop a call whose status trailer is above 8-16 KiB, and the trailer
    percent-encodes each non-ASCII character into up to 12 bytes.
    """
    if len(text) <= MAX_STATUS_MESSAGE:
        return text
    head, tail = text[: MAX_STATUS_MESSAGE * 2 // 3], text[-(MAX_STATUS_MESSAGE // 4) :]
    return f"{head} ... [{len(text) - len(head) - len(tail)} characters cut] ... {tail}"


MAX_STATUS_MESSAGE = 512

# Stands in for a request whose bytes did not parse: a deserializer cannot set a status.
_UNREADABLE = object()


def _message_name(parse) -> str:
    """The protobuf message a deserializer (``Message.FromString``) reads, if it says."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "protobuf")


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC, with the gRPC ecosystem's metric names and labels.

    Place it first (outermost), so that it sees the final status of every call,
    including errors mapped by :class:`ErrorInterceptor`. Payload sizes are read off
    the wire bytes by wrapping the (de)serializers, so measuring them costs nothing.
    """

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._handlers = _HandlerCache(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return await self._handlers.get(continuation, handler_call_details)

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method = full_method.lstrip("/").rpartition("/")
        kind = _rpc_type(handler)
        labels = (service, method, kind)
        metrics = self._metrics
        started = metrics.rpc_started.labels(*labels)
        seconds = metrics.rpc_seconds.labels(*labels)
        request_bytes = metrics.request_bytes.labels(method)
        response_bytes = metrics.response_bytes.labels(method)
        handled: dict[str, object] = {}  # status code -> counter child, looked up once

        def deserialize(data: bytes):
            request_bytes.observe(len(data))
            return handler.request_deserializer(data) if handler.request_deserializer else data

        def serialize(message) -> bytes:
            data = handler.response_serializer(message) if handler.response_serializer else message
            response_bytes.observe(len(data))
            return data

        async def observed(request, context: grpc.aio.ServicerContext):
            started.inc()
            start = time.perf_counter()
            code = "OK"
            try:
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):  # a streaming reply, as a generator
                    async for reply in result:
                        await context.write(reply)
                    return None
                return await result
            except grpc.aio.AbortError:
                code = _code_name(context.code())
                raise
            except asyncio.CancelledError:
                # gRPC cancels the handler of a call whose deadline passed.
                remaining = context.time_remaining()
                late = remaining is not None and remaining <= DEADLINE_SLACK
                code = "DEADLINE_EXCEEDED" if late else "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                seconds.observe(time.perf_counter() - start)
                counter = handled.get(code)
                if counter is None:
                    counter = handled[code] = metrics.rpc_handled.labels(*labels, code)
                counter.inc()

        behaviour = _behaviour(handler)
        factory = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[kind]
        return factory(observed, request_deserializer=deserialize, response_serializer=serialize)


class _HandlerCache:
    """Wraps each method's handler once, not on every call (the hot path)."""

    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]):
        self._wrap = wrap
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def get(self, continuation, details: grpc.HandlerCallDetails):
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = await continuation(details)
            if handler is None:  # unknown method: not cached, so names can't pile up
                return None
            handler = self._handlers[details.method] = self._wrap(details.method, handler)
        return handler


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _behaviour(handler: grpc.RpcMethodHandler):
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _code_name(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, "UNKNOWN")
