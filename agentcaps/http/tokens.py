"""Routes that make and judge tokens: issuers, minting, attenuation, verification."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import issuer_event, mint_event
from agentcaps.errors import NotAuthenticated
from agentcaps.http.body import parse
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.gate import without_blocking
from agentcaps.http.models import (
    AttenuateRequest,
    AttenuateResponse,
    DecisionResponse,
    IssuerRequest,
    IssuerResponse,
    MintRequest,
    MintResponse,
    VerifyRequest,
)
from agentcaps.http.service import bearer, service_of
from agentcaps.mint import attenuate
from agentcaps.policy import MintIssuer, PolicyDenied, mint_with_policy
from agentcaps.service_tokens import (
    admin_resource,
    caller,
    customer_resource,
    is_admin,
    mint_issuer_token,
    reserved_customer,
)


def required_bearer(request: Request) -> str:
    """The bearer token of a protected route: NotAuthenticated before anything else is read."""
    token = bearer(request)
    if token is None:
        raise NotAuthenticated("this route needs a bearer token (Authorization: Bearer agc_…)")
    return token


async def create_issuer(request: Request) -> Response:
    token = required_bearer(request)
    service = service_of(request)
    body = await parse(request, IssuerRequest)

    def work() -> IssuerResponse:
        admin = service.authority.authorize(token, admin_resource("issuers"), "admin")
        reserved_customer(body.customer)
        minted = mint_issuer_token(service.service_minter, customer=body.customer, ttl=body.ttl)
        service.record(
            issuer_event(
                service.clock(), caller=caller(admin), customer=body.customer, minted=minted,
                ttl=body.ttl,
            )
        )  # fmt: skip
        return IssuerResponse(
            token=minted.token,
            token_id=minted.token_id,
            key_id=minted.key_id,
            expires_at=minted.expires_at,
        )

    return respond(await run_in_threadpool(work), 201, secret=True)


async def mint_token(request: Request) -> Response:
    token = required_bearer(request)
    service = service_of(request)
    body = await parse(request, MintRequest)

    def work() -> MintResponse:
        asker = service.authority.authorize(
            token, customer_resource(body.customer, "tokens"), "mint"
        )
        # The principal comes from the token, never from the request body.
        issuer = MintIssuer.admin() if is_admin(asker) else MintIssuer.issuer(asker.customer or "")
        grant: dict[str, Any] = {
            "customer": body.customer,
            "user": body.user,
            "agent": body.agent,
            "resources": body.resources,
            "actions": body.actions,
            "purposes": body.purposes,
            "ttl": body.ttl,
            "audience": body.audience,
            "max_delegations": body.max_delegations,
        }
        try:
            minted, policy = mint_with_policy(
                service.minter, service.policies.engine, issuer, not_before=body.not_before,
                **grant,
            )  # fmt: skip
        except PolicyDenied as denied:
            service.record(
                mint_event(
                    service.clock(), caller=caller(asker), reason=denied.reason.value,
                    policy_version=denied.version, policies=denied.policies, **grant,
                )
            )  # fmt: skip
            raise
        service.record(
            mint_event(
                service.clock(), caller=caller(asker), minted=minted,
                policy_version=policy.version, policies=policy.policies, **grant,
            )
        )  # fmt: skip
        return MintResponse(**minted.to_dict())  # type: ignore[arg-type]

    return respond(await run_in_threadpool(work), 201, secret=True)


async def attenuate_token(request: Request) -> Response:
    service = service_of(request)
    body = await parse(request, AttenuateRequest)
    narrowed = attenuate(
        body.token,
        resources=body.resources,
        actions=body.actions,
        purposes=body.purposes,
        ttl=body.ttl,
        expires_at=body.expires_at,
        delegate_to=body.delegate_to,
        audience=body.audience,
        max_delegations=body.max_delegations,
        clock=service.clock,
    )
    return respond(AttenuateResponse(token=narrowed), 201, secret=True)


async def verify_token(request: Request) -> Response:
    service = service_of(request)
    body = await parse(request, VerifyRequest)
    decision = await without_blocking(
        lambda local_only: service.gateway.verify(
            body.token,
            resource=body.resource,
            action=body.action,
            purpose=body.purpose,
            actor=body.actor,
            local_only=local_only,
        )
    )
    return respond(DecisionResponse.model_validate(decision.to_dict()))


_BODY_ERRORS = (400, 413, 415, 422)

ENDPOINTS = (
    Endpoint(
        ("POST",),
        "/v1/issuers",
        create_issuer,
        "Create an issuer token for one customer's backend",
        body=IssuerRequest,
        responses={201: IssuerResponse},
        errors=(*_BODY_ERRORS, 401, 403, 503),
        auth="admin",
        description="The issuer token mints and revokes that customer's agent tokens, nothing else.",
    ),
    Endpoint(
        ("POST",),
        "/v1/tokens",
        mint_token,
        "Mint an agent token",
        body=MintRequest,
        responses={201: MintResponse},
        errors=(*_BODY_ERRORS, 401, 403, 503),
        auth="an issuer token of the customer, or admin",
        description="An issuer asking for another customer is refused (403). The audience "
        "'agentcaps' is reserved for the service's own tokens. The mint policy decides "
        "every mint; a denial is 403 policy_denied naming the deciding policies.",
    ),
    Endpoint(
        ("POST",),
        "/v1/tokens/attenuate",
        attenuate_token,
        "Narrow a token (offline attenuation remains the primary path)",
        body=AttenuateRequest,
        responses={201: AttenuateResponse},
        errors=_BODY_ERRORS,
        description="Needs no credential: anyone holding a token may narrow it; the result "
        "allows at most what the token allows.",
    ),
    Endpoint(
        ("POST",),
        "/v1/verify",
        verify_token,
        "Decide a request against a token",
        body=VerifyRequest,
        responses={200: DecisionResponse},
        errors=_BODY_ERRORS,
        description="Answers 200 with the decision, allowed or not, as this deployment's "
        "gateway verifier (audience AGENTCAPS_AUDIENCE) decides it.",
    ),
)
