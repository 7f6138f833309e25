"""Root key routes (admin): create, list, rotate, revoke."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import key_event, key_revocation_events
from agentcaps.http.body import parse
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.models import (
    KeyCreateRequest,
    KeyList,
    KeyResponse,
    KeyRevokeRequest,
    NoFields,
)
from agentcaps.http.service import service_of
from agentcaps.http.tokens import required_bearer
from agentcaps.service_tokens import admin_resource, caller

_RESOURCE = admin_resource("keys")


async def create_key(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)
    body = await parse(request, KeyCreateRequest, optional=True)

    def work() -> KeyResponse:
        admin = service.authority.authorize(bearer, _RESOURCE, "admin")
        key = service.stores.keys.create(body.customer)
        service.record(key_event(service.clock(), "create", key, caller=caller(admin)))
        return KeyResponse.model_validate(key.to_dict())

    return respond(await run_in_threadpool(work), 201)


async def list_keys(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)

    def work() -> KeyList:
        service.authority.authorize(bearer, _RESOURCE, "admin")
        return KeyList.model_validate({"keys": [k.to_dict() for k in service.stores.keys.list()]})

    return respond(await run_in_threadpool(work))


async def rotate_key(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)
    kid = request.path_params["kid"]
    await parse(request, NoFields, optional=True)

    def work() -> KeyResponse:
        admin = service.authority.authorize(bearer, _RESOURCE, "admin")
        new = service.stores.keys.rotate(kid)
        old = service.stores.keys.get(kid)
        service.record(
            key_event(
                service.clock(), "rotate", old or new, caller=caller(admin),
                detail=f"replaced by {new.kid}",
            )
        )  # fmt: skip
        return KeyResponse.model_validate(new.to_dict())

    return respond(await run_in_threadpool(work), 201)


async def revoke_key(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)
    kid = request.path_params["kid"]
    body = await parse(request, KeyRevokeRequest, optional=True)

    def work() -> KeyResponse:
        decision = service.authority.authorize(bearer, _RESOURCE, "admin")
        by = caller(decision)
        key, revocation = service.stores.keys.revoke_recorded(kid, reason=body.reason, by=by)
        for recorded in key_revocation_events(service.clock(), key, revocation, caller=by):
            service.record(recorded)
        return KeyResponse.model_validate(key.to_dict())

    return respond(await run_in_threadpool(work))


_ERRORS = (401, 403, 503)

ENDPOINTS = (
    Endpoint(
        ("POST",),
        "/v1/keys",
        create_key,
        "Create an active root key",
        body=KeyCreateRequest,
        body_optional=True,
        responses={201: KeyResponse},
        errors=(400, 413, 415, 422, *_ERRORS),
        auth="admin",
    ),
    Endpoint(
        ("GET",),
        "/v1/keys",
        list_keys,
        "List root keys, newest first (metadata only)",
        responses={200: KeyList},
        errors=_ERRORS,
        auth="admin",
    ),
    Endpoint(
        ("POST",),
        "/v1/keys/{kid}/rotate",
        rotate_key,
        "Replace a key by a new active one; the old one becomes verify-only",
        body=NoFields,
        body_optional=True,
        responses={201: KeyResponse},
        errors=(400, 404, 413, 415, 422, *_ERRORS),
        auth="admin",
        description="Answers with the new key. A revoked key cannot be rotated (422).",
    ),
    Endpoint(
        ("POST",),
        "/v1/keys/{kid}/revoke",
        revoke_key,
        "Revoke a key: every token it signed is denied (key_revoked)",
        body=KeyRevokeRequest,
        body_optional=True,
        responses={200: KeyResponse},
        errors=(400, 404, 413, 415, 422, *_ERRORS),
        auth="admin",
    ),
)
