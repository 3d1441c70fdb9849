"""flatscope's own API over HTTP, in JSON: the layout, coordinates, Inspect and Predict.

- ``GET /flatscope/v1/models/{name}/layout``: a Flatten layer's layout (``?layer=``), and
  on request where one flat index came from (``?flat_index=``), where one source element
  goes (``?source_index=h,w,c``), or the source index of each flat index of a range
  (``?coordinate_start=&coordinate_count=``). No model call.
- ``POST /flatscope/v1/models/{name}:inspect``: one forward pass seen at a Flatten layer,
  as the gRPC Inspect: ``inputs`` (a nested list, (batch, *input shape)), ``layer``,
  ``include_source``, ``coordinate_start``, ``coordinate_count``; the flattened tensor only
  with ``include_flattened``.
- ``POST /flatscope/v1/models/{name}:predict``: the prediction and class of each example.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import web

from flatscope.errors import InvalidInputError
from flatscope.http import jsonio
from flatscope.http.bodies import json_tensor, parse_json, read_body
from flatscope.http.serving import SERVING, answer, encoded_answer
from flatscope.tensors import ACCEPTED_DTYPE, TensorPayload, Wording

ROUTES = web.RouteTableDef()
MODEL = "/flatscope/v1/models/{name:[^/:]+}"
WORDING = Wording(values="inputs", nested=False)
EXPECTED = "an object with 'inputs', a nested list of shape (batch, *input shape)"
ASK_FOR_LESS = "send fewer examples per request, or leave include_source and include_flattened off"
LAYOUT_QUERY = ("layer", "flat_index", "source_index", "coordinate_start", "coordinate_count")
INSPECT_FIELDS = (
    "inputs",
    "layer",
    "include_source",
    "include_flattened",
    "coordinate_start",
    "coordinate_count",
)
PREDICT_FIELDS = ("inputs",)


@ROUTES.get(MODEL + "/layout")
async def layout(request: web.Request) -> web.Response:
    core = request.app[SERVING].core
    query = request.query
    _known("query parameter", query.keys(), LAYOUT_QUERY)
    repeated = next((key for key in query if len(query.getall(key)) > 1), None)
    if repeated is not None:
        raise InvalidInputError(
            f"query parameter {json.dumps(repeated)} is given more than once; give it once"
        )
    name = request.match_info["name"]
    found = core.layout(name, query.get("layer", ""))
    description = core.metadata(name)
    body: dict[str, Any] = {
        "model_name": description.name,
        "model_version": description.version,
        "layout": found.fields(),  # orjson writes tuples as lists
    }
    if "flat_index" in query:
        flat = _int(query, "flat_index")
        body["flat_index"] = flat
        body["source_index"] = _index(lambda: list(found.source_index(flat)))
    if "source_index" in query:
        text = query["source_index"]
        try:
            source = [int(part) for part in text.split(",")]
        except ValueError:
            raise InvalidInputError(
                f"source_index '{text[:60]}' is not comma-separated integers; expected one "
                f"per axis {list(found.axis_names)}"
            ) from None
        body["source_index"] = source
        body["flat_index"] = _index(lambda: found.flat_index(source))
    start, count = _int(query, "coordinate_start"), _int(query, "coordinate_count")
    if start or count:
        body["coordinate_start"] = start
        body["coordinates"] = core.coordinates(found, start, count)
    return answer(body)


@ROUTES.post(MODEL + ":inspect")
async def inspect(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    _known("query parameter", request.query.keys(), ())
    body, inputs = await parse_json(
        await read_body(request, serving.limits),
        EXPECTED,
        lambda body: (body, _inputs(body, INSPECT_FIELDS)),
    )
    result = await serving.core.inspect(
        request.match_info["name"],
        inputs,
        layer=_field(body, "layer", str, ""),
        include_source=_field(body, "include_source", bool, False),
        coordinate_start=_field(body, "coordinate_start", int, 0),
        coordinate_count=_field(body, "coordinate_count", int, 0),
    )
    flattened = _field(body, "include_flattened", bool, False)
    reply: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": result.outputs,
        "classes": result.classes,
        "layout": result.layout.fields(),
        "coordinate_start": result.coordinate_start,
        "coordinates": result.coordinates,
    }
    if flattened:
        reply["flattened"] = result.flattened
    if result.source is not None:
        reply["source"] = result.source
    return await _json(serving, reply)


@ROUTES.post(MODEL + ":predict")
async def predict(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    _known("query parameter", request.query.keys(), ())
    inputs = await parse_json(
        await read_body(request, serving.limits),
        EXPECTED,
        lambda body: _inputs(body, PREDICT_FIELDS),
    )
    result = await serving.core.predict(request.match_info["name"], inputs)
    reply = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": result.outputs,
        "classes": result.classes,
    }
    return await _json(serving, reply)


async def _json(serving, reply: dict[str, Any]) -> web.Response:
    size = sum(value.size for value in reply.values() if isinstance(value, np.ndarray))
    return await encoded_answer(serving, size, ASK_FOR_LESS, jsonio.dumps, reply)


def _inputs(body: dict[str, Any], fields: tuple[str, ...]) -> TensorPayload:
    _known("field", body.keys(), fields)
    value = body.get("inputs")
    if value is None:  # the core says what it expected
        return TensorPayload(ACCEPTED_DTYPE, (), wording=WORDING)
    return json_tensor("'inputs'", value, WORDING)


def _known(kind: str, given, known: tuple[str, ...]) -> None:
    # A misspelt option (include_sources) would otherwise be ignored without a word.
    unknown = [key for key in given if key not in known]
    if unknown:
        expected = f"expected one of {', '.join(known)}" if known else "this route takes none"
        raise InvalidInputError(f"unknown {kind} {json.dumps(unknown[0])[:60]}; {expected}")


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if type(value) is not kind:
        raise InvalidInputError(
            f"'{key}' is {json.dumps(value)[:60]}; expected a JSON {kind.__name__}"
        )
    return value


def _int(query, key: str) -> int:
    text = query.get(key, "0")
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(f"{key} is '{text[:60]}'; expected an integer") from None


def _index(compute):
    try:
        return compute()
    except IndexError as exc:
        raise InvalidInputError(str(exc)) from None
