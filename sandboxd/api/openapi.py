"""The OpenAPI 3.1 document of the whole API, generated from the contract and the models.

Served at ``/api/openapi.json`` (no token needed). Nothing here is written by hand per route:
paths, parameters, bodies, responses and who may call what (``x-access``) all come from
``contract.ROUTES``; schemas from the pydantic models; error reasons from ``errors.Reason``.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..models.responses import Error
from .base import BaseHandler
from .routing import Access, Op, Route

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    101: "switching to the WebSocket protocol",
    200: "success",
    201: "created",
    204: "done, no content",
    400: "malformed or out-of-range input",
    401: "no token, or an unknown one",
    403: "the token may not do this",
    404: "unknown, or not the caller's",
    409: "conflicts with the current state",
    413: "the request body is over max_request_body (an image archive: images.max_load_bytes)",
    422: "the image's content is refused (a digest, a size, an unsafe layer, a bad archive)",
    502: "the image registry failed or could not be reached",
    429: "over a quota, a profile maximum or a per-user bound",
    500: "the host failed; nothing was left half-made",
    503: "a host resource ran out (uids, subnets, addresses)",
}


def _models(routes: list[Route]) -> list[tuple[type[BaseModel], str]]:
    """Every model the document refers to, with the JSON Schema mode it is shown in."""
    found: dict[tuple[type[BaseModel], str], None] = {(Error, "serialization"): None}
    for route in routes:
        for op in route.ops.values():
            answers = [op.response, *op.also.values()]
            for model, mode in (
                (op.body, "validation"),
                (op.query, "validation"),
                *((_response_model(a), "serialization") for a in answers),
            ):
                if isinstance(model, type) and issubclass(model, BaseModel):
                    found[(model, mode)] = None
    return list(found)


def _response_model(response: Any) -> Any:
    if typing.get_origin(response) is list:
        return typing.get_args(response)[0]
    return response


def _nonnull(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the ``null`` branch."""
    options = schema.get("anyOf")
    if options:
        rest = [s for s in options if s.get("type") != "null"]
        schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **rest[0]}
        if len(rest) > 1:
            schema = {**schema, "anyOf": rest}
    schema.pop("default", None)
    return schema


def implied_errors(route: Route, op: Op) -> set[int]:
    """Statuses every operation of this kind can answer, whatever it does."""
    codes = set(op.errors)
    if op.access is not Access.PUBLIC:
        codes.add(401)
    if op.access in (Access.OWNER_NAMED, Access.SERVICE, Access.ADMIN):
        codes.add(403)
    if route.path_params():
        codes.add(404)
    if op.body is not None:
        codes |= {400, 413}
    if op.query is not None:
        codes.add(400)
    return codes


def _content(response: Any, refs: dict[Any, Any]) -> dict[str, Any] | None:
    if response is None:
        return None
    if isinstance(response, str):
        schema: dict[str, Any] = {} if response == "*/*" else {"type": "string"}
        if response == "application/json":
            schema = {"type": "object"}
        return {response: {"schema": schema}}
    if typing.get_origin(response) is list:
        item = refs[(typing.get_args(response)[0], "serialization")]
        return {"application/json": {"schema": {"type": "array", "items": item}}}
    return {"application/json": {"schema": refs[(response, "serialization")]}}


def _parameters(route: Route, op: Op, defs: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": route.params[name]},
        }
        for name in route.path_params()
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            param = {"name": name, "in": "query", "required": False, "schema": _nonnull(prop)}
            if "description" in prop:
                param["description"] = prop["description"]
            out.append(param)
    return out


def _operation(
    route: Route, method: str, op: Op, refs: dict[Any, Any], defs: dict[str, Any]
) -> dict[str, Any]:
    ok_content = _content(op.response, refs)
    responses: dict[str, Any] = {
        str(op.ok): {
            "description": STATUS_TEXT[op.ok],
            **({"content": ok_content} if ok_content else {}),
        }
    }
    for code, answer in op.also.items():
        content = _content(answer, refs)
        responses[str(code)] = {
            "description": STATUS_TEXT[code],
            **({"content": content} if content else {}),
        }
    error = {"application/json": {"schema": refs[(Error, "serialization")]}}
    for code in sorted(implied_errors(route, op)):
        responses[str(code)] = {"description": STATUS_TEXT[code], "content": error}
    out: dict[str, Any] = {
        "operationId": f"{method}{route.template}".replace("/", "_")
        .replace("{", "")
        .replace("}", ""),
        "summary": op.summary,
        "x-access": str(op.access),
        "responses": responses,
    }
    if op.access is Access.PUBLIC:
        out["security"] = []
    if op.websocket:
        out["x-websocket"] = True
    params = _parameters(route, op, defs)
    if params:
        out["parameters"] = params
    if isinstance(op.body, str):
        raw = {"type": "string", "format": "binary"}
        out["requestBody"] = {"required": True, "content": {op.body: {"schema": raw}}}
    elif op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    return out


def document(routes: list[Route]) -> dict[str, Any]:
    refs, top = models_json_schema(_models(routes), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, Any] = {}
    for route in routes:
        item = paths.setdefault(route.template, {})
        for method, op in route.ops.items():
            item[method] = _operation(route, method, op, refs, defs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sandboxd",
            "version": __version__,
            "description": "Every Jupyter kernel and server in its own Linux container. "
            "x-access on each operation says who may call it (see sandboxd/api/routing.py).",
        },
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <TOKEN>` (or `Bearer <TOKEN>`)",
                },
                "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"token": []}, {"tokenQuery": []}],
        "paths": paths,
    }


class OpenApiHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.finish(self.settings["openapi"])


def rendered(routes: list[Route]) -> str:
    return json.dumps(document(routes))
