"""Gateway policy: a second policy set, asked after a token's own caveats allow a request.

It lets a platform say what no token can override ("no agent deletes under
billing/", "no write more than two delegations deep"). Each request becomes
principal `Agent::"<last holder>"`, action `Action::"<action>"`, resource
`Resource::"<resource>"` (attributes `path`, the same string, and `area`,
its first segment) and a context
of customer, user, chain, delegation_depth, purposes, purpose and token_age
(schema: `agentcaps.policy.schema.gateway_schema`).

Decisions are remembered in an LRU cache per loaded policy set, keyed by
the whole request: a repeated request costs one dict lookup, and a reload
starts a fresh cache. `token_age` counts only when some policy reads it
(else it is set to 0, so that the key does not change every second).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import perf_counter
from typing import Any, NamedTuple

from agentcaps.audit import AuditSink
from agentcaps.decision import Decision, Reason
from agentcaps.policy.decision import PolicyDecision
from agentcaps.policy.policyset import PolicySet
from agentcaps.policy.schema import PolicyKind
from agentcaps.policy.store import PolicyStore
from agentcaps.verify import Verifier

DEFAULT_CACHE_SIZE = 10_000


def gateway_request(
    agent: str,
    action: str,
    resource: str,
    customer: str,
    user: str,
    chain: tuple[str, ...],
    purposes: tuple[str, ...],
    purpose: str,
    token_age: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Cedar request and entities for one gateway decision."""
    resource_uid = {"type": "Resource", "id": resource}
    request = {
        "principal": {"type": "Agent", "id": agent},
        "action": {"type": "Action", "id": action},
        "resource": resource_uid,
        "context": {
            "customer": customer,
            "user": user,
            "chain": list(chain),
            "delegation_depth": max(len(chain) - 1, 0),
            "purposes": list(purposes),
            "purpose": purpose,
            "token_age": token_age,
        },
    }
    # `area` spares rules the two spellings of "billing and below":
    # `path like "billing/*"` alone misses `billing` itself.
    attrs = {"path": resource, "area": resource.split("/", 1)[0]}
    entities = [{"uid": resource_uid, "attrs": attrs, "parents": []}]
    return request, entities


class _Cached(NamedTuple):
    policies: PolicySet
    reads_age: bool
    decide: Callable[..., PolicyDecision]


