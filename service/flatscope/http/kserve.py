"""KServe v2 REST (the Open Inference Protocol's HTTP binding), on the shared core."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

import flatscope
from flatscope.grpc.kserve.converters import model_config as config_message
from flatscope.http import kserve_body
from flatscope.http.bodies import OFF_LOOP_ELEMENTS, off_loop, parse_json, read_body
from flatscope.http.serving import SERVING, answer, check_reply_size
from flatscope.open_inference import platform, tensor_metadata

ROUTES = web.RouteTableDef()
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
# Triton's names of the extensions served whole over HTTP.
EXTENSIONS = ("classification", "binary_tensor_data", "model_configuration")
# Protobuf's JSON writes these as strings; Triton's config JSON as numbers.
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
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


@ROUTES.get(MODEL + "/config")
@ROUTES.get(VERSION + "/config")
async def model_config(request: web.Request) -> web.Response:
    """Triton's model configuration extension: the gRPC ModelConfig as Triton writes it in
    JSON (proto field names, every field, 64-bit integers as numbers)."""
    core = request.app[SERVING].core
    name, version = _addressed(request)
    description = core.metadata(name, version)
    signature = core.signature(name, version)
    config = config_message(description, signature, core.batching).config
    body = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return answer(_numbers(config, body))


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


def _numbers(message: Message, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (``message`` in protobuf's JSON) with its 64-bit integers as JSON numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in body:
            continue
        value, written = getattr(message, field.name), body[field.name]
        # Repeated fields are JSON lists (FieldDescriptor.label is gone in protobuf 7).
        repeated = isinstance(written, list)
        if field.type in _INT64:
            body[field.name] = [int(v) for v in value] if repeated else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                is_message = field.message_type.fields_by_name["value"].message_type
                for key, item in value.items() if is_message else ():
                    _numbers(item, written[str(key)])
            elif repeated:
                for item, item_body in zip(value, written, strict=True):
                    _numbers(item, item_body)
            else:
                _numbers(value, written)
    return body
