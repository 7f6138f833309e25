"""Minting tokens with a root key, and narrowing them offline with `attenuate`.

Minting needs a KeyStore; attenuation needs nothing but the token: appending a
caveat and extending the HMAC chain from the token's own signature is exactly
what macaroons allow any holder to do, and it can only take permissions away.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict, Unpack

from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.claims import decode_unverified
from agentcaps.decision import Reason
from agentcaps.errors import InvalidArgument, StoreUnavailable
from agentcaps.keys import KeyStore
from agentcaps.revocation import RevocationStore, TokenFacts

Clock = Callable[[], float]

# A token's ttl is capped at mint; the verifier enforces a hard cap of its own.
DEFAULT_MAX_TTL = 3600
# Seconds a mint waits at most for a revocation made this second to be in the past.
_LONGEST_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A freshly minted token and the facts an issuer needs to record about it."""

    token: str
    token_id: str
    key_id: str
    issued_at: int
    expires_at: int

    def __str__(self) -> str:
        return self.token

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, token included: treat it as a secret."""
        return {
            "token": self.token,
            "token_id": self.token_id,
            "key_id": self.key_id,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }


class MintRequest(TypedDict):
    """The keywords of `Minter.mint`, `issue` and `plan` (and `mint_with_policy`)."""

    customer: str
    user: str
    agent: str
    resources: Sequence[str]
    actions: Sequence[str]
    purposes: Sequence[str]
    ttl: int
    audience: NotRequired[Sequence[str] | None]
    max_delegations: NotRequired[int | None]
    not_before: NotRequired[int | None]
    platform_key: NotRequired[bool]


@dataclass(frozen=True, slots=True)
class MintPlan:
    """A checked mint request, not yet signed: the token's id, times and caveats."""

    key_owner: str | None  # whose active key will sign (None: the platform's)
    token_id: bytes
    issued_at: int
    expires_at: int
    caveats: tuple[cv.Caveat, ...]


# Times in caveats are below 2**63 (msgpack int64); no token lives 2**32 seconds.
_TIME_LIMIT = 2**63
_TTL_LIMIT = 2**32


def _check_ttl(ttl: object, max_ttl: int | None = None) -> int:
    if type(ttl) is not int or not 0 < ttl < _TTL_LIMIT:
        raise InvalidArgument("ttl must be a positive whole number of seconds (below 2^32)")
    if max_ttl is not None and ttl > max_ttl:
        raise InvalidArgument(f"ttl must be at most {max_ttl} seconds")
    return ttl


def _check_limit(value: object) -> int:
    if type(value) is not int or not 0 <= value <= cv.MAX_LIST_ITEMS:
        raise InvalidArgument(
            f"max_delegations must be a whole number from 0 to {cv.MAX_LIST_ITEMS}"
        )
    return value


