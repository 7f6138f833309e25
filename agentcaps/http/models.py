"""The shapes of the service's JSON: one pydantic model per request and response body.

Requests are validated strictly (no coercion: `"600"` is not a ttl) and refuse
unknown fields (a misspelt `"audiences"` must not silently mint a token
without its audience). The OpenAPI document is generated from these models;
no field list is written twice. Deeper checks (glob syntax, the deployment's
max ttl) stay in the library, whose InvalidArgument also answers 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agentcaps.audit import MAX_LIMIT, AuditKind
from agentcaps.caveats import MAX_LIST_ITEMS, MAX_NAME_CHARS, MAX_RESOURCE_CHARS
from agentcaps.decision import Reason
from agentcaps.keys import KeyState
from agentcaps.revocation import RevocationKind


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable characters (no control characters)")
    return value


Name = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_CHARS, description="1-256 printable characters"),
    AfterValidator(_printable),
]
Names = Annotated[list[Name], Field(min_length=1, max_length=MAX_LIST_ITEMS)]
Globs = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_RESOURCE_CHARS)]],
    Field(
        min_length=1,
        max_length=MAX_LIST_ITEMS,
        description="resource patterns: '/'-separated segments, '*' one segment, '**' any number",
    ),
]
Seconds = Annotated[int, Field(gt=0, description="seconds")]
UnixTime = Annotated[int, Field(ge=0, description="unix time, seconds")]
Limit = Annotated[int, Field(ge=0, le=MAX_LIST_ITEMS)]
HexId = Annotated[
    str, Field(pattern=r"^[0-9a-f]{32}$", description="16 bytes as 32 lowercase hex characters")
]
Token = Annotated[str, Field(min_length=1, description="an agentcaps token (agc_…)")]
Why = Annotated[
    str,
    Field(max_length=1024, description="why, for the audit trail"),
    AfterValidator(_printable),
]


class Request(BaseModel):
    """A request body: strict types, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Response(BaseModel):
    """A response body: only the declared fields are ever sent."""

    model_config = ConfigDict(extra="ignore")


# -- errors --------------------------------------------------------------------


class FieldError(Response):
    field: str = Field(description="where in the body, e.g. 'resources.0'")
    message: str


class ErrorResponse(Response):
    """Every error: a stable code and a sentence; a few errors add named details."""

    error: str = Field(description="a stable code, e.g. 'invalid_request', 'forbidden'")
    detail: str
    reason: Reason | None = Field(None, description="the decision reason, when a token was judged")
    fields: list[FieldError] | None = None


# -- issuers and tokens --------------------------------------------------------


class IssuerRequest(Request):
    """Create an issuer token for one customer's backend."""

    customer: Name
    ttl: Seconds


class IssuerResponse(Response):
    token: str
    token_id: str
    key_id: str
    expires_at: int


class MintRequest(Request):
    """Mint an agent token for `agent` acting for `user` of `customer`."""

    customer: Name
    user: Name
    agent: Name
    resources: Globs
    actions: Names
    purposes: Names
    ttl: Seconds
    audience: Names | None = Field(
        None, description="gateways it is valid at; 'agentcaps' is reserved"
    )
    max_delegations: Limit | None = None
    not_before: UnixTime | None = None


class MintResponse(Response):
    token: str
    token_id: str
    key_id: str
    issued_at: int
    expires_at: int


class AttenuateRequest(Request):
    """Narrow a token (the library's `attenuate`, for agents that cannot run it)."""

    token: Token
    resources: Globs | None = None
    actions: Names | None = None
    purposes: Names | None = None
    ttl: Seconds | None = None
    expires_at: UnixTime | None = None
    delegate_to: Name | None = None
    audience: Names | None = None
    max_delegations: Limit | None = None


class AttenuateResponse(Response):
    token: str


class VerifyRequest(Request):
    """Decide one request against a token, as this deployment's gateway verifier would."""

    token: Token
    resource: Annotated[str, Field(min_length=1, max_length=4 * MAX_RESOURCE_CHARS)]
    action: Name
    purpose: Name | None = None
    actor: Name | None = Field(
        None, description="the authenticated caller; must be the last holder"
    )


class DecisionResponse(Response):
    """A decision; identity fields are null when the token could not be trusted."""

    allowed: bool
    reason: Reason
    token_id: str | None
    key_id: str | None
    customer: str | None
    user: str | None
    agent: str | None = Field(description="the last holder: who is acting now")
    chain: list[str] = Field(description="the provenance chain, first holder first")
    delegation_ids: list[str]
    purposes: list[str]
    expires_at: int | None
    issued_at: int | None


# -- revocations ---------------------------------------------------------------

_TARGETS = ("token", "token_id", "delegation_id", "key_id", "customer", "agent")


class RevocationRequest(Request):
    """Revoke one thing: give exactly one of token, token_id, delegation_id, key_id, customer
    (with user: one user of it; with agent: one agent name of it) or agent (in every customer)."""

    token: Token | None = Field(None, description="this token and everything derived from it")
    token_id: HexId | None = None
    delegation_id: HexId | None = None
    key_id: Name | None = None
    customer: Name | None = None
    user: Name | None = Field(None, description="with customer: only this user's tokens")
    agent: Name | None = Field(
        None,
        description="tokens naming this agent as a holder: with customer, that customer's only; "
        "alone, every customer's (admins only)",
    )
    reason: Why = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> RevocationRequest:
        given = [name for name in _TARGETS if getattr(self, name) is not None]
        if given == ["customer", "agent"]:
            given = ["customer"]  # one agent name of one customer
        if len(given) != 1:
            raise ValueError("give exactly one of " + ", ".join(_TARGETS))
        if self.user is not None and self.customer is None:
            raise ValueError("user goes with customer")
        if self.user is not None and self.agent is not None:
            raise ValueError("give user or agent with customer, not both")
        return self


