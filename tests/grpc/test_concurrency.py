"""64 concurrent clients with distinct inputs: each gets exactly its own answer."""

from __future__ import annotations

import asyncio

import grpc
import keras
import numpy as np

from flatscope import default_model
from flatscope.grpc import converters
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc

CLIENTS = 64


def test_concurrent_clients_get_their_own_results(default_server):
    rng = np.random.default_rng(7)
    # Distinct inputs of mixed batch sizes; every third client asks Inspect.
    inputs = [rng.random((1 + i % 3, 48, 48, 3), dtype=np.float32) for i in range(CLIENTS)]
    registry = default_server.registry

    def sample(name: str) -> float:
        return registry.get_sample_value(name, {"model": "digits"}) or 0.0

    passes_before = sample("flatscope_batch_size_count")
    examples_before = sample("flatscope_batch_size_sum")

    async def client(index: int, stub: model_service_pb2_grpc.ModelServiceStub):
        tensor = converters.to_tensor(inputs[index])
        if index % 3 == 0:
            reply = await stub.Inspect(pb.InspectRequest(inputs=tensor), timeout=60)
            return converters.inspection(reply)
        reply = await stub.Predict(pb.PredictRequest(inputs=tensor), timeout=60)
        return converters.prediction(reply)

    async def run_all():
        # One channel per client, as separate processes would have.
        channels = [grpc.aio.insecure_channel(default_server.target) for _ in range(CLIENTS)]
        try:
            stubs = [model_service_pb2_grpc.ModelServiceStub(c) for c in channels]
            return await asyncio.gather(*(client(i, stubs[i]) for i in range(CLIENTS)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    results = asyncio.run(run_all())

    model = keras.saving.load_model(default_model.model_path(), compile=False)
    flatten = model.get_layer("flatten")
    probe = keras.Model(model.inputs[0], [model.outputs[0], flatten.output])
    # A shared pass runs other batch sizes than Keras here, and oneDNN picks kernels by
    # batch size: results agree to ~1e-5, far closer than any two inputs' answers.
    tolerance = {"rtol": 1e-4, "atol": 1e-5}
    for index, result in enumerate(results):
        expected, expected_flat = (keras.ops.convert_to_numpy(t) for t in probe(inputs[index]))
        np.testing.assert_allclose(result.outputs, expected, **tolerance)
        np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
        if index % 3 == 0:
            np.testing.assert_allclose(result.flattened, expected_flat, **tolerance)
    examples = sum(len(x) for x in inputs)
    passes = registry.get_sample_value("flatscope_batch_size_count", {"model": "digits"})
    assert (
        registry.get_sample_value("flatscope_batch_size_sum", {"model": "digits"}) - examples_before
        == examples
    )
    assert 1 <= passes - passes_before <= CLIENTS
