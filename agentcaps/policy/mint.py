"""Mint-time policy: every mint becomes one Cedar request, and the policy decides it.

Principal `Issuer::"<customer>"` (an issuer token, attribute `customer`) or
`Admin::"admin"` (an admin token); action `Action::"mint"`; resource
`Grant::"<new token id>"` with the token's contents; context `{now}`. The
schema is `agentcaps.policy.schema.MINT_SCHEMA`. A deny is a PolicyDecision,
never an exception; `PolicyDecision.refusal()` is the error callers raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

from agentcaps.errors import InvalidArgument
from agentcaps.mint import DEFAULT_MAX_TTL, MintedToken, Minter, MintRequest
from agentcaps.policy.decision import PolicyDecision
from agentcaps.policy.schema import PolicyKind, default_mint_policy
from agentcaps.policy.store import PolicyStore
from agentcaps.service_tokens import reserved_audience, reserved_customer

ADMIN_ID = "admin"


@dataclass(frozen=True, slots=True)
class MintIssuer:
    """Who asks for the mint: an issuer token for `customer`, or an admin token (customer None)."""

    customer: str | None = None

    @classmethod
    def issuer(cls, customer: str) -> MintIssuer:
        """The backend of `customer`, holding that customer's issuer token."""
        if not customer:
            raise ValueError("an issuer acts for a customer")
        return cls(customer)

    @classmethod
    def admin(cls) -> MintIssuer:
        """The platform's operators, holding an admin token."""
        return cls(None)

    @property
    def is_admin(self) -> bool:
        return self.customer is None

    def entity(self) -> dict[str, Any]:
        """The principal as a Cedar entity."""
        if self.customer is None:
            return {"uid": {"type": "Admin", "id": ADMIN_ID}, "attrs": {}, "parents": []}
        return {
            "uid": {"type": "Issuer", "id": self.customer},
            "attrs": {"customer": self.customer},
            "parents": [],
        }


@dataclass(frozen=True, slots=True)
class MintGrant:
    """What the new token would carry, as `Minter.issue` is asked for it.

    `max_delegations` None means unlimited (-1 in the policy's view);
    `token_id` is the new token's id (lowercase hex).
    """

    token_id: str
    customer: str
    user: str
    agent: str
    resources: Sequence[str]
    actions: Sequence[str]
    purposes: Sequence[str]
    ttl: int
    audience: Sequence[str] = field(default=())
    max_delegations: int | None = None

    def entity(self) -> dict[str, Any]:
        """The resource as a Cedar entity."""
        return {
            "uid": {"type": "Grant", "id": self.token_id},
            "attrs": {
                "customer": self.customer,
                "user": self.user,
                "agent": self.agent,
                "resources": list(self.resources),
                "areas": areas(self.resources),
                "actions": list(self.actions),
                "purposes": list(self.purposes),
                "audience": list(self.audience or ()),
                "ttl": self.ttl,
                "max_delegations": -1 if self.max_delegations is None else self.max_delegations,
            },
            "parents": [],
        }


def areas(resources: Sequence[str]) -> list[str]:
    """The top-level areas resource patterns reach: each one's first segment, `*` for a wildcard.

    A forbid over globs only catches the spellings it lists (`**/**` is not
    `**`, `hr/*/**` not `hr/**`); a forbid over areas catches them all,
    since a wildcard is always a whole segment.
    """
    return sorted(
        {"*" if (first := glob.split("/", 1)[0]) in ("*", "**") else first for glob in resources}
    )


def mint_request(
    issuer: MintIssuer, grant: MintGrant, now: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and entities for one mint."""
    principal = issuer.entity()
    resource = grant.entity()
    request = {
        "principal": principal["uid"],
        "action": {"type": "Action", "id": "mint"},
        "resource": resource["uid"],
        "context": {"now": int(now)},
    }
    return request, [principal, resource]


class PolicyEngine:
    """Decides mints against the running mint policy of a PolicyStore.

    Args:
        store: a PolicyStore of kind MINT; its reloads take effect at the next mint.
    """

    def __init__(self, store: PolicyStore) -> None:
        if store.kind is not PolicyKind.MINT:
            raise ValueError("a PolicyEngine needs a store of mint policies")
        self.store = store

    @classmethod
    def default(cls, max_ttl: int = DEFAULT_MAX_TTL) -> PolicyEngine:
        """The built-in policy: issuers mint for their own customer, everyone within `max_ttl`."""
        return cls(PolicyStore.from_text(default_mint_policy(max_ttl), PolicyKind.MINT))

    @classmethod
    def from_dir(cls, directory: str | Path) -> PolicyEngine:
        """The policies of a folder of *.cedar files.

        Raises:
            PolicyError: the folder does not read, parse or validate.
        """
        return cls(PolicyStore.from_dir(directory, PolicyKind.MINT))

    @property
    def version(self) -> str:
        """The running policy set's version, for the audit trail."""
        return self.store.version

    def authorize_mint(self, issuer: MintIssuer, grant: MintGrant, now: int) -> PolicyDecision:
        """Decide whether `issuer` may mint `grant` at unix time `now`.

        Returns the decision whatever it is (a deny raises nothing); its
        `policies` name the deciding policies and `version` the set.
        """
        request, entities = mint_request(issuer, grant, now)
        return self.store.current.decide(request, entities)


def mint_with_policy(
    minter: Minter, engine: PolicyEngine, issuer: MintIssuer, **request: Unpack[MintRequest]
) -> tuple[MintedToken, PolicyDecision]:
    """Check a mint, ask the mint policy about it, then sign the very token it judged.

    The one path every mint of an agent token takes, over HTTP and from the
    CLI. The deployment's hard limits (names, the maximum ttl, the customer
    and audience reserved for the service's own tokens) are checked first, so
    a request that could never be minted is invalid, not denied.

    Raises:
        InvalidArgument: a value that cannot go into a token.
        PolicyDenied: the policy does not allow it (nothing is signed).
        StoreUnavailable: the key store did not answer.
    """
    if request.get("platform_key"):
        raise InvalidArgument(
            "agent tokens are signed by their customer's key, never the platform's"
        )
    reserved_customer(request["customer"])
    reserved_audience(request.get("audience"))
    plan = minter.plan(**request)
    grant = MintGrant(
        token_id=plan.token_id.hex(),
        customer=request["customer"],
        user=request["user"],
        agent=request["agent"],
        resources=tuple(request["resources"]),
        actions=tuple(request["actions"]),
        purposes=tuple(request["purposes"]),
        ttl=request["ttl"],
        audience=tuple(request.get("audience") or ()),
        max_delegations=request.get("max_delegations"),
    )
    decision = engine.authorize_mint(issuer, grant, plan.issued_at)
    if not decision.allowed:
        raise decision.refusal()
    return minter.sign(plan), decision
