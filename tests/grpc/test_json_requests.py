"""The README's grpcurl bodies, sent through protobuf's JSON mapping as grpcurl would."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import json_format

from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc

INPUTS = {"dtype": "FLOAT32", "shape": [1, 48, 48, 3], "floatValues": [0.0] * 6912}


def test_readme_json_bodies(default_server):
    predict = json_format.ParseDict({"inputs": INPUTS}, pb.PredictRequest())
    inspect = json_format.ParseDict(
        {
            "inputs": INPUTS,
            "coordinateStart": 13,
            "coordinateCount": 3,
            "outputEncoding": "TENSOR_ENCODING_TYPED",
        },
        pb.InspectRequest(),
    )
    with grpc.insecure_channel(default_server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        predicted = stub.Predict(predict, timeout=30)
        inspected = json_format.MessageToDict(stub.Inspect(inspect, timeout=30))
    assert json_format.MessageToDict(predicted)["outputs"]["shape"] == ["1", "10"]
    assert len(predicted.classes) == 1
    layout = inspected["layout"]
    assert layout["formula"] == "flat = h*768 + w*32 + c"
    assert layout["coordinates"][0] == {"flatIndex": "13", "sourceIndex": ["0", "0", "13"]}
    assert len(inspected["flattened"]["floatValues"]) == 18432
    np.testing.assert_allclose(
        inspected["outputs"]["floatValues"],
        np.frombuffer(predicted.outputs.raw_data, "<f4"),
        rtol=1e-6,
    )
