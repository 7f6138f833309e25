"""What a token's caveats claim taken together, before (or without) verification.

`decode_unverified` turns a token string into its identifier and typed caveats;
`summarize` folds the caveats into Claims: the principal, the provenance chain,
the intersected scope, the validity window, and the first structural problem.
None of it is trustworthy until the Verifier has checked the signature, which is
why the names here say "unverified". `inspect` is the human view of the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from agentcaps import caveats as cv
from agentcaps import wire
from agentcaps.decision import Reason

_EXPIRES = cv.Expires.code
_NOT_BEFORE = cv.NotBefore.code
_PRINCIPAL = cv.Principal.code
_AGENT = cv.Agent.code
_RESOURCES = cv.Resources.code
_ACTIONS = cv.Actions.code
_PURPOSES = cv.Purposes.code
_DELEGATE = cv.Delegate.code
_AUDIENCE = cv.Audience.code
_MAX_DELEGATIONS = cv.MaxDelegations.code
_THIRD_PARTY = cv.ThirdPartyCaveat.code

# When several structural problems exist, report the most fundamental one.
_PROBLEM_RANK = {
    Reason.UNKNOWN_CAVEAT: 0,
    Reason.DISCHARGE_MISSING: 1,
    Reason.MALFORMED: 2,
    Reason.TOO_LARGE: 3,
    Reason.PRINCIPAL_CONFLICT: 4,
    Reason.DELEGATION_LIMIT: 5,
}


class Claims(NamedTuple):
    """The caveats of one token folded together; request-independent.

    `actions`, `purposes` and `audiences` are intersections over every caveat of
    that type (None: the token has no such caveat). Every resources caveat must
    match on its own, so they are kept as they are. `problem` is set when the
    caveats can never allow anything: unknown or third-party caveats, a missing
    principal, agent or expiry, a conflicting principal or agent, more
    delegations than a max_delegations caveat permits, or more resource
    patterns in all than MAX_RESOURCE_PATTERNS (or single `*` segments than
    MAX_RESOURCE_STARS).
    """

    problem: Reason | None
    customer: str | None
    user: str | None
    chain: tuple[str, ...]
    delegation_ids: tuple[bytes, ...]
    expires_at: int | None
    not_before: int | None
    resources: tuple[cv.Resources, ...]
    actions: frozenset[str] | None
    purposes: frozenset[str] | None
    audiences: frozenset[str] | None


def summarize(caveats: Sequence[cv.Caveat]) -> Claims:
    """Fold a token's caveats, in order, into its Claims."""
    problems: list[Reason] = []
    principal: cv.Principal | None = None
    agent: str | None = None
    chain: list[str] = []
    delegation_ids: list[bytes] = []
    expires_at: int | None = None
    not_before: int | None = None
    resources: list[cv.Resources] = []
    patterns = stars = 0
    actions: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    audiences: frozenset[str] | None = None
    # For each max_delegations caveat: its limit and the delegations seen so far.
    limits: list[tuple[int, int]] = []

    # Dispatch on the wire code: this loop runs on every verification, and
    # integer comparisons are several times cheaper than class patterns.
    for caveat in caveats:
        code = caveat.code
        if code == _EXPIRES:
            at = caveat.at  # type: ignore[attr-defined]
            if expires_at is None or at < expires_at:
                expires_at = at
        elif code == _RESOURCES:
            resources.append(caveat)  # type: ignore[arg-type]
            patterns += len(caveat.globs)  # type: ignore[attr-defined]
            stars += cv.single_stars(caveat.globs)  # type: ignore[attr-defined]
        elif code == _ACTIONS:
            names = caveat.actions  # type: ignore[attr-defined]
            actions = frozenset(names) if actions is None else actions.intersection(names)
        elif code == _PURPOSES:
            names = caveat.purposes  # type: ignore[attr-defined]
            purposes = frozenset(names) if purposes is None else purposes.intersection(names)
        elif code == _DELEGATE:
            chain.append(caveat.to_agent)  # type: ignore[attr-defined]
            delegation_ids.append(caveat.delegation_id)  # type: ignore[attr-defined]
        elif code == _PRINCIPAL:
            if principal is None:
                principal = caveat  # type: ignore[assignment]
            elif principal != caveat:
                problems.append(Reason.PRINCIPAL_CONFLICT)
        elif code == _AGENT:
            if agent is None and not chain:
                agent = caveat.agent  # type: ignore[attr-defined]
            else:
                # The first holder is named once, before any delegation.
                problems.append(Reason.PRINCIPAL_CONFLICT)
        elif code == _NOT_BEFORE:
            at = caveat.at  # type: ignore[attr-defined]
            if not_before is None or at > not_before:
                not_before = at
        elif code == _AUDIENCE:
            names = caveat.audiences  # type: ignore[attr-defined]
            audiences = frozenset(names) if audiences is None else audiences.intersection(names)
        elif code == _MAX_DELEGATIONS:
            limits.append((caveat.limit, len(chain)))  # type: ignore[attr-defined]
        elif code == _THIRD_PARTY:
            problems.append(Reason.DISCHARGE_MISSING)
        else:
            problems.append(Reason.UNKNOWN_CAVEAT)

    if limits and any(len(chain) - seen > limit for limit, seen in limits):
        problems.append(Reason.DELEGATION_LIMIT)
    if patterns > cv.MAX_RESOURCE_PATTERNS or stars > cv.MAX_RESOURCE_STARS:
        problems.append(Reason.TOO_LARGE)
    if principal is None or agent is None or expires_at is None:
        problems.append(Reason.MALFORMED)
    elif not resources or actions is None or purposes is None:
        # Every token says what it may touch, do and why; deny by default.
        problems.append(Reason.MALFORMED)

    return Claims(
        min(problems, key=_PROBLEM_RANK.__getitem__) if problems else None,
        principal.customer if principal else None,
        principal.user if principal else None,
        ((agent,) if agent else ()) + tuple(chain),
        tuple(delegation_ids),
        expires_at,
        not_before,
        tuple(resources),
        actions,
        purposes,
        audiences,
    )


