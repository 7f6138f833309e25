"""The OpenAPI 3.1 document, generated from the endpoints and their pydantic models.

Nothing here lists a field: request and response schemas are the models' own
JSON Schema (pydantic emits JSON Schema 2020-12, which OpenAPI 3.1 uses).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agentcaps.http.endpoint import Endpoint
from agentcaps.http.models import ErrorResponse

_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([A-Za-z_]+)(?::[a-z]+)?\}")

_ERROR_TEXT = {
    400: "not readable: malformed JSON, a token in the query string, ...",
    401: "no token, or one that is not acceptable (see WWW-Authenticate)",
    403: "a good token that does not allow this",
    404: "no such thing",
    413: "the body is over 64 KiB",
    415: "the body is not JSON",
    422: "the body does not fit the schema (fields names each wrong field)",
    503: "the store cannot answer; decisions fail closed",
}


def _operation_id(endpoint: Endpoint, method: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", endpoint.path).strip("_")
    return f"{method.lower()}_{words}"


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters from a model's fields (each one's own JSON Schema, inlined)."""
    schema = model.model_json_schema(ref_template=_REF)
    out = []
    for name, prop in schema.get("properties", {}).items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        out.append(parameter)
    return out


def build(endpoints: Sequence[Endpoint], *, version: str) -> dict[str, Any]:
    """The OpenAPI document of `endpoints`."""
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for endpoint in endpoints:
        if endpoint.body is not None:
            models[(endpoint.body, "validation")] = None
        for model in endpoint.responses.values():
            if model is not None:
                models[(model, "serialization")] = None
    models[(ErrorResponse, "serialization")] = None
    refs, schema = models_json_schema(list(models), ref_template=_REF)

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    error_ref = ref(ErrorResponse, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = _PARAM.sub(r"{\1}", endpoint.path)
        item = paths.setdefault(path, {})
        for method in endpoint.methods:
            if method == "HEAD" and "GET" in endpoint.methods:
                continue
            operation: dict[str, Any] = {
                "operationId": _operation_id(endpoint, method),
                "summary": endpoint.summary,
            }
            description = endpoint.description
            if endpoint.auth:
                description = f"Who may call it: {endpoint.auth}. {description}".strip()
                operation["security"] = [{"bearer": []}]
            if description:
                operation["description"] = description
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAM.findall(endpoint.path)
            ]
            parameters += [
                {"name": name, "in": "header", "required": False, "description": text,
                 "schema": {"type": "string"}}
                for name, text in endpoint.headers.items()
                if name != "Authorization"
            ]  # fmt: skip
            if endpoint.query is not None:
                parameters += query_parameters(endpoint.query)
            if parameters:
                operation["parameters"] = parameters
            if endpoint.body is not None:
                operation["requestBody"] = {
                    "required": not endpoint.body_optional,
                    "content": {"application/json": {"schema": ref(endpoint.body, "validation")}},
                }
            responses: dict[str, Any] = {}
            for status, model in endpoint.responses.items():
                if model is None:
                    response: dict[str, Any] = {"description": endpoint.summary + " (no body)"}
                else:
                    response = {
                        "description": model.__doc__.strip().splitlines()[0]
                        if model.__doc__
                        else "success",
                        "content": {"application/json": {"schema": ref(model, "serialization")}},
                    }
                if endpoint.response_headers and status < 300:
                    response["headers"] = {
                        name: {"description": text, "schema": {"type": "string"}}
                        for name, text in endpoint.response_headers.items()
                    }
                responses[str(status)] = response
            for status in endpoint.errors:
                responses.setdefault(
                    str(status),
                    {
                        "description": _ERROR_TEXT.get(status, "error"),
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
            if not responses:
                responses["200"] = {
                    "description": endpoint.summary,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            operation["responses"] = responses
            item[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentcaps",
            "version": version,
            "description": "Capability tokens for AI agents: mint, verify, revoke, forward-auth. "
            "Every error is {error, detail}; tokens are bearer credentials (Authorization: "
            "Bearer agc_…), never in a URL.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an agentcaps admin or issuer token",
                }
            },
        },
    }


async def serve(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


ENDPOINT = Endpoint(("GET",), "/openapi.json", serve, "This document (OpenAPI 3.1)")
