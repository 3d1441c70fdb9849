"""The ``inference.GRPCInferenceService`` servicer: KServe v2 plus Triton's extensions.

The messages are generated from Triton's ``grpc_service.proto`` (protos/vendor: the KServe
v2 ``grpc_predict_v2.proto`` plus Triton's own methods, with the same field numbers for every
message used here; ``tests/grpc/test_kserve.py`` checks them).
The methods below are served; the rest (shared memory, repository load and unload,
trace and log settings) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

import flatscope
from flatscope import admission as admitting
from flatscope.core import ModelCore
from flatscope.errors import FlatscopeError, NotFoundError, StreamIdleError, status_message
from flatscope.grpc import converters as common
from flatscope.grpc.interceptors import CallLimits
from flatscope.grpc.kserve import converters
from flatscope.grpc.methods import PartialServicer
from flatscope.grpc.servicer import call_deadline
from flatscope.protocols import grpc_service_pb2 as pb
from flatscope.protocols import grpc_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "ModelInfer",
    "ModelStreamInfer",
)
# Triton's names of the extensions served whole (RepositoryIndex alone is not
# model_repository, which also loads and unloads).
EXTENSIONS = ("classification", "model_configuration", "statistics")
ASK_FOR_LESS = "send fewer examples per request, or leave '<layer>/source' out of the outputs"
# Requests of one stream in the core at once; the stream reads no further meanwhile.
STREAM_WINDOW = 16
INTERNAL = "internal error; the server log has details"


class InferenceServicer(PartialServicer, grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves KServe v2 and Triton's model methods from a ModelCore.

    Args:
        core: The model core, shared with the other APIs.
        max_reply_bytes: Largest reply the server may send.
        limits: What bounds each request of a ModelStreamInfer stream (unary calls are
            bounded by the interceptor); None bounds nothing.
    """

    service = SERVICE
    methods = METHODS

    def __init__(self, core: ModelCore, max_reply_bytes: int, limits: CallLimits | None = None):
        super().__init__(core, max_reply_bytes)
        self._limits = limits or CallLimits()

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._core.is_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="flatscope", version=flatscope.__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context
    ) -> pb.ModelMetadataResponse:
        description = self._core.metadata(request.name, request.version)
        signature = self._core.signature(request.name, request.version)
        return converters.model_metadata(description, signature)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        description = self._core.metadata(request.name, request.version)
        signature = self._core.signature(request.name, request.version)
        return converters.model_config(description, signature, self._core.batching)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context
    ) -> pb.ModelStatisticsResponse:
        description = self._core.metadata(request.name, request.version)
        stats = self._core.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[converters.model_statistics(description, stats)]
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise NotFoundError(
                f"repository '{request.repository_name}' is not served here; this server "
                "has one, unnamed (leave repository_name empty)"
            )
        if not self._core.ready:  # the model's name is known once it has loaded
            return pb.RepositoryIndexResponse()
        description = self._core.metadata("")
        model = pb.RepositoryIndexResponse.ModelIndex(
            name=description.name, version=description.version, state="READY"
        )
        return pb.RepositoryIndexResponse(models=[model])

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        reply = await self._infer(request, call_deadline(context))
        return common.encoded(reply, self._max_reply_bytes, ASK_FOR_LESS)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request of the stream, in order, as ModelInfer would.

        Up to STREAM_WINDOW requests are in the core at once (they may share passes).
        Each is admitted as a unary call would be (model calls at once, memory budget)
        and holds its share until its answer is written. A request that fails or is
        refused is answered with ``error_message`` (the message its status would carry)
        and the stream goes on, as Triton does.
        """
        deadline = call_deadline(context)
        peer = context.peer()
        window = asyncio.Semaphore(STREAM_WINDOW)
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # bounded by window

        idle = self._limits.stream_idle_timeout or None

        async def read() -> None:
            try:
                while True:
                    try:
                        async with asyncio.timeout(idle):
                            request = await anext(requests)
                    except StopAsyncIteration:  # the client half-closed
                        return
                    except TimeoutError:
                        self._limits.dropped(StreamIdleError.reason)
                        raise StreamIdleError(
                            f"no request message on this stream for {idle:g} s "
                            "(--stream-idle-timeout); open a new stream to send more"
                        ) from None
                    await window.acquire()
                    answer = self._stream_answer(request, deadline, peer)
                    answers.put_nowait(asyncio.create_task(answer))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        answer = None
        try:
            while (answer := await answers.get()) is not None:
                reply, ticket = await answer
                answer = None
                try:
                    yield reply
                finally:
                    if ticket is not None:
                        ticket.release()
                window.release()
            try:
                await reader  # what ended the reading (the client's half-close, or an error)
            except StreamIdleError as exc:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        finally:
            reader.cancel()
            unanswered = [answer] if answer is not None else []
            while not answers.empty():
                unanswered.append(answers.get_nowait())
            for task in filter(None, unanswered):
                task.cancel()
                task.add_done_callback(_release_ticket)

    async def _stream_answer(
        self, request: pb.ModelInferRequest, deadline: float | None, peer: str
    ) -> tuple[pb.ModelStreamInferResponse, admitting.Ticket | None]:
        """The answer to one request of a stream, and the admission ticket it holds."""
        ticket = None
        try:
            ticket = await self._admit(peer, request.ByteSize())
            reply = await self._infer(request, deadline)
            size = len(common.encoded(reply, self._max_reply_bytes, ASK_FOR_LESS))
            if ticket is not None:
                ticket.charge_reply(size)
        except FlatscopeError as exc:
            reason = getattr(exc, "reason", None)  # a limit's refusal, counted by reason
            if reason is not None:
                self._limits.dropped(reason)
            message = status_message(str(exc))
        except Exception:
            log.exception("ModelStreamInfer request failed")
            message = INTERNAL
        except asyncio.CancelledError:  # the stream ended: nobody will write the answer
            if ticket is not None:
                ticket.release()
            raise
        else:
            if _wants_final_flag(request):
                reply.parameters["triton_final_response"].bool_param = True
            return pb.ModelStreamInferResponse(infer_response=reply), ticket
        failed = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed), ticket

    async def _admit(self, peer: str, request_bytes: int) -> admitting.Ticket | None:
        """Admits one request of a stream (in its own task, so the ticket is its current one).

        Raises:
            Refused: Over a limit. Draining: the server is shutting down.
        """
        admission = self._limits.admission
        return None if admission is None else await admission.admit_when_room(peer, request_bytes)

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        inputs, outputs = converters.infer_request(request)
        core = self._core
        result = await core.infer(
            request.model_name, inputs, list(outputs), request.model_version, deadline
        )
        signature = core.signature(result.model_name)
        labels = {signature.prediction.spec.name: core.metadata(result.model_name).labels}
        return converters.infer_response(result, request.id, outputs, labels)


def _release_ticket(task: asyncio.Task) -> None:
    """Releases the ticket of a stream's answer that was never written."""
    if not task.cancelled() and task.exception() is None:
        _reply, ticket = task.result()
        if ticket is not None:
            ticket.release()


def _wants_final_flag(request: pb.ModelInferRequest) -> bool:
    flag = request.parameters.get(converters.FINAL_RESPONSE)
    return flag is not None and flag.bool_param