class UnverifiedToken(NamedTuple):
    """A decoded token whose signature has NOT been checked: never trust its claims."""

    raw: wire.RawMacaroon
    identifier: wire.Identifier
    caveats: tuple[cv.Caveat, ...]

    def claims(self) -> Claims:
        """The caveats folded together; unverified."""
        return summarize(self.caveats)


def decode_unverified(token: object, limits: wire.Limits = wire.DEFAULT_LIMITS) -> UnverifiedToken:
    """Decode a token string without verifying it.

    Raises:
        MalformedToken, TokenTooLarge: the string is not a token within `limits`.
    """
    raw = wire.decode_token(token, limits)
    return with_caveats(raw, wire.decode_identifier(raw.identifier))


def with_caveats(raw: wire.RawMacaroon, identifier: wire.Identifier) -> UnverifiedToken:
    """The token of these fields, its caveats decoded into their types.

    Raises:
        MalformedToken: an `ac1:` caveat whose payload is not canonical msgpack.
    """
    cached = cv.DECODED.get
    caveats = [cached(cid) or cv.decode_cached(cid) for cid in raw.cids]
    for extra in raw.third_party:
        caveats[extra.position] = cv.ThirdPartyCaveat(
            raw.cids[extra.position], extra.vid, extra.location
        )
    return UnverifiedToken(raw, identifier, tuple(caveats))


def inspect(token: object, limits: wire.Limits = wire.DEFAULT_LIMITS) -> dict[str, object]:
    """An UNVERIFIED, JSON-ready view of a token, for people and debugging.

    Nothing here is checked against a key: anyone can write a token that says
    anything. Use `Verifier.verify` to decide; use this to read.

    Raises:
        MalformedToken, TokenTooLarge: the string is not a token.
    """
    unverified = decode_unverified(token, limits)
    claims = unverified.claims()
    ident = unverified.identifier
    return {
        "verified": False,
        "warning": "UNVERIFIED: decoded without checking the signature; do not trust it",
        "key_id": ident.kid,
        "token_id": ident.tid.hex(),
        "issued_at": ident.iat,
        "customer": claims.customer,
        "user": claims.user,
        "agent": claims.chain[-1] if claims.chain else None,
        "chain": list(claims.chain),
        "delegation_ids": [d.hex() for d in claims.delegation_ids],
        "expires_at": claims.expires_at,
        "problem": claims.problem.value if claims.problem else None,
        "caveats": [{caveat.name: caveat.describe()} for caveat in unverified.caveats],
    }


def sorted_names(names: frozenset[str] | None) -> tuple[str, ...]:
    """A stable order for a set of names."""
    return tuple(sorted(names)) if names else ()
