"""The Verifier: token in, Decision out, locally, without calling the minter.

Order of work, cheapest and least trusting first: size limits and strict
decoding of what the signature covers (the identifier, the caveat ids as
bytes), the root key by id, the HMAC chain (constant-time compare), then the
caveats decoded into their types, folded into claims and judged against the
request and the clock, and last the revocation store. `verify` returns a
Decision for every input token, whatever its bytes; when revocation state
cannot be known it denies with `revocation_unavailable` (fail closed). Given
an audit sink, each decision is handed to it (one call that only queues; see
agentcaps.recorder).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from time import perf_counter

from agentcaps import signature, wire
from agentcaps.audit import AuditSink
from agentcaps.caveats import is_canonical_resource
from agentcaps.claims import Claims, UnverifiedToken, sorted_names, summarize, with_caveats
from agentcaps.decision import Decision, Reason, deny
from agentcaps.errors import InvalidToken, NeedsIO, StoreUnavailable
from agentcaps.keys import KeyState, KeyStore, RootKey
from agentcaps.revocation import RevocationStore, TokenFacts

Clock = Callable[[], float]
_Decoded = tuple[UnverifiedToken, Claims]

# No token is honoured longer than this after it was issued, whatever its
# expiry says; revocation entries are kept exactly this long (plus leeway),
# which is what lets them expire safely.
DEFAULT_MAX_LIFETIME = 30 * 24 * 3600

# The caches keep tokens up to this long: what agents carry is well under
# (8 caveats: about 400 characters). A longer one is decoded and checked
# every time, so that the caches' memory stays bounded by their entry counts.
MAX_CACHED_TOKEN_CHARS = 4096


class Verifier:
    """Decides requests against tokens.

    Args:
        keys: root keys by id (cached by the store).
        revocations: the revocation store, asked last.
        clock: returns unix time; injected.
        leeway: seconds of clock skew tolerated on expiry and not-before.
        audience: this verifier's name, matched against audience caveats;
            a token with an audience caveat never verifies where this is None.
        limits: size limits applied before any parsing.
        max_lifetime: seconds after issue when any token stops verifying.
        decode_cache_size: how many decoded tokens to remember (0: none).
        signature_cache_size: how many tokens whose signature chain held to
            remember (0: none, the default: every call runs the chain). A hit
            spares only the HMACs; the key's presence and state, the caveats,
            the clock and revocation are checked on every call.
        audit: where each decision is recorded (None: nowhere). It is handed
            the decision, the request and the time taken, and only queues.
    """

    def __init__(
        self,
        keys: KeyStore,
        revocations: RevocationStore,
        *,
        clock: Clock = time.time,
        leeway: int = 0,
        audience: str | None = None,
        limits: wire.Limits = wire.DEFAULT_LIMITS,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        decode_cache_size: int = 4096,
        signature_cache_size: int = 0,
        audit: AuditSink | None = None,
    ) -> None:
        if leeway < 0:
            raise ValueError("leeway cannot be negative")
        self._keys = keys
        self._revocations = revocations
        self._clock = clock
        self._leeway = leeway
        self._audience = audience
        self._limits = limits
        self._max_lifetime = max_lifetime
        # Decoding is a pure function of the token string, and agents send the
        # same token many times: remember the decoded form (never a verdict;
        # the signature, caveats, clock and revocations are checked every call).
        self._decoded: dict[str, _Decoded] = {}
        self._decode_cache_size = decode_cache_size
        # Token string -> the derived key its chain was checked with. Keyed by
        # the whole string, so no other token (a copied signature on other
        # caveats) can ever hit; valid only for that very key object.
        self._signed: dict[str, bytes] = {}
        self._signature_cache_size = signature_cache_size
        # Whether a decision can be made without I/O once the key is cached.
        self._local = bool(getattr(revocations, "local", False))
        # A key store that empties its cache on a recovery counts it in
        # `forgets` (the Redis one): see _decide.
        self._forgetful = keys if hasattr(keys, "forgets") else None
        self._audit = audit

    @property
    def audience(self) -> str | None:
        """This verifier's audience name."""
        return self._audience

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
        """Decide whether `token` allows `action` on `resource` now.

        Args:
            token: the token string, untrusted; any value yields a Decision.
            resource: the resource asked for, e.g. "crm/contacts/42".
            action: the action asked for, e.g. "read".
            purpose: the purpose the caller declares, if any.
            actor: the authenticated identity of the caller, if known; it must
                be the token's last holder.
            local_only: decide only if no I/O is needed (the revocation store
                is local and the key is in cache), else raise NeedsIO before
                anything is decided or recorded: for an event loop, which
                must not block, to try first.

        Raises:
            TypeError: the request itself (not the token) has the wrong types.
            NeedsIO: with `local_only`, deciding would mean asking a store.
        """
        if type(resource) is not str or type(action) is not str:
            raise TypeError("resource and action are strings")
        if (purpose is not None and type(purpose) is not str) or (
            actor is not None and type(actor) is not str
        ):
            raise TypeError("purpose and actor are strings or None")
        if local_only and not self._local:
            raise NeedsIO("revocations are checked in Redis")
        audit = self._audit
        if audit is None:
            return self._decide(token, resource, action, purpose, actor, local_only)
        started = perf_counter()
        decision = self._decide(token, resource, action, purpose, actor, local_only)
        audit.verified(
            decision, resource, action, purpose, actor, self._audience, perf_counter() - started
        )
        return decision

    def _decide(
        self,
        token: object,
        resource: str,
        action: str,
        purpose: str | None,
        actor: str | None,
        local_only: bool = False,
        again: bool = False,
    ) -> Decision:
        forgetful = self._forgetful
        forgets = forgetful.forgets if forgetful is not None else 0
        found = self._authentic(token, local_only)
        if isinstance(found, Decision):
            return found
        (unverified, claims), key = found
        ident = unverified.identifier
        if key.state is KeyState.REVOKED:
            reason: Reason | None = Reason.KEY_REVOKED
        else:
            reason = self._judge(claims, ident.iat, resource, action, purpose, actor)
        if reason is None:
            facts = TokenFacts(
                ident.kid,
                ident.tid,
                ident.iat,
                claims.customer or "",
                claims.user or "",
                claims.delegation_ids,
                claims.chain,
            )
            try:
                reason = self._revocations.check(facts)
            except StoreUnavailable:
                reason = Reason.REVOCATION_UNAVAILABLE
        if forgetful is not None and (forgetful.forgets != forgets or forgets & 1) and not again:
            # A recovery emptied the key cache while this decision ran (its own
            # revocation check may have seen it): the key it used may be one
            # the store lost, or revoked before the loss. Decide again.
            return self._decide(token, resource, action, purpose, actor, local_only, True)
        return _decision(unverified, claims, reason)

    def authenticate(self, token: object, *, in_force: bool = False) -> Decision:
        """Check only that `token` is authentic: it decodes, its root key exists, its signature holds.

        Nothing here says what the token allows: no caveat or revocation is
        checked, and the clock and key state only with `in_force` (the token
        could be used now: its key is not revoked, its caveats hold together,
        it is within its validity window). Use it to act on a token itself
        (revoking it, for instance), never to authorise a request.
        """
        found = self._authentic(token)
        if isinstance(found, Decision):
            return found
        (unverified, claims), key = found
        reason: Reason | None = None
        if in_force:
            if key.state is KeyState.REVOKED:
                reason = Reason.KEY_REVOKED
            else:
                reason = self._in_force(claims, unverified.identifier.iat)
        return _decision(unverified, claims, reason)

    def _authentic(
        self, token: object, local_only: bool = False
    ) -> Decision | tuple[_Decoded, RootKey]:
        """The decoded token and its key if the signature holds, else the deny Decision.

        Raises:
            NeedsIO: with `local_only`, the key is not in the key store's cache.
        """
        # Only what the signature covers is read before it is checked: the
        # identifier (for the key) and the caveat ids as bytes. Typed caveats,
        # their patterns and the claims come after, so a forged token costs
        # a parse and a chain, no more.
        decoded = self._decoded.get(token) if type(token) is str else None
        if decoded is None:
            try:
                raw = wire.decode_token(token, self._limits)
                identifier = wire.decode_identifier(raw.identifier)
            except InvalidToken as exc:
                return deny(exc.reason)
        else:
            raw, identifier = decoded[0].raw, decoded[0].identifier
        try:
            kid = identifier.kid
            key = self._keys.get(kid, cached_only=True) if local_only else self._keys.get(kid)
        except StoreUnavailable:
            return deny(Reason.REVOCATION_UNAVAILABLE)
        if key is None:
            return deny(Reason.UNKNOWN_KEY)
        if self._signed.get(token) is not key.derived:  # type: ignore[call-overload]
            vids = {x.position: x.vid for x in raw.third_party if x.vid is not None}
            expected = signature.chain(key.derived, raw.identifier, raw.cids, vids)
            if not signature.signatures_equal(expected, raw.signature):
                return deny(Reason.BAD_SIGNATURE)
            if self._signature_cache_size and len(token) <= MAX_CACHED_TOKEN_CHARS:  # type: ignore[arg-type]  # decoded: a str
                if len(self._signed) >= self._signature_cache_size:
                    self._signed.clear()
                self._signed[token] = key.derived  # type: ignore[index]  # decoded: a str
        # From here on the token is authentic: its claims may be read and reported.
        if decoded is None:
            try:
                decoded = self._remember(token, with_caveats(raw, identifier))  # type: ignore[arg-type]
            except InvalidToken as exc:
                return deny(exc.reason)
        return decoded, key

    def _remember(self, token: str, unverified: UnverifiedToken) -> _Decoded:
        """The token's claims, kept for its next verification (decode cache)."""
        decoded = (unverified, summarize(unverified.caveats))
        if self._decode_cache_size and len(token) <= MAX_CACHED_TOKEN_CHARS:
            if len(self._decoded) >= self._decode_cache_size:
                self._decoded.clear()
            self._decoded[token] = decoded
        return decoded

    def _judge(
        self,
        claims: Claims,
        issued_at: int,
        resource: str,
        action: str,
        purpose: str | None,
        actor: str | None,
    ) -> Reason | None:
        """The first reason the claims deny this request, most fundamental first."""
        reason = self._in_force(claims, issued_at)
        if reason is not None:
            return reason
        if claims.audiences is not None and self._audience not in claims.audiences:
            return Reason.AUDIENCE_DENIED
        if actor is not None and actor != claims.chain[-1]:
            return Reason.ACTOR_MISMATCH
        if not is_canonical_resource(resource) or not all(
            r.matches(resource) for r in claims.resources
        ):
            return Reason.RESOURCE_DENIED
        if claims.actions is None or action not in claims.actions:
            return Reason.ACTION_DENIED
        if not claims.purposes or (purpose is not None and purpose not in claims.purposes):
            return Reason.PURPOSE_DENIED
        return None

    def _in_force(self, claims: Claims, issued_at: int) -> Reason | None:
        """Why a token with these claims cannot be used now (whatever the request), or None."""
        if claims.problem is not None:
            return claims.problem
        now = int(self._clock())
        leeway = self._leeway
        assert claims.expires_at is not None  # no problem means an expiry exists
        if now - leeway >= claims.expires_at or now - leeway >= issued_at + self._max_lifetime:
            return Reason.EXPIRED
        if claims.not_before is not None and now + leeway < claims.not_before:
            return Reason.NOT_YET_VALID
        return None


def _decision(unverified: UnverifiedToken, claims: Claims, reason: Reason | None) -> Decision:
    """The Decision for an authentic token, with its provenance."""
    ident = unverified.identifier
    # Positional: this runs on every verification, and keywords cost more.
    return Decision(
        reason is None,
        reason or Reason.OK,
        ident.tid.hex(),
        ident.kid,
        claims.customer,
        claims.user,
        claims.chain,
        tuple([d.hex() for d in claims.delegation_ids]),
        sorted_names(claims.purposes),
        claims.expires_at,
        ident.iat,
    )
