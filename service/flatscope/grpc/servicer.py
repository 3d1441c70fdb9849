"""The flatscope.v1.ModelService servicer: convert, await the core, convert back."""

from __future__ import annotations

import time

import grpc

from flatscope.core import ModelCore
from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Serves ModelService from a ModelCore.

    Args:
        core: The model core.
        max_reply_bytes: Largest reply the server may send; a larger one becomes a
            RESOURCE_EXHAUSTED that says how to ask for less.
    """

    def __init__(self, core: ModelCore, max_reply_bytes: int):
        self._core = core
        self._max_reply_bytes = max_reply_bytes

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        encoding = converters.reply_encoding(request.output_encoding)
        inputs = converters.request_payload(request.inputs)
        result = await self._core.predict(request.model_name, inputs, call_deadline(context))
        payloads = converters.Payloads(pb.PredictResponse)
        reply = converters.predict_response(result, encoding, payloads)
        return await converters.encoded_off_loop(reply, self._max_reply_bytes, payloads)

    async def Inspect(self, request: pb.InspectRequest, context: grpc.aio.ServicerContext) -> bytes:
        encoding = converters.reply_encoding(request.output_encoding)
        inputs = converters.request_payload(request.inputs)
        result = await self._core.inspect(
            request.model_name,
            inputs,
            layer=request.layer,
            include_source=request.include_source,
            coordinate_start=request.coordinate_start,
            coordinate_count=request.coordinate_count,
            deadline=call_deadline(context),
            include_dense_kernel=request.include_dense_kernel,
        )
        payloads = converters.Payloads(pb.InspectResponse)
        reply = converters.inspect_response(result, encoding, payloads)
        return await converters.encoded_off_loop(reply, self._max_reply_bytes, payloads)

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        return converters.metadata_response(self._core.metadata(request.model_name))


def call_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value; None when it has none."""
    # The clock first: a pause between the two readings then errs early, never late.
    now = time.monotonic()
    remaining = context.time_remaining()
    return None if remaining is None else now + remaining
