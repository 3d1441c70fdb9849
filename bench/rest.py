"""HTTP/REST against gRPC on one server: the same load, one run, interleaved rounds.

Run: ``.venv/bin/python bench/rest.py`` (about three minutes) or ``--quick`` (under one).

One server process (``--http-port`` on, batching on) is driven from this process, in
interleaved rounds (the order rotates each round), with batch-``--batch`` requests of
48x48x3 images asking for the prediction, sent as each client sends them:
  grpc         inference.GRPCInferenceService/ModelInfer, raw_input_contents (tritonclient.grpc)
  rest-binary  POST /v2/models/digits/infer, binary tensor data both ways (tritonclient.http)
  rest-json    POST /v2/models/digits/infer, JSON ``data`` both ways
  tfs-rows     POST /v1/models/digits:predict, ``instances`` (TF Serving REST)
HTTP goes through one aiohttp client session (keep-alive, ``concurrency`` connections).
Prints requests/s, p50, p99 and the server's CPU time per request (medians over rounds) and
each REST path's ratios to gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
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
from tritonclient.grpc import service_pb2 as kserve_pb  # noqa: E402
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

PROTOCOLS = ("grpc", "rest-binary", "rest-json", "tfs-rows")


def http_bodies(images: np.ndarray) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """protocol -> (path, body, headers) for the REST paths."""
    data = np.ascontiguousarray(images, "<f4").tobytes()
    tensor = {"name": "image", "datatype": "FP32", "shape": list(images.shape)}
    binary = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "digit", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(binary).encode()
    typed = {"inputs": [{**tensor, "data": images.ravel().tolist()}]}
    rows = {"instances": images.tolist()}
    infer = "/v2/models/digits/infer"
    return {
        "rest-binary": (infer, head + data, {"Inference-Header-Content-Length": str(len(head))}),
        "rest-json": (infer, json.dumps(typed).encode(), {"Content-Type": "application/json"}),
        "tfs-rows": (
            "/v1/models/digits:predict",
            json.dumps(rows).encode(),
            {"Content-Type": "application/json"},
        ),
    }


async def drive_http(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> list[float]:
    """POSTs ``body`` from ``concurrency`` workers for ``seconds``; returns latencies."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{reply.status}: {await reply.text()}")

        await call()  # connect and warm up
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                await call()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 rounds of 1 s per cell")
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 4

    images = np.random.default_rng(0).random((args.batch, 48, 48, 3), dtype=np.float32)
    infer = kserve_pb.ModelInferRequest(model_name="digits")
    infer.inputs.add(name="image", datatype="FP32", shape=images.shape)
    infer.raw_input_contents.append(np.ascontiguousarray(images, "<f4").tobytes())
    bodies = http_bodies(images)
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    http_port = str(free_port())
    with server_process(flatscope("--metrics-port", "0", "--http-port", http_port)) as server:
        base = f"http://127.0.0.1:{http_port}"
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for protocol in rotated(PROTOCOLS, round_):
                    cpu = cpu_seconds(server.pid)
                    if protocol == "grpc":
                        run = drive(
                            server.target,
                            "ModelInfer",
                            infer,
                            concurrency,
                            args.seconds,
                            GRPCInferenceServiceStub,
                        )
                    else:
                        path, body, headers = bodies[protocol]
                        run = drive_http(base + path, body, headers, concurrency, args.seconds)
                    latencies = asyncio.run(run)
                    cpu_ms = (cpu_seconds(server.pid) - cpu) / len(latencies) * 1e3
                    results.setdefault((protocol, concurrency), []).append(
                        (*summary(latencies, args.seconds), cpu_ms)
                    )

    print(f"batch {args.batch}, {args.rounds} rounds of {args.seconds:g} s per cell")
    print_medians(results, PROTOCOLS, args.concurrency)


if __name__ == "__main__":
    main()