def _check_time(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < _TIME_LIMIT:
        raise InvalidArgument(f"{what} must be a unix time in whole seconds")
    return value


def _scope_caveats(
    resources: Sequence[str] | None,
    actions: Sequence[str] | None,
    purposes: Sequence[str] | None,
    audience: Sequence[str] | None,
) -> list[cv.Caveat]:
    out: list[cv.Caveat] = []
    if resources is not None:
        globs = cv.check_resource_globs(resources)
        _check_patterns((), globs)
        out.append(cv.Resources(globs))
    if actions is not None:
        out.append(cv.Actions(cv.check_names(actions, "actions")))
    if purposes is not None:
        out.append(cv.Purposes(cv.check_names(purposes, "purposes")))
    if audience is not None:
        out.append(cv.Audience(cv.check_names(audience, "audience")))
    return out


# The caveats of a freshly minted token, in the order `Minter.plan` writes them.
_MINTED_ORDER = {
    code: rank
    for rank, code in enumerate(
        (
            cv.Principal.code,
            cv.Agent.code,
            cv.Resources.code,
            cv.Actions.code,
            cv.Purposes.code,
            cv.Audience.code,
            cv.Expires.code,
            cv.NotBefore.code,
            cv.MaxDelegations.code,
        )
    )
}


def as_minted(caveats: Sequence[cv.Caveat]) -> bool:
    """Whether these caveats are a minted token's, with nothing added since (as far as can be told).

    `Minter.plan` writes each kind once, in one order, with the expiry
    after the scope; `attenuate` appends after it. So a narrowed copy shows,
    unless all it added is a delegation limit the token was minted without.
    """
    last = -1
    for caveat in caveats:
        rank = _MINTED_ORDER.get(caveat.code)
        if rank is None or rank <= last:
            return False
        last = rank
    return True


def as_delegated(caveats: Sequence[cv.Caveat]) -> bool:
    """Whether these caveats end with a delegation, as `attenuate(delegate_to=…)` wrote it.

    That is nothing after the last delegate caveat but the delegation limit
    the same call may add: a copy narrowed after its delegation shows.
    """
    last = max((i for i, c in enumerate(caveats) if c.code == cv.Delegate.code), default=None)
    if last is None:
        return False
    tail = caveats[last + 1 :]
    return len(tail) <= 1 and all(c.code == cv.MaxDelegations.code for c in tail)


class Minter:
    """Mints tokens with the active root key of the customer they are for.

    Args:
        keys: where root keys live.
        clock: returns unix time; injected so tests and replays control it.
        max_ttl: the longest ttl `mint` accepts, in seconds.
        revocations: where revocations live, so that no token is born revoked
            (see `plan`); None: not looked at.
        sleep: waits that many seconds (with a test clock: moves it).
    """

    def __init__(
        self,
        keys: KeyStore,
        *,
        clock: Clock = time.time,
        max_ttl: int = DEFAULT_MAX_TTL,
        revocations: RevocationStore | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._max_ttl = max_ttl
        self._revocations = revocations
        self._sleep = sleep

    def mint(self, **request: Unpack[MintRequest]) -> str:
        """Mint a token for `agent` acting for `user` of `customer`; return the token string.

        The token carries exactly one principal, one agent, the scope
        (resources, actions, purposes), an expiry `ttl` seconds from now, and
        optionally an audience, a delegation limit and a start time (see
        MintRequest for every keyword).

        Raises:
            InvalidArgument: a value that cannot go into a token.
            StoreUnavailable: the key store did not answer.
        """
        return self.issue(**request).token

    def issue(self, **request: Unpack[MintRequest]) -> MintedToken:
        """`mint`, returning the token with its id, key id and times.

        The customer's active key signs, unless `platform_key` asks for the
        platform's (the service's own admin and issuer tokens).
        """
        return self.sign(self.plan(**request))

    def plan(
        self,
        *,
        customer: str,
        user: str,
        agent: str,
        resources: Sequence[str],
        actions: Sequence[str],
        purposes: Sequence[str],
        ttl: int,
        audience: Sequence[str] | None = None,
        max_delegations: int | None = None,
        not_before: int | None = None,
        platform_key: bool = False,
    ) -> MintPlan:
        """Check a mint request and fix what the token will say, without signing it.

        For callers that must judge a token before it exists (a mint policy
        decides on `Grant::"<token id>"`): `sign` the plan once it is allowed.

        Raises:
            InvalidArgument: a value that cannot go into a token.
        """
        principal = cv.Principal(cv.check_name(customer, "customer"), cv.check_name(user, "user"))
        first_holder = cv.Agent(cv.check_name(agent, "agent"))
        ttl = _check_ttl(ttl, self._max_ttl)
        for name, value in (("resources", resources), ("actions", actions), ("purposes", purposes)):
            if value is None:
                raise InvalidArgument(f"{name} is required")
        caveats: list[cv.Caveat] = [principal, first_holder]
        caveats += _scope_caveats(resources, actions, purposes, audience)
        token_id = secrets.token_bytes(wire.TOKEN_ID_BYTES)
        now = self._issue_time(token_id, principal, first_holder.agent)
        expires_at = now + ttl
        caveats.append(cv.Expires(expires_at))
        if not_before is not None:
            caveats.append(cv.NotBefore(_check_time(not_before, "not_before")))
        if max_delegations is not None:
            caveats.append(cv.MaxDelegations(_check_limit(max_delegations)))
        return MintPlan(
            key_owner=None if platform_key else customer,
            token_id=token_id,
            issued_at=now,
            expires_at=expires_at,
            caveats=tuple(caveats),
        )

    def _issue_time(self, token_id: bytes, principal: cv.Principal, agent: str) -> int:
        """Now, once no revocation made this very second would take the token.

        Revoking a customer, a user or an agent takes their tokens issued up
        to and including the second it is made, so a token minted in that
        second (the new issuer token after a customer's revocation, say)
        would be born revoked. The minter waits for the next second instead
        (under a second): never dating a token ahead, so that a revocation
        made after it, in any later second, still takes it. The look is a
        courtesy: when revocations cannot be read, or the clock does not
        move, the token is dated now (verifiers fail closed on their own).
        """
        now = int(self._clock())
        if self._revocations is None:
            return now
        waited = 0.0
        while True:
            facts = TokenFacts("", token_id, now, principal.customer, principal.user, (), (agent,))
            try:
                if self._revocations.check(facts) is not Reason.REVOKED:
                    return now
            except StoreUnavailable:
                return now
            if waited >= _LONGEST_WAIT:
                return now
            # Never longer than what is left of the wait: a clock stepped
            # back must not hold a mint for as long as the step.
            pause = min(max(now + 1 - self._clock(), 0.001), _LONGEST_WAIT - waited)
            self._sleep(pause)
            waited += pause
            now = int(self._clock())

    def sign(self, plan: MintPlan) -> MintedToken:
        """Sign a plan with its owner's active root key: the token exists from here on.

        Raises:
            StoreUnavailable: the key store did not answer.
        """
        key = self._keys.signing_key(plan.key_owner)
        identifier = wire.encode_identifier(wire.Identifier(key.kid, plan.token_id, plan.issued_at))
        cids = tuple(c.encode() for c in plan.caveats)
        sig = signature.chain(key.derived, identifier, cids)
        token = wire.encode_token(wire.RawMacaroon(identifier, cids, sig))
        _check_size(cids, token, wire.DEFAULT_LIMITS)
        return MintedToken(token, plan.token_id.hex(), key.kid, plan.issued_at, plan.expires_at)


def attenuate(
    token: str,
    *,
    resources: Sequence[str] | None = None,
    actions: Sequence[str] | None = None,
    purposes: Sequence[str] | None = None,
    ttl: int | None = None,
    expires_at: int | None = None,
    delegate_to: str | None = None,
    audience: Sequence[str] | None = None,
    max_delegations: int | None = None,
    clock: Clock = time.time,
    limits: wire.Limits = wire.DEFAULT_LIMITS,
) -> str:
    """Narrow a token offline, with no key and no network; return the new token.

    Each option appends one caveat, so the result allows at most what `token`
    allows: `resources`, `actions`, `purposes` and `audience` intersect with
    what is there; `ttl` (seconds from now) or `expires_at` (unix time) can
    only shorten its life; `delegate_to` hands it to another agent under a
    fresh delegation id; `max_delegations` limits further delegations (counted
    after `delegate_to`, so `delegate_to="b", max_delegations=0` stops at b).

    Raises:
        InvalidArgument: a bad option, nothing to add, or a result over `limits`.
        MalformedToken, TokenTooLarge: `token` is not a token.
    """
    if ttl is not None and expires_at is not None:
        raise InvalidArgument("give ttl or expires_at, not both")
    unverified = decode_unverified(token, limits)
    raw = unverified.raw
    caveats = _scope_caveats(resources, actions, purposes, audience)
    if resources is not None:
        held = [g for c in unverified.caveats if isinstance(c, cv.Resources) for g in c.globs]
        _check_patterns(held, resources)
    if ttl is not None:
        caveats.append(cv.Expires(int(clock()) + _check_ttl(ttl)))
    if expires_at is not None:
        caveats.append(cv.Expires(_check_time(expires_at, "expires_at")))
    if delegate_to is not None:
        caveats.append(
            cv.Delegate(
                cv.check_name(delegate_to, "delegate_to"),
                secrets.token_bytes(cv.DELEGATION_ID_BYTES),
            )
        )
    if max_delegations is not None:
        caveats.append(cv.MaxDelegations(_check_limit(max_delegations)))
    if not caveats:
        raise InvalidArgument("attenuate needs at least one option")

    new_cids = tuple(c.encode() for c in caveats)
    sig = raw.signature
    for cid in new_cids:
        sig = signature.extend(sig, cid)
    narrowed = raw._replace(cids=raw.cids + new_cids, signature=sig)
    out = wire.encode_token(narrowed)
    _check_size(narrowed.cids, out, limits)
    return out


def _check_patterns(held: Sequence[str], added: Sequence[str]) -> None:
    """Refuse resource patterns that would make the token `too_large` (claims.summarize's limits)."""
    if len(held) + len(added) > cv.MAX_RESOURCE_PATTERNS:
        raise InvalidArgument(
            f"a token carries at most {cv.MAX_RESOURCE_PATTERNS} resource patterns in all, and "
            f"this one already holds {len(held)}: narrow it with actions, purposes or ttl, or "
            "have its issuer mint one with fewer patterns"
        )
    if cv.single_stars([*held, *added]) > cv.MAX_RESOURCE_STARS:
        raise InvalidArgument(
            f"a token's patterns with two or more '**' hold at most {cv.MAX_RESOURCE_STARS} "
            "single '*' segments in all"
        )


def _check_size(cids: Sequence[bytes], token: str, limits: wire.Limits) -> None:
    """Refuse to hand out a token that verifiers would deny as too large."""
    if len(cids) > limits.max_caveats:
        raise InvalidArgument(f"a token carries at most {limits.max_caveats} caveats")
    if any(len(cid) > limits.max_caveat_bytes for cid in cids):
        raise InvalidArgument(f"a caveat is at most {limits.max_caveat_bytes} bytes")
    if len(token) > limits.max_token_bytes:
        raise InvalidArgument(f"a token is at most {limits.max_token_bytes} bytes")