class RevocationResponse(Response):
    """A stored revocation: what it touches, when, why, by whom, and until when it is kept."""

    kind: RevocationKind
    token_id: str | None = None
    delegation_id: str | None = None
    delegation_ids: list[str] | None = Field(
        None, description="a branch: the delegation ids from its token down to it"
    )
    key_id: str | None = None
    customer: str | None = None
    user: str | None = None
    agent: str | None = None
    revoked_at: int
    expires_at: int | None
    reason: str
    by: str


class RevocationList(Response):
    revocations: list[RevocationResponse]


# -- keys ----------------------------------------------------------------------


class NoFields(Request):
    """No fields: an empty body or `{}`."""


class KeyCreateRequest(Request):
    """Create an active root key (the owner's previous one becomes verify-only)."""

    customer: Name | None = Field(None, description="the owner; none: the platform")


class KeyRevokeRequest(Request):
    """Revoke a root key: every token it signed is denied (key_revoked)."""

    reason: Why = ""


class KeyResponse(Response):
    """A root key's public metadata; never its secret."""

    key_id: str
    customer: str | None
    state: KeyState
    created_at: int


class KeyList(Response):
    keys: list[KeyResponse]


# -- health and forward-auth ---------------------------------------------------


class Health(Response):
    status: Literal["ok"]


class Readiness(Response):
    ready: bool
    checks: dict[str, str]


class NotReadyResponse(Response):
    error: Literal["not_ready"]
    detail: str
    checks: dict[str, str]


# -- audit ---------------------------------------------------------------------


def _entry_id(value: str) -> str:
    # Twenty digits reach past 2^64; Redis would refuse such an id, and that
    # is the client's mistake, not an outage.
    if any(int(part) >= 2**64 for part in value.split("-")):
        raise ValueError("a stream entry id's parts are below 2^64")
    return value


# The prefix of the sealed cursors an issuer's audit pages carry (agentcaps.http.audit).
SEALED_CURSOR = "c1."


def _cursor(value: str) -> str:
    return value if value.startswith(SEALED_CURSOR) else _entry_id(value)


Cursor = Annotated[
    str,
    Field(
        pattern=r"^([0-9]{1,20}-[0-9]{1,20}|c1\.[A-Za-z0-9_-]{1,200})$",
        description="a page's cursor: a stream entry id (admins, e.g. 1764412801123-0), "
        "or a sealed `c1.…` cursor (issuers)",
    ),
    AfterValidator(_cursor),
]
TimeText = Annotated[
    str,
    Field(
        max_length=64,
        description="unix seconds, ISO 8601 with a zone (2026-12-01T10:00:00Z), "
        "or a duration ago (90s, 15m, 2h, 7d)",
    ),
]


class AuditQueryParams(BaseModel):
    """GET /v1/audit's query: every filter given must match (an issuer sees its own customer only)."""

    model_config = ConfigDict(extra="forbid")

    token_id: HexId | None = None
    delegation_id: HexId | None = None
    customer: Name | None = None
    user: Name | None = None
    agent: Name | None = Field(None, description="the agent acting, or any holder in the chain")
    kind: AuditKind | None = None
    since: TimeText | None = None
    until: TimeText | None = None
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    before: Cursor | None = Field(
        None, description="older events than this entry (a page's `before`)"
    )
    after: Cursor | None = Field(
        None, description="newer events than this entry, oldest first (a page's `after`: follow)"
    )

    @model_validator(mode="after")
    def _one_direction(self) -> AuditQueryParams:
        if self.before is not None and self.after is not None:
            raise ValueError("give before or after, not both")
        return self


class AuditEventResponse(Response):
    """One audit event: who did what, on whose behalf, when, why; its place in its writer's hash chain."""

    id: str = Field(
        description="writer:seq, the event's name in `agentcaps audit verify` reports; "
        "for an issuer, an opaque name"
    )
    entry: str | None = Field(None, description="the stream entry holding it (admins only)")
    writer: str | None = Field(None, description="the writer that sealed it (admins only)")
    seq: int | None = Field(None, description="its place in the writer's chain (admins only)")
    prev: str | None = Field(
        None, description="SHA-256 of the writer's previous event (admins only)"
    )
    hash: str | None = Field(None, description="SHA-256 of this event as stored (admins only)")
    kind: AuditKind
    time: float = Field(description="unix seconds")
    at: str = Field(description="the same time, ISO 8601 UTC")
    caller: str | None = None
    customer: str | None = None
    user: str | None = None
    agent: str | None = None
    chain: list[str] = []
    delegation_ids: list[str] = []
    token_id: str | None = None
    key_id: str | None = None
    resource: str | None = None
    action: str | None = None
    purpose: str | None = None
    actor: str | None = None
    audience: list[str] = []
    resources: list[str] = []
    actions: list[str] = []
    purposes: list[str] = []
    ttl: int | None = None
    expires_at: int | None = None
    max_delegations: int | None = None
    allowed: bool | None = None
    reason: str | None = None
    request_id: str | None = None
    latency_us: float | None = None
    policy_version: str | None = None
    policies: list[str] = []
    why: str | None = None
    op: str | None = None
    detail: str | None = None


class AuditPageResponse(Response):
    """Matching events, oldest first, and where the next pages start."""

    events: list[AuditEventResponse]
    before: str | None = Field(None, description="pass as `before` for older events; null: no more")
    after: str | None = Field(None, description="pass as `after` for newer events (follow)")
    scanned: int | None = Field(
        None, description="stream entries read, every customer's (admins only)"
    )
    complete: bool = Field(description="false when the scan stopped at its cap before the end")
