"""What tutorials write: a gRPC server that calls ``model.predict`` per request.

Run: ``python bench/naive_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import keras
import numpy as np

from flatscope.default_model import model_path
from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc


class Naive(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self):
        self._model = keras.saving.load_model(model_path(), compile=False)

    async def Predict(self, request, context):
        shape = tuple(request.inputs.shape)
        inputs = np.frombuffer(request.inputs.raw_data, np.float32).reshape(shape)
        outputs = self._model.predict(inputs, verbose=0)
        return pb.PredictResponse(
            model_name="naive",
            outputs=converters.to_tensor(outputs),
            classes=outputs.argmax(axis=1).tolist(),
        )


async def main(port: int) -> None:
    server = grpc.aio.server()
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Naive(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}; serving model naive", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
