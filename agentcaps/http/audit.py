"""GET /v1/audit: the audit trail, filtered; admins see every event, an issuer its own customer's.

The bearer is authenticated first (signature and key only) to learn whether
it is an admin token or a customer's token; then exactly one authorisation
decides, and is itself recorded: an admin token for `agentcaps/admin/audit`
(`admin`), any other for `agentcaps/customers/<C>/audit` (`audit`), where C
is the `customer` asked for, else the token's own. Before reading, this
process's recorder is flushed, so a client reads what its own requests did.

The trail is one stream for every customer, so an issuer's page is a
customer's view of it (`CustomerView`): nothing in it tells of other
customers' events.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import AuditEvent, AuditQuery, parse_time
from agentcaps.errors import MalformedToken
from agentcaps.http.body import parse_query
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.errors import HttpError, InvalidBody
from agentcaps.http.models import (
    SEALED_CURSOR,
    AuditEventResponse,
    AuditPageResponse,
    AuditQueryParams,
)
from agentcaps.http.service import Service, service_of
from agentcaps.http.tokens import required_bearer
from agentcaps.service_tokens import PLATFORM_CUSTOMER, admin_resource, customer_resource
from agentcaps.stores.redis import RedisKeyStore
from agentcaps.wire import b64decode, b64encode

_FLUSH_SECONDS = 1.0


class NoAuditLog(HttpError):
    """This deployment keeps no audit stream to read (AGENTCAPS_AUDIT leaves Redis out)."""

    status = 404
    code = "no_audit_log"


def audit_scope(service: Service, bearer: str, customer: str | None) -> tuple[str | None, bool]:
    """The customer whose events `bearer` may read (None: every event), and whether it is an issuer; else raise.

    Raises:
        NotAuthenticated, NotAllowed, StoreUnavailable: as ServiceAuthority.authorize.
    """
    authority = service.authority
    who = authority.authenticate(bearer)
    if who.allowed and who.customer is not None and who.customer != PLATFORM_CUSTOMER:
        scope = customer or who.customer
        authority.authorize(bearer, customer_resource(scope, "audit"), "audit")
        return scope, True
    authority.authorize(bearer, admin_resource("audit"), "admin")
    return customer, False


class CustomerView:
    """One customer's view of the shared trail, for its issuers: its events, nothing of anyone else's.

    A stream entry id is the time of that entry, and a page can stop at any
    customer's; an event's place in its writer's chain (seq, prev, hash)
    counts every customer's events, as a page's scan count does. So an issuer
    gets no scan count, events named by an opaque id (stable, for telling
    them apart), and cursors sealed with AES-GCM under a key derived from
    the master key, bound to the customer: every worker can open them, and
    no one else.
    """

    _NONCE = 12
    _ENTRY_CHARS = 41  # the longest stream entry id: 20 digits, "-", 20 digits

    def __init__(self, keys: RedisKeyStore, customer: str) -> None:
        self._customer = customer.encode()
        self._aead = AESGCM(keys.derive_key("audit cursors"))
        self._names = keys.derive_key("audit event ids")

    def cursor(self, entry: str | None) -> str | None:
        """The sealed cursor of a stream entry id."""
        if entry is None:
            return None
        nonce = secrets.token_bytes(self._NONCE)
        # Padded: a cursor's length would otherwise tell how many digits its entry has.
        plain = entry.encode("ascii").ljust(self._ENTRY_CHARS)
        sealed = nonce + self._aead.encrypt(nonce, plain, self._customer)
        return SEALED_CURSOR + b64encode(sealed)

    def entry(self, cursor: str | None, name: str) -> str | None:
        """The stream entry id a cursor of this view seals.

        Raises:
            InvalidBody: not a cursor this view gave (forged, altered, another customer's, a bare entry id).
        """
        if cursor is None:
            return None
        try:
            if not cursor.startswith(SEALED_CURSOR):
                raise ValueError
            sealed = b64decode(cursor[len(SEALED_CURSOR) :])
            entry = self._aead.decrypt(sealed[: self._NONCE], sealed[self._NONCE :], self._customer)
            return entry.decode("ascii").rstrip(" ")
        except (ValueError, MalformedToken, InvalidTag):
            message = "not a cursor of this customer's audit pages: pass a page's own"
            raise InvalidBody(
                f"{name}: {message}", fields=[{"field": name, "message": message}]
            ) from None

    def event(self, event: AuditEvent) -> dict[str, Any]:
        """The event's view without its chain position, named by an opaque id."""
        view = event.to_dict()
        for name in ("writer", "seq", "prev", "hash", "entry"):
            view.pop(name, None)
        digest = hmac.digest(self._names, self._customer + b"\n" + event.id.encode(), "sha256")
        view["id"] = "e" + digest[:12].hex()
        return view


def _is_sealed(cursor: str | None) -> bool:
    return cursor is not None and cursor.startswith(SEALED_CURSOR)


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
        customer, issuer = audit_scope(service, bearer, params.customer)
        log = service.audit.log
        if log is None:
            raise NoAuditLog("this deployment keeps no audit stream (AGENTCAPS_AUDIT)")
        view = CustomerView(service.stores.keys, customer) if issuer and customer else None
        after, before = params.after, params.before
        if view is not None:
            after, before = view.entry(after, "after"), view.entry(before, "before")
        elif _is_sealed(after) or _is_sealed(before):
            message = "an issuer's cursor: an admin pages with the entry ids of its own pages"
            raise InvalidBody(message, fields=[{"field": "after/before", "message": message}])
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
        page = log.query(query, after=after, before=before)
        if view is None:
            return AuditPageResponse(
                events=[AuditEventResponse.model_validate(e.to_dict()) for e in page.events],
                before=page.before,
                after=page.after,
                scanned=page.scanned,
                complete=page.complete,
            )
        return AuditPageResponse(
            events=[AuditEventResponse.model_validate(view.event(e)) for e in page.events],
            before=view.cursor(page.before),
            after=view.cursor(page.after),
            scanned=None,
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
