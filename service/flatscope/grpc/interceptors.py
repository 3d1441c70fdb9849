"""Server interceptors: errors mapped to statuses in one place, and RPC metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from flatscope.admission import Admission, Ticket
from flatscope.batching import DEADLINE_SLACK
from flatscope.errors import (
    FlatscopeError,
    InvalidInputError,
    ReceiveTimeoutError,
    status_message,
)
from flatscope.metrics import Metrics, RpcMetrics

log = logging.getLogger(__name__)

# Never refused by admission nor held on shutdown: probes must get through while model
# calls are saturated (gRPC health, KServe's liveness and readiness, TF Serving's status).
UNLIMITED_METHODS = frozenset(
    (
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
        "/tensorflow.serving.ModelService/GetModelStatus",
    )
)


@dataclasses.dataclass(frozen=True)
class CallLimits:
    """What bounds each unary call.

    Args:
        admission: Admits model calls by count and bytes; None admits all.
        receive_timeout: Seconds from a call's start until its request message must
            have fully arrived.
        dropped: Counts a call refused or dropped, by reason.
        stream_idle_timeout: Seconds a request stream (ModelStreamInfer) may wait for
            its next message; 0: no limit.
    """

    admission: Admission | None = None
    receive_timeout: float = 10.0
    dropped: Callable[[str], None] = lambda reason: None
    stream_idle_timeout: float = 0.0


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors to statuses and, given metrics, counts and times every RPC.

    One wrapper per method, built on its first call: the hot path pays for one extra
    coroutine frame, not a chain of interceptors.

    Errors: a FlatscopeError becomes its status and message; anything else INTERNAL,
    with a generic message (the traceback goes to the log, never over the wire).
    Request bytes that do not parse as the method's message get INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN, with the parser's exception in the message).

    Metrics: the gRPC ecosystem's names and labels, with the final status of every
    call, errors mapped here included; payload sizes are read off the wire bytes by
    wrapping the (de)serializers, so measuring them costs nothing extra.

    Args:
        metrics: Where RPC metrics go; None measures nothing.
        limits: What bounds each unary call (admission, receive timeout).
    """

    def __init__(self, metrics: Metrics | None = None, limits: CallLimits | None = None):
        self._metrics = metrics
        self._limits = limits or CallLimits()
        self._handlers = _HandlerCache(self._wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return await self._handlers.get(continuation, handler_call_details)

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = _rpc_type(handler)
        calls = None
        if self._metrics is not None:
            calls = self._metrics.rpcs.method(full_method, kind)
        if kind == "unary":
            return _guarded_unary(full_method, handler, calls, self._limits)
        if calls is None:
            return handler
        return _measured_stream(handler, kind, calls)


def _guarded_unary(
    full_method: str,
    handler: grpc.RpcMethodHandler,
    calls: RpcMetrics | None,
    limits: CallLimits,
) -> grpc.RpcMethodHandler:
    """A unary handler with limits, errors mapped to statuses, measured when ``calls`` is set.

    Registered with gRPC as client-streaming (the same bytes on the wire: one message,
    then half-close), so that this code runs as soon as the call's headers arrive and
    reads the request message itself: under a receive timeout, and before admission, so
    that a client that never sends its message holds no model slot and no budget.
    """
    inner = handler.unary_unary
    parse = handler.request_deserializer or _identity
    write = handler.response_serializer or _identity
    expected = _message_name(handler.request_deserializer)
    admission = limits.admission if full_method not in UNLIMITED_METHODS else None
    receive_timeout = limits.receive_timeout
    dropped = limits.dropped

    async def guarded(requests, context: grpc.aio.ServicerContext):
        start = time.perf_counter()
        code = "OK"
        ticket: Ticket | None = None

        def ended(_context) -> None:
            # The call has ended on the wire: its reply sent, or the call cancelled.
            final = code
            if final == "OK" and context.cancelled():
                final = _cancelled_code(context)
            if ticket is not None:
                ticket.release()
            if calls is not None:
                calls.finished(final, time.perf_counter() - start)

        context.add_done_callback(ended)
        if calls is not None:
            calls.started += 1
        try:
            if admission is None:
                data = await _receive(context, receive_timeout)
            else:
                if admission.closed:
                    await admission.refuse_when_stopped()
                admission.receiving += 1
                try:
                    data = await _receive(context, receive_timeout)
                finally:
                    admission.received()
            if calls is not None:
                calls.request_bytes.observe(len(data))
            if admission is not None:
                if admission.closed:
                    await admission.refuse_when_stopped()
                ticket = await admission.admit_when_room(context.peer(), len(data))
            try:
                request = parse(data)
            except Exception:  # any parser error means the client's bytes are bad
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {expected} message (the bytes do not parse)",
                )
            del data
            try:
                reply = await inner(request, context)
                if type(reply) is not bytes:  # model replies come serialized (their size limit)
                    reply = write(reply)
            except FlatscopeError:
                raise
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("%s failed", full_method)
                await _abort(
                    context, grpc.StatusCode.INTERNAL, "internal error; the server log has details"
                )
            if calls is not None:
                calls.response_bytes.observe(len(reply))
            if ticket is not None:
                ticket.charge_reply(len(reply))
            return reply
        except FlatscopeError as exc:
            code = exc.code.value
            reason = getattr(exc, "reason", None)  # a limit's refusal, counted by reason
            if reason is not None:
                dropped(reason)
            try:
                await _abort(context, grpc.StatusCode[code], status_message(str(exc)))
            except asyncio.CancelledError:
                # The call had ended already. Before its message, gRPC itself ends a call
                # only by refusing the message as too large (a read then sees no message);
                # else its deadline passed or its client left. A client that resets its
                # stream between its headers and its message looks exactly the same here
                # (gRPC Python shows neither the refusal nor the reset): counted too large.
                if isinstance(exc, _NoRequest):
                    code = "RESOURCE_EXHAUSTED"
                    dropped("too_large")
                else:
                    code = _cancelled_code(context)
                raise
        except BaseException as exc:
            code = _final_code(exc, context)
            raise

    return grpc.stream_unary_rpc_method_handler(guarded)


