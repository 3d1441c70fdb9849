"""The floor: a bare gRPC server that answers Predict and Inspect without a model.

It speaks flatscope.v1.ModelService with the same server options and event loop as
flatscope and replies with fixed messages of the default model's sizes (Predict: a
(1, 10) output; Inspect: also the (1, 18432) Flatten output and a layout), so a client
pays for exactly the transport.
Run: ``python bench/echo_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import numpy as np

from flatscope.cli import event_loop_factory
from flatscope.grpc import converters
from flatscope.settings import Settings
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc


class Echo(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self):
        outputs = converters.to_tensor(np.full((1, 10), 0.1, np.float32))
        self._reply = pb.PredictResponse(model_name="echo", model_version="1", outputs=outputs)
        flattened = converters.to_tensor(np.full((1, 18432), 0.1, np.float32))
        layout = pb.FlattenLayout(
            layer_name="flatten",
            data_format="channels_last",
            source_shape=(24, 24, 32),
            axis_names=("height", "width", "channels"),
            strides=(768, 32, 1),
            flat_size=18432,
        )
        self._inspect_reply = pb.InspectResponse(
            model_name="echo",
            model_version="1",
            flattened=flattened,
            outputs=outputs,
            layout=layout,
            classes=[0],
        )

    async def Predict(self, request, context):
        return self._reply

    async def Inspect(self, request, context):
        return self._inspect_reply


async def main(port: int) -> None:
    settings = Settings()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ]
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}; serving model echo", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    # The same event loop as flatscope serve picks by default.
    with asyncio.Runner(loop_factory=event_loop_factory(Settings().event_loop)) as runner:
        runner.run(main(int(sys.argv[1])))
