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

Answers: 200 with X-Agentcaps-Customer, -User, -Agent (the last holder),
-Chain, -Token-Id, -Purpose; 401 with WWW-Authenticate for a missing or
unacceptable token; 403 with X-Agentcaps-Reason for a good token that does
not allow this request; 503 when revocation state is unknown.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agentcaps.decision import Reason
from agentcaps.http.endpoint import Endpoint
from agentcaps.http.errors import BadRequest
from agentcaps.http.gate import identity_headers, without_blocking
from agentcaps.http.models import AuthzResponse
from agentcaps.http.rules import PathRefused
from agentcaps.http.service import service_of

PREFIX = "/v1/authz"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_FAMILIES = (
    ("x-original-method", "x-original-uri"),  # nginx
    ("x-forwarded-method", "x-forwarded-uri"),  # Traefik
)


def _one(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise PathRefused(f"{name} is given more than once")
    return values[0] if values else None


def original_request(request: Request) -> tuple[str, str]:
    """The original (method, raw target) this forward-auth request asks about.

    Raises:
        BadRequest: it names no original request.
        PathRefused: it names it more than once, differently.
    """
    named: list[tuple[str, str]] = []
    for method_header, uri_header in _FAMILIES:
        uri = _one(request, uri_header)
        method = _one(request, method_header)
        if uri is not None:
            named.append(((method or request.method).upper(), uri))
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    raw = raw_path.decode("latin-1")
    if raw.startswith(PREFIX + "/"):
        named.append((request.method.upper(), raw[len(PREFIX) :]))
    if not named:
        raise BadRequest(
            "no original request: send X-Original-Method and X-Original-URI (nginx), "
            "X-Forwarded-Method and X-Forwarded-Uri (Traefik), or ask /v1/authz/<path> (Envoy)"
        )
    first_method, first_target = named[0]
    first_path = first_target.split("?", 1)[0]
    for method, target in named[1:]:
        if method != first_method or target.split("?", 1)[0] != first_path:
            raise PathRefused("the original request is named more than once, differently")
    return first_method, first_target


async def authz(request: Request) -> Response:
    service = service_of(request)
    authorization = request.headers.getlist("authorization")
    purpose = request.headers.get("x-agentcaps-purpose")
    actor = request.headers.get("x-agentcaps-actor")
    refused: PathRefused | None = None
    try:
        method, target = original_request(request)
    except PathRefused as exc:
        method, target, refused = request.method, "", exc
    decision = await without_blocking(
        lambda local_only: service.gate.decide(
            authorization=authorization,
            method=method,
            target=target,
            purpose=purpose,
            actor=actor,
            refused=refused,
            local_only=local_only,
        )
    )
    headers = identity_headers(decision, purpose or None)
    headers["Cache-Control"] = "no-store"
    return Response(_ALLOWED, media_type="application/json", headers=headers)


# An allowed request always answers the same body: encode it once.
_ALLOWED = AuthzResponse(allowed=True, reason=Reason.OK).model_dump_json().encode()


_HEADERS = {
    "Authorization": "Bearer <token>",
    "X-Original-Method": "nginx: the original method",
    "X-Original-URI": "nginx: the original request target",
    "X-Forwarded-Method": "Traefik: the original method",
    "X-Forwarded-Uri": "Traefik: the original request target",
    "X-Agentcaps-Purpose": "the purpose the caller declares",
    "X-Agentcaps-Actor": "the caller's authenticated identity; must be the token's last holder",
}
_RESPONSE_HEADERS = {
    "X-Agentcaps-Customer": "the customer (percent-encoded UTF-8)",
    "X-Agentcaps-User": "the user the agent acts for",
    "X-Agentcaps-Agent": "the last holder: who is acting",
    "X-Agentcaps-Chain": "the provenance chain, first holder first, comma-separated",
    "X-Agentcaps-Token-Id": "the token id (hex)",
    "X-Agentcaps-Purpose": "the declared purpose, else the token's purposes",
}
_DESCRIPTION = (
    "401 (with WWW-Authenticate) for a missing or unacceptable token; 403 with "
    "X-Agentcaps-Reason for a good token that does not allow the request (ambiguous paths: "
    "resource_denied); 503 while revocation state is unknown. The path is the resource and "
    "the method gives the action (read, write, delete) unless route rules (AGENTCAPS_ROUTES) "
    "say otherwise."
)

ENDPOINTS = (
    Endpoint(
        METHODS,
        PREFIX,
        authz,
        "Forward-auth for nginx auth_request and Traefik forwardAuth",
        responses={200: AuthzResponse},
        errors=(400, 401, 403, 503),
        headers=_HEADERS,
        response_headers=_RESPONSE_HEADERS,
        description=_DESCRIPTION,
        name="authz",
    ),
    Endpoint(
        METHODS,
        PREFIX + "/{path:path}",
        authz,
        "Forward-auth for Envoy ext_authz (HTTP mode): the original path follows /v1/authz",
        responses={200: AuthzResponse},
        errors=(400, 401, 403, 503),
        headers=_HEADERS,
        response_headers=_RESPONSE_HEADERS,
        description=_DESCRIPTION,
        name="authz_path",
    ),
)
