"""KServe v2 REST (the Open Inference Protocol's HTTP binding), on the shared core."""

from __future__ import annotations

from aiohttp import web

import flatscope
from flatscope.http import kserve_body
from flatscope.http.bodies import OFF_LOOP_ELEMENTS, off_loop, parse_json, read_body
from flatscope.http.serving import SERVING, answer, check_reply_size
from flatscope.open_inference import platform, tensor_metadata

ROUTES = web.RouteTableDef()
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
# Triton's names of the extensions served whole over HTTP.
EXTENSIONS = ("classification", "binary_tensor_data")
ASK_FOR_LESS = "send fewer examples per request, or leave '<layer>/source' out of the outputs"


@ROUTES.get("/v2")
async def server_metadata(request: web.Request) -> web.Response:
    return answer({"name": "flatscope", "version": flatscope.__version__, "extensions": EXTENSIONS})


@ROUTES.get("/v2/health/live")
async def live(request: web.Request) -> web.Response:
    return answer({"live": True})


@ROUTES.get("/v2/health/ready")
async def ready(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    is_ready = serving.ready and serving.core.ready
    return answer({"ready": is_ready}, 200 if is_ready else 503)


@ROUTES.get(MODEL + "/ready")
@ROUTES.get(VERSION + "/ready")
async def model_ready(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    name, version = _addressed(request)
    is_ready = serving.ready and serving.core.is_ready(name, version)
    return answer({"name": name, "ready": is_ready}, 200 if is_ready else 503)


@ROUTES.get(MODEL)
@ROUTES.get(VERSION)
async def model_metadata(request: web.Request) -> web.Response:
    core = request.app[SERVING].core
    name, version = _addressed(request)
    description = core.metadata(name, version)
    signature = core.signature(name, version)
    return answer(
        {
            "name": description.name,
            "versions": [description.version],
            "platform": platform(description),
            "inputs": [tensor_metadata(signature.input)],
            "outputs": [tensor_metadata(signature.prediction.spec)],
        }
    )


@ROUTES.post(MODEL + "/infer")
@ROUTES.post(VERSION + "/infer")
async def infer(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    core = serving.core
    name, version = _addressed(request)
    body = await read_body(request, serving.limits)
    header, binary = kserve_body.split(body, request.headers.get(kserve_body.HEADER_LENGTH))
    parsed = await parse_json(
        header, kserve_body.EXPECTED, lambda body: kserve_body.infer_request(body, binary)
    )
    result = await core.infer(name, parsed.inputs, list(parsed.outputs), version)
    signature = core.signature(result.model_name)
    labels = {signature.prediction.spec.name: core.metadata(result.model_name).labels}
    size = sum(array.size for array in result.outputs.values())
    head, parts = await off_loop(
        size > OFF_LOOP_ELEMENTS, kserve_body.infer_response, result, parsed, labels
    )
    total = len(head) + sum(len(part) for part in parts)
    check_reply_size(total, serving, ASK_FOR_LESS)
    if not parts:
        return web.Response(body=head, content_type="application/json")
    response = web.Response(body=b"".join((head, *parts)), content_type="application/octet-stream")
    response.headers[kserve_body.HEADER_LENGTH] = str(len(head))
    return response


def _addressed(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info["name"], info.get("version", "")
