"""``/openapi.json``: an OpenAPI 3.1 document generated from the API's models.

Each route is declared once as an :class:`Operation` (method, path, request
model, query model, response models by status). The handlers are wired from
that declaration and the document is built from it, with every schema coming
from pydantic's ``models_json_schema`` (refs rewritten into
``#/components/schemas``). OpenAPI 3.1 is used because its Schema Object *is*
JSON Schema 2020-12, which is what pydantic emits (``anyOf`` with
``{"type": "null"}`` for optional fields, ``const``, ...): nothing has to be
translated, so the document cannot disagree with the validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from rtchub import __version__
from rtchub.api.models import ID_REGEX, ErrorBody
from rtchub.protocol.messages import ID_RULE

REF = "#/components/schemas/{model}"

#: Errors every API call can answer, besides its own.
COMMON_ERRORS: dict[int, str] = {
    401: "missing or wrong X-API-Key",
    404: "the API is disabled (no --api-key), or the resource does not exist",
}


@dataclass
class Operation:
    method: str
    path: str
    op_id: str
    summary: str
    handler: Callable[..., Any]
    responses: dict[int, tuple[type[BaseModel], str]]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: list[str] = field(default_factory=list)
    description: str = ""
    tags: list[str] = field(default_factory=lambda: ["api"])
    #: A non-JSON success body (a file download): its media types; 2xx then have a binary schema.
    media_types: tuple[str, ...] = ()
    #: Statuses answered without a body (e.g. 416 from a Range request).
    bare: dict[int, str] = field(default_factory=dict)


def build_openapi(ops: list[Operation]) -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for op in ops:
        if op.body is not None:
            pairs.append((op.body, "validation"))
        for model, _ in op.responses.values():
            pairs.append((model, "serialization"))
    refs, top = models_json_schema(pairs, ref_template=REF)
    schemas = top.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        item: dict[str, Any] = {
            "operationId": op.op_id,
            "summary": op.summary,
            "tags": op.tags,
            "parameters": [],
            "responses": {},
        }
        if op.description:
            item["description"] = op.description
        for name in op.path_params:
            item["parameters"].append({
                "name": name, "in": "path", "required": True,
                "schema": {"type": "string", "pattern": ID_REGEX, "minLength": 1, "maxLength": 64},
                "description": ID_RULE,
            })
        if op.query is not None:
            qschema = op.query.model_json_schema(mode="validation", ref_template=REF)
            required = set(qschema.get("required", ()))
            for name, prop in qschema.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k != "title"}
                param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                         "schema": prop}
                if "description" in prop:
                    param["description"] = prop["description"]
                item["parameters"].append(param)
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        statuses = dict(op.responses)
        for status, desc in COMMON_ERRORS.items():
            statuses.setdefault(status, (ErrorBody, desc))
        if op.body is not None or op.query is not None or op.path_params:
            statuses.setdefault(400, (ErrorBody, "the request is not valid (see error.details)"))
        for status in sorted(statuses):
            model, desc = statuses[status]
            if op.media_types and 200 <= status < 300:
                content = {t: {"schema": {"type": "string", "format": "binary"}} for t in op.media_types}
            else:
                content = {"application/json": {"schema": refs[(model, "serialization")]}}
            item["responses"][str(status)] = {"description": desc, "content": content}
        for status, desc in op.bare.items():
            item["responses"][str(status)] = {"description": desc}
        if not item["parameters"]:
            del item["parameters"]
        paths.setdefault(op.path, {})[op.method.lower()] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rtchub server API",
            "version": __version__,
            "description": "Push messages to rooms, see who is online, disconnect users. "
                           "Send the key given to `rtchub serve --api-key` in `X-API-Key`. "
                           "See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"apiKey": []}],
    }
