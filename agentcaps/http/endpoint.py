"""One declaration per route: its handler, and what OpenAPI says of it.

Each route module lists its `Endpoint`s; the app builds Starlette routes from
them and the OpenAPI document from the very same list, so the two cannot
drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

# A request handler, or a plain ASGI app (an object, not a function: Starlette
# tells the two apart that way) for a route that builds no Request or Response.
Handler = Callable[[Request], Awaitable[Response]] | ASGIApp


@dataclass(frozen=True)
class Endpoint:
    """A route and its contract.

    Args:
        methods: HTTP methods it answers.
        path: the Starlette path, e.g. "/v1/keys/{kid}/rotate".
        handler: the async handler, or a plain ASGI app.
        summary: one line for OpenAPI.
        body: the request model, if it reads a JSON body.
        query: the model of its query string, if it reads one.
        body_optional: an empty body stands for `{}`.
        responses: success status -> response model (None: no body).
        errors: error statuses it may answer (ErrorResponse bodies).
        auth: who may call it, in words; None: anyone.
        headers: request headers it reads, name -> description.
        description: more words for OpenAPI.
        any_method: answer every method, not only `methods` (which OpenAPI
            lists): forward-auth judges whatever method the original request had.
    """

    methods: tuple[str, ...]
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body_optional: bool = False
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    auth: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    response_headers: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    name: str = ""
    any_method: bool = False

    def route(self) -> Route:
        """The Starlette route."""
        methods = None if self.any_method else list(self.methods)
        return Route(self.path, self.handler, methods=methods, name=self.name or None)


def respond(model: BaseModel, status: int = 200, *, secret: bool = False) -> Response:
    """A JSON response of `model`; `secret` marks one carrying a token (no-store, no-cache)."""
    headers = {"Cache-Control": "no-store"}
    if secret:
        headers["Pragma"] = "no-cache"
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)