class GatewayPolicy:
    """Decides requests that a token's caveats allowed, against the running gateway policy.

    Args:
        store: a PolicyStore of kind GATEWAY; a reload takes effect (with an
            empty cache) at the next check.
        cache_size: how many decisions to remember per loaded set (0: none).
    """

    def __init__(self, store: PolicyStore, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if store.kind is not PolicyKind.GATEWAY:
            raise ValueError("a GatewayPolicy needs a store of gateway policies")
        if cache_size < 0:
            raise ValueError("cache_size cannot be negative")
        self.store = store
        self._cache_size = cache_size
        self._cached = self._cache_for(store.current)

    @property
    def version(self) -> str:
        """The running gateway policy's version, for the audit trail."""
        return self.store.version

    def check(
        self, decision: Decision, resource: str, action: str, purpose: str | None, now: int
    ) -> PolicyDecision:
        """Decide the request that `decision` (an allow from `Verifier.verify`) was made for.

        Args:
            decision: the token's own decision; it must be an allow.
            resource, action, purpose: the request, as given to `verify`.
            now: unix seconds, for `token_age`.

        Raises:
            ValueError: `decision` is not an allow (a denied token has no
                trustworthy chain to decide on).
        """
        if not decision.allowed:
            raise ValueError("the gateway policy judges only requests a token allows")
        cached = self._cached
        if cached.policies is not self.store.current:
            cached = self._cached = self._cache_for(self.store.current)
        # Without a policy reading token_age, every age decides alike: 0 keeps
        # the key (and the cache) the same from one second to the next.
        age = max(int(now) - (decision.issued_at or 0), 0) if cached.reads_age else 0
        return cached.decide(
            decision.chain[-1],
            action,
            resource,
            decision.customer or "",
            decision.user or "",
            decision.chain,
            decision.purposes,
            purpose or "",
            age,
        )

    def cache_info(self) -> functools._CacheInfo | None:
        """Hits, misses and size of the running set's cache (None when caching is off)."""
        info = getattr(self._cached.decide, "cache_info", None)
        return info() if info is not None else None

    def _cache_for(self, policies: PolicySet) -> _Cached:
        reads_age = policies.reads is None or "token_age" in policies.reads

        def decide(*args: Any) -> PolicyDecision:
            request, entities = gateway_request(*args)
            return policies.decide(request, entities)

        if self._cache_size:
            decide = functools.lru_cache(maxsize=self._cache_size)(decide)
        return _Cached(policies, reads_age, decide)


class GatewayOutcome(NamedTuple):
    """The final decision after the gateway policy, and the policy's own answer (None if not asked)."""

    decision: Decision
    policy: PolicyDecision | None


def apply_gateway_policy(
    gateway: GatewayPolicy | None,
    decision: Decision,
    *,
    resource: str,
    action: str,
    purpose: str | None,
    now: int,
) -> GatewayOutcome:
    """The service's step after `Verifier.verify`: ask the gateway policy about allowed requests.

    A denied decision, or no gateway policy, passes through unchanged. When
    the policy denies, the decision becomes a deny with reason
    `policy_denied`, keeping its provenance.
    """
    if gateway is None or not decision.allowed:
        return GatewayOutcome(decision, None)
    verdict = gateway.check(decision, resource, action, purpose, now)
    if verdict.allowed:
        return GatewayOutcome(decision, verdict)
    return GatewayOutcome(decision._replace(allowed=False, reason=Reason.POLICY_DENIED), verdict)


class PolicedVerifier:
    """A Verifier whose allows also pass the gateway policy: what a gateway decides with.

    `verify` has Verifier.verify's signature and contract (a Decision for any
    token, never an exception for the token); an allow that the gateway
    policy forbids comes back as a deny with reason `policy_denied`. With an
    audit sink, the final decision is recorded with the gateway policy's
    version (give the inner Verifier no sink of its own, or it is recorded twice).
    """

    def __init__(
        self,
        verifier: Verifier,
        gateway: GatewayPolicy | None,
        clock: Callable[[], float],
        *,
        audit: AuditSink | None = None,
    ) -> None:
        self.verifier = verifier
        self.gateway = gateway
        self._clock = clock
        self._audit = audit

    @property
    def policy_version(self) -> str | None:
        """The running gateway policy's version (None without a gateway policy)."""
        return self.gateway.version if self.gateway is not None else None

    def verify(
        self,
        token: object,
        *,
        resource: str,
        action: str,
        purpose: str | None = None,
        actor: str | None = None,
        local_only: bool = False,
    ) -> Decision:
        """Verifier.verify, then the gateway policy for an allowed request.

        Raises:
            NeedsIO: as Verifier.verify with `local_only` (the policy itself needs none).
        """
        started = perf_counter()
        decision = self.verifier.verify(
            token,
            resource=resource,
            action=action,
            purpose=purpose,
            actor=actor,
            local_only=local_only,
        )
        outcome = apply_gateway_policy(
            self.gateway,
            decision,
            resource=resource,
            action=action,
            purpose=purpose,
            now=int(self._clock()),
        )
        if self._audit is not None:
            verdict = outcome.policy
            self._audit.verified(
                outcome.decision,
                resource,
                action,
                purpose,
                actor,
                self.verifier.audience,
                perf_counter() - started,
                verdict.version if verdict is not None else None,
                verdict.policies if verdict is not None and not verdict.allowed else (),
            )
        return outcome.decision

    def authenticate(self, token: object, *, in_force: bool = False) -> Decision:
        """Verifier.authenticate: no policy applies to authenticity."""
        return self.verifier.authenticate(token, in_force=in_force)
