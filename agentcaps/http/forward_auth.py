"""Forward-auth: a gateway asks whether to let a request through, and learns who makes it.

Three ways to name the original request, one per gateway family:

- Traefik `forwardAuth`: `X-Forwarded-Method` and `X-Forwarded-Uri`;
- nginx `auth_request`: `X-Original-Method` and `X-Original-URI` (set them
  with `proxy_set_header`);
- Envoy `ext_authz` (HTTP mode, `path_prefix: /v1/authz`): the original
  method, and the original path after `/v1/authz`.

A client can add headers of the family its gateway does not set. So when the
request names its original request more than once, every naming must agree,
or the request is denied: a client must not pick the path it is judged on.

Answers: 200, with no body, and X-Agentcaps-Customer, -User, -Agent (the last holder),
-Chain, -Token-Id, -Purpose; 401 with WWW-Authenticate for a missing or
unacceptable token; 403 with X-Agentcaps-Reason for a good token that does
not allow this request; 503 when revocation state is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from starlette.types import Receive, Scope, Send

from agentcaps.http.endpoint import Endpoint
from agentcaps.http.errors import BadRequest
from agentcaps.http.gate import IDENTITY_HEADERS, identity_values, without_blocking
from agentcaps.http.rules import PathRefused
from agentcaps.http.service import Service

PREFIX = "/v1/authz"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_FAMILIES = (
    ("x-original-method", "x-original-uri"),  # nginx
    ("x-forwarded-method", "x-forwarded-uri"),  # Traefik
)
# The request headers forward-auth reads (ASGI gives names in lowercase).
_READ = frozenset(
    {b"authorization", b"x-agentcaps-purpose", b"x-agentcaps-actor"}
    | {name.encode() for family in _FAMILIES for name in family}
)


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """The headers forward-auth reads, each with all its values, in one pass over the request's."""
    found: dict[str, list[str]] = {}
    for name, value in raw:
        if name in _READ:
            found.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return found


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise PathRefused(f"{name} is given more than once")
    return values[0]


def original_request(method: str, raw_path: str, headers: dict[str, list[str]]) -> tuple[str, str]:
    """The original (method, raw target) a forward-auth request asks about.

    `method` and `raw_path` are the forward-auth request's own; `headers`
    as `read_headers` gives them.

    Raises:
        BadRequest: it names no original request.
        PathRefused: it names it more than once, differently.
    """
    named: list[tuple[str, str]] = []
    for method_header, uri_header in _FAMILIES:
        uri = _one(headers, uri_header)
        original = _one(headers, method_header)
        if uri is not None:
            named.append(((original or method).upper(), uri))
    if raw_path.startswith(PREFIX + "/"):
        named.append((method.upper(), raw_path[len(PREFIX) :]))
    if not named:
        raise BadRequest(
            "no original request: send X-Original-Method and X-Original-URI (nginx), "
            "X-Forwarded-Method and X-Forwarded-Uri (Traefik), or ask /v1/authz/<path> (Envoy)"
        )
    first_method, first_target = named[0]
    first_path = first_target.split("?", 1)[0]
    for method_, target in named[1:]:
        if method_ != first_method or target.split("?", 1)[0] != first_path:
            raise PathRefused("the original request is named more than once, differently")
    return first_method, first_target


class ForwardAuth:
    """Forward-auth as a plain ASGI app: every gateway request comes here, so no Request or Response is built.

    A refusal is raised, and answered by the app's exception handlers as any route's is.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: Service = scope["app"].state.service
        headers = read_headers(scope["headers"])
        method: str = scope["method"]
        raw_path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
        purposes = headers.get("x-agentcaps-purpose", [])
        refused: PathRefused | None = None
        try:
            method, target = original_request(method, raw_path, headers)
        except PathRefused as exc:
            target, refused = "", exc
        authorization = headers.get("authorization", [])
        decision = await without_blocking(
            lambda local_only: service.gate.decide(
                authorization=authorization,
                method=method,
                target=target,
                purposes=purposes,
                actors=headers.get("x-agentcaps-actor", ()),
                refused=refused,
                local_only=local_only,
            )
        )
        # Allowed: at most one purpose was declared.
        values = identity_values(decision, (purposes[0] or None) if purposes else None)
        raw = [
            (name, value.encode("latin-1"))
            for name, value in zip(_IDENTITY_NAMES, values, strict=True)
        ]
        raw.extend(_ALLOWED_HEADERS)
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": b""})


authz = ForwardAuth()


# An allowed request is answered by its status and headers alone: gateways
# read nothing else, and a body would cost the server a second write.
# (Cache-Control: no-store and X-Request-Id come from the access middleware.)
_ALLOWED_HEADERS = ((b"content-length", b"0"),)
_IDENTITY_NAMES = tuple(name.lower().encode("latin-1") for name in IDENTITY_HEADERS)


_HEADERS = {
    "Authorization": "Bearer <token>",
    "X-Original-Method": "nginx: the original method",
    "X-Original-URI": "nginx: the original request target",
    "X-Forwarded-Method": "Traefik: the original method",
    "X-Forwarded-Uri": "Traefik: the original request target",
    "X-Agentcaps-Purpose": "the purpose the caller declares",
    "X-Agentcaps-Actor": "the caller's authenticated identity; must be the token's last holder",
}
_DESCRIPTION = (
    "401 (with WWW-Authenticate) for a missing or unacceptable token; 403 with "
    "X-Agentcaps-Reason for a good token that does not allow the request (ambiguous paths: "
    "resource_denied); 503 while revocation state is unknown. The path is the resource and "
    "the method gives the action (read, write, delete) unless route rules (AGENTCAPS_ROUTES) "
    "say otherwise."
)

_NGINX_TRAEFIK = Endpoint(
    METHODS,
    PREFIX,
    authz,
    "Forward-auth for nginx auth_request and Traefik forwardAuth",
    responses={200: None},
    errors=(400, 401, 403, 503),
    headers=_HEADERS,
    response_headers=IDENTITY_HEADERS,
    description=_DESCRIPTION,
    name="authz",
    any_method=True,
)
ENDPOINTS = (
    _NGINX_TRAEFIK,
    replace(
        _NGINX_TRAEFIK,
        path=PREFIX + "/{path:path}",
        summary="Forward-auth for Envoy ext_authz (HTTP mode): the original path follows /v1/authz",
        name="authz_path",
    ),
)