async def _receive(context: grpc.aio.ServicerContext, timeout: float) -> bytes:
    """The call's one request message, as bytes; waits at most ``timeout`` seconds.

    Raises:
        ReceiveTimeoutError: The message did not arrive in time.
        InvalidInputError: The client half-closed without sending one.
    """
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        data = await context.read()
    except asyncio.CancelledError:
        if not expired:
            raise
        if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled here
            task.uncancel()
        raise ReceiveTimeoutError(
            f"the request message did not arrive within {timeout:g} s of the call's start "
            "(--receive-timeout)"
        ) from None
    finally:
        timer.cancel()
    if data is grpc.aio.EOF:
        raise _NoRequest("the call ended without a request message; expected one")
    return data


class _NoRequest(InvalidInputError):
    """The request stream ended without a message."""


def _identity(data):
    return data


def _cancelled_code(context: grpc.aio.ServicerContext) -> str:
    """The status of a call that gRPC cancelled: its deadline passed, or its client left."""
    remaining = context.time_remaining()
    late = remaining is not None and remaining <= DEADLINE_SLACK
    return "DEADLINE_EXCEEDED" if late else "CANCELLED"


def _measured_stream(
    handler: grpc.RpcMethodHandler, kind: str, calls: RpcMetrics
) -> grpc.RpcMethodHandler:
    """A streaming handler (health Watch, reflection), counted and timed."""
    behaviour = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    parse = handler.request_deserializer
    write = handler.response_serializer

    def deserialize(data: bytes):
        calls.request_bytes.observe(len(data))
        return parse(data) if parse else data

    def serialize(message) -> bytes:
        data = write(message) if write else message
        calls.response_bytes.observe(len(data))
        return data

    async def measured(request, context: grpc.aio.ServicerContext):
        calls.started += 1
        start = time.perf_counter()
        code = "OK"
        try:
            result = behaviour(request, context)
            if not hasattr(result, "__aiter__"):
                return await result
            try:  # a streaming reply, as a generator
                async for reply in result:
                    try:
                        await context.write(reply)
                    except Exception:
                        # gRPC fails the write to a call that has ended: its client
                        # cancelled or went away. Nothing is wrong; nobody is left to tell.
                        code = "CANCELLED"
                        return None
            finally:
                await result.aclose()  # its own cleanup (a stream's tickets) runs now
            return None
        except BaseException as exc:
            code = _final_code(exc, context)
            raise
        finally:
            if code == "OK" and context.cancelled():
                code = "CANCELLED"
            calls.finished(code, time.perf_counter() - start)

    factory = {
        "server_stream": grpc.unary_stream_rpc_method_handler,
        "client_stream": grpc.stream_unary_rpc_method_handler,
        "bidi_stream": grpc.stream_stream_rpc_method_handler,
    }[kind]
    return factory(measured, request_deserializer=deserialize, response_serializer=serialize)


def _final_code(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status a call that raised ``exc`` ends with."""
    if isinstance(exc, grpc.aio.AbortError):
        return _code_name(context.code())
    if isinstance(exc, asyncio.CancelledError):
        # gRPC cancels the handler of a call whose deadline passed.
        return _cancelled_code(context)
    return "UNKNOWN"


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


def _message_name(parse) -> str:
    """The protobuf message a deserializer (``Message.FromString``) reads, if it says."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "protobuf")


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


_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _code_name(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, "UNKNOWN")
