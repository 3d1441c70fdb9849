"""Health follows the model's loading; reflection describes every service the server runs."""

from __future__ import annotations

import grpc
import pytest
from conftest import ServerThread, settings
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc, tensor_pb2

# A deadline so that a hung server fails a test instead of stalling the run.
TIMEOUT = 60.0
MODEL_SERVICE = "flatscope.v1.ModelService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
# Health is reported for the whole server ("") and for the model service.
# The server as a whole, flatscope.v1, and KServe v2 under the name Triton's clients check.
HEALTH_NAMES = ["", MODEL_SERVICE, "inference.GRPCInferenceService"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def one_image() -> tensor_pb2.Tensor:
    """One all-zero input for the default model, (1, 48, 48, 3) FLOAT32."""
    return tensor_pb2.Tensor(
        dtype=tensor_pb2.FLOAT32, shape=(1, 48, 48, 3), raw_data=bytes(48 * 48 * 3 * 4)
    )


def health_of(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return stub.Check(request, timeout=TIMEOUT).status


def test_server_before_load_is_not_serving_and_model_calls_are_unavailable():
    server = ServerThread(settings())
    try:
        with grpc.insecure_channel(server.target) as channel:
            for name in HEALTH_NAMES:
                assert health_of(channel, name) == NOT_SERVING, name
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            calls = [
                (stub.Predict, pb.PredictRequest(inputs=one_image())),
                (stub.Inspect, pb.InspectRequest(inputs=one_image())),
                (stub.GetModelMetadata, pb.GetModelMetadataRequest()),
            ]
            for call, request in calls:
                with pytest.raises(grpc.RpcError) as caught:
                    call(request, timeout=TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "loading" in caught.value.details()
                assert "SERVING" in caught.value.details()
    finally:
        server.stop()


def test_health_turns_serving_once_the_model_is_loaded():
    server = ServerThread(settings())
    try:
        with grpc.insecure_channel(server.target) as channel:
            assert {health_of(channel, name) for name in HEALTH_NAMES} == {NOT_SERVING}
            server.load_model()
            assert {health_of(channel, name) for name in HEALTH_NAMES} == {SERVING}
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            reply = stub.Predict(pb.PredictRequest(inputs=one_image()), timeout=TIMEOUT)
            assert tuple(reply.outputs.shape) == (1, 10)
    finally:
        server.stop()


def test_health_of_an_unknown_service_is_not_found(default_server):
    with grpc.insecure_channel(default_server.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            health_of(channel, "no.such.Service")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert health_of(channel, MODEL_SERVICE) == SERVING


def test_reflection_lists_the_model_health_and_reflection_services(default_server):
    with grpc.insecure_channel(default_server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {MODEL_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE} <= services


def test_reflection_describes_model_service_and_its_messages(default_server):
    with grpc.insecure_channel(default_server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert database.FindFileContainingSymbol(MODEL_SERVICE).name == (
            "flatscope/v1/model_service.proto"
        )
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(MODEL_SERVICE)
        assert [method.name for method in service.methods] == [
            "Predict",
            "Inspect",
            "GetModelMetadata",
        ]
        types = {
            method.name: (method.input_type.full_name, method.output_type.full_name)
            for method in service.methods
        }
        assert types == {
            "Predict": ("flatscope.v1.PredictRequest", "flatscope.v1.PredictResponse"),
            "Inspect": ("flatscope.v1.InspectRequest", "flatscope.v1.InspectResponse"),
            "GetModelMetadata": (
                "flatscope.v1.GetModelMetadataRequest",
                "flatscope.v1.GetModelMetadataResponse",
            ),
        }
        # tensor.proto comes along as a dependency, so clients can build a Tensor too.
        tensor = pool.FindMessageTypeByName("flatscope.v1.Tensor")
        assert [field.name for field in tensor.fields] == [
            "dtype",
            "shape",
            "raw_data",
            "float_values",
        ]
