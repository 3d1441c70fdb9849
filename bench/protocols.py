"""The standard protocols against flatscope's own Predict: same server, same load, one run.

Run: ``.venv/bin/python bench/protocols.py`` (about four minutes) or ``--quick`` (one).

One server process (metrics on, batching on, as ``flatscope serve`` runs) is driven from
this process by an asynchronous gRPC client, in interleaved rounds (so a noisy machine
hits every protocol alike; the order rotates each round), with batch-1 requests of one
48x48x3 image sent the way each protocol's own client sends it:
  flatscope  flatscope.v1.ModelService/Predict, Tensor.raw_data
  kserve     inference.GRPCInferenceService/ModelInfer, raw_input_contents (as tritonclient)
  tfserving  tensorflow.serving.PredictionService/Predict, TensorProto.tensor_content
             (as tf.make_tensor_proto)
Each returns the prediction only. Prints requests/s, p50, p99 and the server's CPU time
per request (medians over rounds; CPU time is the least disturbed by other load on the
machine) and each protocol's ratios to flatscope's own Predict (target: within 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    cpu_seconds,
    drive,
    flatscope,
    free_port,
    print_medians,
    rotated,
    server_process,
    summary,
)
from tensorflow.core.framework import tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis.prediction_service_pb2_grpc import (  # noqa: E402
    PredictionServiceStub,
)
from tritonclient.grpc import service_pb2 as kserve_pb  # noqa: E402
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

from flatscope.grpc import converters  # noqa: E402
from flatscope.v1 import model_service_pb2 as pb  # noqa: E402
from flatscope.v1.model_service_pb2_grpc import ModelServiceStub  # noqa: E402


def requests(image: np.ndarray) -> dict[str, tuple[str, object, object]]:
    """protocol -> (method, request, stub factory), all carrying ``image`` as raw bytes."""
    data = np.ascontiguousarray(image, "<f4").tobytes()
    infer = kserve_pb.ModelInferRequest(model_name="digits")
    infer.inputs.add(name="image", datatype="FP32", shape=image.shape)
    infer.raw_input_contents.append(data)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "digits"
    tensor = predict.inputs["image"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.extend(
        tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in image.shape
    )
    tensor.tensor_content = data
    return {
        "flatscope": (
            "Predict",
            pb.PredictRequest(inputs=converters.to_tensor(image)),
            ModelServiceStub,
        ),
        "kserve": ("ModelInfer", infer, GRPCInferenceServiceStub),
        "tfserving": ("Predict", predict, PredictionServiceStub),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 rounds of 1 s per cell")
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 8

    image = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)
    calls = requests(image)
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    with server_process(flatscope("--metrics-port", str(free_port()))) as server:
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for protocol in rotated(list(calls), round_):
                    method, request, stub = calls[protocol]
                    cpu = cpu_seconds(server.pid)
                    latencies = asyncio.run(
                        drive(server.target, method, request, concurrency, args.seconds, stub)
                    )
                    cpu_ms = (cpu_seconds(server.pid) - cpu) / len(latencies) * 1e3
                    results.setdefault((protocol, concurrency), []).append(
                        (*summary(latencies, args.seconds), cpu_ms)
                    )

    print_medians(results, list(calls), args.concurrency)


if __name__ == "__main__":
    main()
