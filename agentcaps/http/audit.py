"""GET /v1/audit: the audit trail, filtered; admins see every event, an issuer its own customer's.

The bearer is authenticated first (signature and key only) to learn whether
it is an admin token or a customer's token; then exactly one authorisation
decides, and is itself recorded: an admin token for `agentcaps/admin/audit`
(`admin`), any other for `agentcaps/customers/<C>/audit` (`audit`), where C
is the `customer` asked for, else the token's own. Before reading, this
process's recorder is flushed, so a client reads what its own requests did.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import AuditQuery, parse_time
from agentcaps.http.body import parse_query
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.errors import HttpError, InvalidBody
from agentcaps.http.models import AuditEventResponse, AuditPageResponse, AuditQueryParams
from agentcaps.http.service import Service, service_of
from agentcaps.http.tokens import required_bearer
from agentcaps.service_tokens import PLATFORM_CUSTOMER, admin_resource, customer_resource

_FLUSH_SECONDS = 1.0


class NoAuditLog(HttpError):
    """This deployment keeps no audit stream to read (AGENTCAPS_AUDIT leaves Redis out)."""

    status = 404
    code = "no_audit_log"


def audit_scope(service: Service, bearer: str, customer: str | None) -> str | None:
    """The customer whose events `bearer` may read (None: every event), else raise.

    Raises:
        NotAuthenticated, NotAllowed, StoreUnavailable: as ServiceAuthority.authorize.
    """
    authority = service.authority
    who = authority.authenticate(bearer)
    if who.allowed and who.customer is not None and who.customer != PLATFORM_CUSTOMER:
        scope = customer or who.customer
        authority.authorize(bearer, customer_resource(scope, "audit"), "audit")
        return scope
    authority.authorize(bearer, admin_resource("audit"), "admin")
    return customer


def _time(text: str | None, name: str, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text, now)
    except ValueError as exc:
        raise InvalidBody(f"{name}: {exc}", fields=[{"field": name, "message": str(exc)}]) from None


async def list_audit(request: Request) -> Response:
    bearer = required_bearer(request)
    service = service_of(request)
    params = parse_query(request, AuditQueryParams)
    now = service.clock()
    since, until = _time(params.since, "since", now), _time(params.until, "until", now)

    def work() -> AuditPageResponse:
        customer = audit_scope(service, bearer, params.customer)
        log = service.audit.log
        if log is None:
            raise NoAuditLog("this deployment keeps no audit stream (AGENTCAPS_AUDIT)")
        service.audit.recorder.flush(_FLUSH_SECONDS)
        query = AuditQuery(
            token_id=params.token_id,
            delegation_id=params.delegation_id,
            customer=customer,
            user=params.user,
            agent=params.agent,
            kind=params.kind,
            since=since,
            until=until,
            limit=params.limit,
        )
        page = log.query(query, after=params.after, before=params.before)
        return AuditPageResponse(
            events=[AuditEventResponse.model_validate(e.to_dict()) for e in page.events],
            before=page.before,
            after=page.after,
            scanned=page.scanned,
            complete=page.complete,
        )

    return respond(await run_in_threadpool(work))


ENDPOINTS = (
    Endpoint(
        ("GET",),
        "/v1/audit",
        list_audit,
        "Read the audit trail: mints, verifications, revocations, key operations, reloads",
        query=AuditQueryParams,
        responses={200: AuditPageResponse},
        errors=(400, 401, 403, 404, 422, 503),
        auth="admin (every event), or an issuer token (its own customer's events)",
        description="Filters: token_id, delegation_id, customer, user, agent (acting or in the "
        "chain), kind, since, until. Without `after`, the newest `limit` matches, oldest first; "
        "`before` pages to older ones, `after` follows newer ones. A query reads at most a "
        "bounded number of stream entries (`complete` says whether it reached the end).",
    ),
)
