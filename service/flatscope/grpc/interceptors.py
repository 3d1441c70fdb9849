"""Maps errors to gRPC statuses in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from flatscope.errors import FlatscopeError

log = logging.getLogger(__name__)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a FlatscopeError into its status and message; anything else into INTERNAL.

    Unexpected errors reach the client as a generic message; the traceback goes to
    the log, never over the wire.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        async def guarded(request, context: grpc.aio.ServicerContext):
            try:
                return await inner(request, context)
            except FlatscopeError as exc:
                await context.abort(grpc.StatusCode[exc.code.value], str(exc))
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("%s failed", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal error; the server log has details"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
