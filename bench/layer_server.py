"""flatscope with one layer of its request path cut away, for the per-request budget.

Run: ``python bench/layer_server.py VARIANT [flatscope serve flags]``; it starts
``flatscope serve`` with those flags after replacing one piece:

  grpc-layer  ModelService.Predict answers with a fixed reply of the default model's
              size (the echo's): flatscope's gRPC layer (server options, the
              interceptor's receive timeout, admission and metrics, generic handlers)
              without decoding the request, the core, the batcher or the model.
  inline      every forward pass runs on the event loop's thread, in the batcher's
              hand-off itself (an executor that runs what it is given at once): the
              whole request path without the hop to the model's thread and back.

Measurement only (``bench/budget.py`` subtracts one variant from the next); neither
variant is a way to serve.
"""

from __future__ import annotations

import concurrent.futures
import sys

import numpy as np

from flatscope import cli, core
from flatscope.grpc import converters, server, servicer
from flatscope.v1 import model_service_pb2 as pb


class _FixedReply(servicer.ModelServicer):
    _reply = pb.PredictResponse(
        model_name="echo",
        model_version="1",
        outputs=converters.to_tensor(np.full((1, 10), 0.1, np.float32)),
    ).SerializeToString()

    async def Predict(self, request, context) -> bytes:  # noqa: N802 (gRPC's name)
        return self._reply


class _AtOnce(concurrent.futures.Executor):
    """Runs each call in ``submit``, on the caller's thread."""

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller, as an executor does
            future.set_exception(exc)
        return future


class _InlineCore(core.ModelCore):
    def __init__(self, settings, metrics=None, executor=None):
        super().__init__(settings, metrics, executor or _AtOnce())


VARIANTS = {
    "grpc-layer": lambda: setattr(server, "ModelServicer", _FixedReply),
    "inline": lambda: setattr(server, "ModelCore", _InlineCore),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: layer_server.py {{{','.join(VARIANTS)}}} [serve flags]")
    VARIANTS[sys.argv[1]]()
    raise SystemExit(cli.main(["serve", *sys.argv[2:]]))
