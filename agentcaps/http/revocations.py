"""Revocation routes: who may revoke what, and the live list.

`{"token": T}` revokes T and everything derived from it (its last delegation
branch, else its token id). It is allowed to T itself while T is in force
(any token may revoke itself), to an admin, and to an issuer of T's
customer. Revoking by token id, delegation id, key id or agent (in every
customer) is for admins; by customer (and user, or agent), for admins and
that customer's issuers.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import key_revocation_events, revocation_event
from agentcaps.claims import decode_unverified
from agentcaps.decision import Reason
from agentcaps.errors import InvalidToken, NotAllowed, StoreUnavailable, refusal
from agentcaps.http.body import parse
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.errors import HttpError
from agentcaps.http.models import RevocationList, RevocationRequest, RevocationResponse
from agentcaps.http.service import Service, service_of
from agentcaps.http.tokens import required_bearer
from agentcaps.mint import as_delegated, as_minted
from agentcaps.revocation import Revocation, RevocationKind, revocation_for
from agentcaps.service_tokens import admin_resource, caller, customer_resource

# Branches of one token that may revoke themselves: those one holder made
# (the children of one branch), and those of the whole token.
MAX_SELF_REVOCATIONS = 1024
MAX_SELF_REVOCATIONS_DEEP = 16 * 1024


class TooManySelfRevocations(HttpError):
    """A token revoked its own branches as often as one token may."""

    status = 429
    code = "too_many_revocations"


def _revoke(service: Service, bearer: str, body: RevocationRequest) -> Revocation:
    """Authorise and record one revocation (runs in a thread: it talks to Redis)."""
    authority = service.authority
    settings = service.settings
    now = int(service.clock())
    if body.token is not None:
        # The bearer is the very token to revoke: a token may revoke itself
        # while it is in force. (A plain comparison: both strings are the
        # caller's own.) An expired copy found in a log revokes nothing.
        itself = bearer == body.token
        target = authority.authenticate(body.token)
        if target.reason is Reason.REVOCATION_UNAVAILABLE:
            raise StoreUnavailable("the key store did not answer")
        if target.reason is not Reason.OK:
            raise InvalidToken(f"token: not an authentic token ({target.reason})", target.reason)
        unverified = decode_unverified(body.token)
        if itself:
            current = authority.authenticate(body.token, in_force=True)
            if current.reason is not Reason.OK:
                raise refusal(current)
            handed = as_delegated if target.delegation_ids else as_minted
            if not handed(unverified.caveats):
                # Narrowed since its minting or its last delegation, it shares
                # that token's id or branch: revoking itself would revoke the
                # token it was narrowed from, and every delegation below.
                raise NotAllowed(
                    "a copy narrowed without a delegation cannot revoke itself: it shares its "
                    "token id or branch with the token it came from, which that would revoke. "
                    "Revoke with that token, or hand copies on with delegate_to",
                    Reason.RESOURCE_DENIED,
                )
            by = caller(target)
        else:
            assert target.customer is not None  # authentic tokens have a principal
            by = caller(
                authority.authorize(
                    bearer, customer_resource(target.customer, "revocations"), "revoke"
                )
            )
        revocation = revocation_for(
            unverified,
            revoked_at=now,
            max_lifetime=settings.max_lifetime,
            reason=body.reason,
            by=by,
        )
        # Each branch a token revokes by itself is an entry kept until the
        # token expires, and branches cost a holder nothing: a token's tree
        # gets a bounded number (RedisRevocationStore.reserve_self_revocation).
        # Revoking the whole token (what its first holder does) is never
        # refused: it takes every branch anyway.
        if itself and revocation.kind is RevocationKind.BRANCH:
            ident = unverified.identifier
            if not service.stores.store.reserve_self_revocation(
                revocation.subject,
                until=ident.iat + settings.max_lifetime + 2 * settings.leeway + 1,
                limit=MAX_SELF_REVOCATIONS,
                total=MAX_SELF_REVOCATIONS_DEEP,
            ):
                above = (
                    "the token's first holder can still revoke the whole token"
                    if len(revocation.subject) == 2
                    else "the holder of the branch above it can still revoke that branch whole"
                )
                raise TooManySelfRevocations(
                    "this token's branches revoked themselves as often as they may; "
                    f"{above}, and its issuer or an admin can revoke anything "
                    "(POST /v1/revocations with their token)"
                )
        stored = service.stores.revocations.revoke(revocation)
        service.record(revocation_event(service.clock(), stored, target=target))
        return stored
    subject: tuple[str, ...]
    if body.customer is not None:
        by = caller(
            authority.authorize(bearer, customer_resource(body.customer, "revocations"), "revoke")
        )
        if body.user is not None:
            kind, subject = RevocationKind.USER, (body.customer, body.user)
        elif body.agent is not None:
            kind, subject = RevocationKind.CUSTOMER_AGENT, (body.customer, body.agent)
        else:
            kind, subject = RevocationKind.CUSTOMER, (body.customer,)
        return _recorded(
            service,
            service.stores.revocations.revoke(
                Revocation(kind, subject, now, None, body.reason, by)
            ),
        )
    by = caller(authority.authorize(bearer, admin_resource("revocations"), "revoke"))
    if body.key_id is not None:
        key, revocation = service.stores.keys.revoke_recorded(
            body.key_id, reason=body.reason, by=by
        )
        for recorded in key_revocation_events(service.clock(), key, revocation, caller=by):
            service.record(recorded)
        return revocation
    if body.token_id is not None:
        kind, subject = RevocationKind.TOKEN, (body.token_id,)
    elif body.delegation_id is not None:
        kind, subject = RevocationKind.DELEGATION, (body.delegation_id,)
    else:
        assert body.agent is not None  # the model requires exactly one target
        kind, subject = RevocationKind.AGENT, (body.agent,)
    return _recorded(
        service,
        service.stores.revocations.revoke(Revocation(kind, subject, now, None, body.reason, by)),
    )


def _recorded(service: Service, stored: Revocation) -> Revocation:
    """`stored`, once its audit event is recorded."""
    service.record(revocation_event(service.clock(), stored))
    return stored


async def create_revocation(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)
    body = await parse(request, RevocationRequest)
    stored = await run_in_threadpool(_revoke, service, bearer, body)
    return respond(RevocationResponse.model_validate(stored.to_dict()), 201)


async def list_revocations(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)

    def work() -> RevocationList:
        service.authority.authorize(bearer, admin_resource("revocations"), "admin")
        return RevocationList.model_validate(
            {"revocations": [r.to_dict() for r in service.stores.store.list()]}
        )

    return respond(await run_in_threadpool(work))


ENDPOINTS = (
    Endpoint(
        ("POST",),
        "/v1/revocations",
        create_revocation,
        "Revoke a token, a delegation branch, a key, a customer, a user or an agent",
        body=RevocationRequest,
        responses={201: RevocationResponse},
        errors=(400, 401, 403, 404, 413, 415, 422, 429, 503),
        auth="token: that token itself, an admin, or an issuer of its customer; customer "
        "(and user): an admin or that customer's issuer; token_id, delegation_id, key_id, "
        "agent: an admin",
        description="Acknowledged (201) only once the store has it durably.",
    ),
    Endpoint(
        ("GET",),
        "/v1/revocations",
        list_revocations,
        "List live revocations",
        responses={200: RevocationList},
        errors=(401, 403, 503),
        auth="admin",
    ),
)
