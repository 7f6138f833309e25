"""Verifier.verify: every reason the core produces, leeway, lifetime cap, purposes, Decision."""

from __future__ import annotations

import re

import pytest

import agentcaps
from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.decision import Decision, Reason
from agentcaps.errors import InvalidArgument, StoreUnavailable
from agentcaps.keys import KeyState, RootKey
from agentcaps.revocation import Revocation, RevocationKind

NOW = 1_800_000_000
SCOPE = {
    "customer": "acme",
    "user": "alice",
    "agent": "planner",
    "resources": ["crm/**"],
    "actions": ["read", "write"],
    "purposes": ["sync", "audit"],
    "ttl": 600,
}
HEX32 = re.compile(r"[0-9a-f]{32}")


class UnreachableRevocations:
    """A RevocationStore that cannot answer, like Redis being down."""

    def check(self, facts):
        raise StoreUnavailable("revocation store unreachable")

    def revoke(self, revocation):
        raise StoreUnavailable("revocation store unreachable")

    def list(self):
        raise StoreUnavailable("revocation store unreachable")


class UnreachableKeys:
    """A KeyStore that cannot answer."""

    def get(self, kid):
        raise StoreUnavailable("key store unreachable")


@pytest.fixture
def minted(minter):
    return minter.issue(**SCOPE)


@pytest.fixture
def token(minted):
    return minted.token


def check(verifier, token, resource="crm/contacts/42", action="read", purpose=None, actor=None):
    return verifier.verify(token, resource=resource, action=action, purpose=purpose, actor=actor)


def append(token: str, *cids: bytes) -> str:
    """Append caveat ids as any holder can: extend the HMAC chain from the token's signature."""
    raw = wire.decode_token(token)
    sig = raw.signature
    for cid in cids:
        sig = signature.extend(sig, cid)
    return wire.encode_token(raw._replace(cids=raw.cids + cids, signature=sig))


def append_third_party(token: str, cid: bytes, vid: bytes, location: bytes) -> str:
    """Append a third-party caveat (one that needs a discharge), correctly signed."""
    raw = wire.decode_token(token)
    extra = wire.ThirdParty(len(raw.cids), vid, location)
    sig = signature.extend_third_party(raw.signature, vid, cid)
    return wire.encode_token(
        raw._replace(cids=raw.cids + (cid,), signature=sig, third_party=raw.third_party + (extra,))
    )


def forge(key: RootKey, caveats: list[cv.Caveat], iat: int = NOW, tid: bytes = bytes(16)) -> str:
    """A token with exactly `caveats`, signed by `key` (as a buggy or hostile minter might)."""
    identifier = wire.encode_identifier(wire.Identifier(key.kid, tid, iat))
    cids = tuple(c.encode() for c in caveats)
    return wire.encode_token(
        wire.RawMacaroon(identifier, cids, signature.chain(key.derived, identifier, cids))
    )


def scope_caveats(expires_at: int = NOW + 600) -> list[cv.Caveat]:
    return [
        cv.Principal("acme", "alice"),
        cv.Agent("planner"),
        cv.Resources(("crm/**",)),
        cv.Actions(("read",)),
        cv.Purposes(("sync",)),
        cv.Expires(expires_at),
    ]


def flip_last_signature_bit(token: str) -> str:
    raw = wire.decode_token(token)
    sig = raw.signature[:-1] + bytes((raw.signature[-1] ^ 1,))
    return wire.encode_token(raw._replace(signature=sig))


def assert_no_identity(decision: Decision) -> None:
    assert decision.allowed is False
    assert decision.token_id is None
    assert decision.key_id is None
    assert decision.customer is None
    assert decision.user is None
    assert decision.chain == ()
    assert decision.delegation_ids == ()
    assert decision.purposes == ()
    assert decision.expires_at is None
    assert decision.issued_at is None
    assert decision.agent is None


# --- one test per reason ------------------------------------------------------------


def test_valid_request_is_allowed_ok(token, verifier):
    """A token inside its scope, time and audience is allowed with reason ok."""
    decision = check(verifier, token)
    assert decision.allowed is True
    assert decision.reason is Reason.OK
    assert decision.reason == "ok"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "agc_",
        "not-a-token",
        "agc_AAAA",
        "agc_!!!!",
        "Bearer agc_AgE",
        None,
        42,
        b"agc_AgE",
        ["agc_"],
    ],
)
def test_non_token_input_is_denied_malformed(verifier, bad):
    """Input that is not a token string is a malformed deny, never an exception."""
    decision = check(verifier, bad)
    assert decision.reason is Reason.MALFORMED
    assert_no_identity(decision)


def test_token_with_non_canonical_caveat_payload_is_denied_malformed(token, verifier):
    """A correctly signed `ac1:` caveat carrying a float is malformed, not coerced."""
    cid = b"ac1:" + wire.b64encode(wire.packb([1, float(NOW + 60)])).encode()
    assert check(verifier, append(token, cid)).reason is Reason.MALFORMED


def test_caveats_are_not_decoded_before_the_signature_holds(token, verifier, monkeypatch):
    """A forged token costs a parse and a chain: its caveats are never decoded into types."""
    decoded: list[bytes] = []
    real = cv.decode_cached
    monkeypatch.setattr(cv, "decode_cached", lambda cid: decoded.append(cid) or real(cid))
    monkeypatch.setattr(cv, "DECODED", {})
    cid = b"ac1:" + wire.b64encode(wire.packb([1, float(NOW + 60)])).encode()
    forged = flip_last_signature_bit(append(token, cv.Resources(("**/a/" * 50,)).encode(), cid))
    assert check(verifier, forged).reason is Reason.BAD_SIGNATURE
    raw = wire.decode_token(token)
    unknown = wire.encode_identifier(wire.Identifier("k-unknown", bytes(16), NOW))
    assert check(verifier, wire.encode_token(raw._replace(identifier=unknown))).reason is (
        Reason.UNKNOWN_KEY
    )
    assert decoded == []
    assert check(verifier, token).allowed and decoded  # an authentic one is decoded


def test_token_without_expiry_is_denied_malformed(memory_stores, verifier):
    """A token without an expiry never verifies, even correctly signed."""
    key = memory_stores.keys.signing_key("acme")
    caveats = [c for c in scope_caveats() if not isinstance(c, cv.Expires)]
    assert check(verifier, forge(key, caveats)).reason is Reason.MALFORMED


def test_token_without_principal_is_denied_malformed(memory_stores, verifier):
    """A token without a principal never verifies, even correctly signed."""
    key = memory_stores.keys.signing_key("acme")
    caveats = [c for c in scope_caveats() if not isinstance(c, cv.Principal)]
    assert check(verifier, forge(key, caveats)).reason is Reason.MALFORMED


def test_token_without_agent_or_scope_is_denied_malformed(memory_stores, verifier):
    """A token missing its agent, resources, actions or purposes never verifies."""
    key = memory_stores.keys.signing_key("acme")
    for kind in (cv.Agent, cv.Resources, cv.Actions, cv.Purposes):
        caveats = [c for c in scope_caveats() if not isinstance(c, kind)]
        assert check(verifier, forge(key, caveats)).reason is Reason.MALFORMED, kind


def test_oversized_token_is_denied_too_large(verifier):
    """A token over 16 KiB is denied too_large without being parsed."""
    assert check(verifier, "agc_" + "A" * 20_000).reason is Reason.TOO_LARGE
    assert check(verifier, "agc_" + "!" * 20_000).reason is Reason.TOO_LARGE


def test_too_many_caveats_is_denied_too_large_before_any_key_lookup(memory_stores, clock):
    """The caveat limit is applied before the key is looked up or any HMAC is computed."""
    raw = wire.RawMacaroon(
        wire.encode_identifier(wire.Identifier("kunknown", bytes(16), NOW)),
        (b"ac1:!!",) * 65,
        bytes(32),
    )
    verifier = agentcaps.Verifier(UnreachableKeys(), UnreachableRevocations(), clock=clock)
    assert check(verifier, wire.encode_token(raw)).reason is Reason.TOO_LARGE


def test_limits_configure_the_verifier(token, memory_stores, clock):
    """A verifier built with smaller Limits denies larger tokens as too_large."""
    strict = memory_stores.verifier(clock=clock, limits=wire.Limits(max_caveats=5))
    assert check(strict, token).reason is Reason.TOO_LARGE


def test_token_signed_by_an_unknown_key_is_denied_unknown_key(verifier):
    """A key id the store does not know is unknown_key, and nothing from the token is reported."""
    stranger = RootKey("knowhere", "acme", KeyState.ACTIVE, 0, b"\x07" * 32)
    decision = check(verifier, forge(stranger, scope_caveats()))
    assert decision.reason is Reason.UNKNOWN_KEY
    assert_no_identity(decision)


def test_token_of_a_revoked_root_key_is_denied_key_revoked(memory_stores, minted, verifier):
    """Revoking a root key denies every token it signed with key_revoked."""
    memory_stores.keys.revoke(minted.key_id)
    assert check(verifier, minted.token).reason is Reason.KEY_REVOKED
    child = agentcaps.attenuate(minted.token, delegate_to="fetcher")
    assert check(verifier, child).reason is Reason.KEY_REVOKED


def test_token_of_a_rotated_verify_only_key_still_verifies(memory_stores, minter, minted, verifier):
    """After rotation new tokens use the new key, and the old key's tokens stay valid."""
    new_key = memory_stores.keys.rotate(minted.key_id)
    assert new_key.kid != minted.key_id
    assert minter.issue(**SCOPE).key_id == new_key.kid
    assert check(verifier, minted.token).allowed


def test_tampered_signature_is_denied_bad_signature(token, verifier):
    """One flipped signature bit is bad_signature."""
    assert check(verifier, flip_last_signature_bit(token)).reason is Reason.BAD_SIGNATURE


def test_removed_caveat_is_denied_bad_signature(token, verifier):
    """Dropping a caveat (to widen the token) breaks the chain: bad_signature."""
    raw = wire.decode_token(token)
    widened = wire.encode_token(raw._replace(cids=raw.cids[:-1]))
    assert check(verifier, widened).reason is Reason.BAD_SIGNATURE


def test_replaced_caveat_is_denied_bad_signature(token, verifier):
    """Swapping a caveat for a wider one breaks the chain: bad_signature."""
    raw = wire.decode_token(token)
    cids = tuple(
        cv.Resources(("**",)).encode() if c == cv.Resources(("crm/**",)).encode() else c
        for c in raw.cids
    )
    assert cids != raw.cids
    assert (
        check(verifier, wire.encode_token(raw._replace(cids=cids))).reason is Reason.BAD_SIGNATURE
    )


def test_token_signed_with_the_wrong_secret_is_denied_bad_signature(memory_stores, verifier):
    """A token naming a real key id but signed with another secret is bad_signature."""
    real = memory_stores.keys.signing_key("acme")
    impostor = RootKey(real.kid, "acme", KeyState.ACTIVE, 0, b"\x09" * 32)
    assert check(verifier, forge(impostor, scope_caveats())).reason is Reason.BAD_SIGNATURE


def test_bad_signature_decision_reports_no_identity(token, verifier):
    """When the signature fails, token id, key id, customer, user, chain and times are empty."""
    child = agentcaps.attenuate(token, delegate_to="fetcher")
    decision = check(verifier, flip_last_signature_bit(child))
    assert decision.reason is Reason.BAD_SIGNATURE
    assert_no_identity(decision)
    assert decision.to_dict()["customer"] is None


def test_signature_is_checked_before_caveats(token, verifier):
    """A tampered token with an unknown caveat reports bad_signature, not the caveat."""
    tampered = flip_last_signature_bit(append(token, b"time < 2030"))
    assert check(verifier, tampered).reason is Reason.BAD_SIGNATURE


def test_token_past_its_expiry_is_denied_expired(token, verifier, clock):
    """A token is valid strictly before its expiry second."""
    clock.advance(599)
    assert check(verifier, token).allowed
    clock.advance(1)
    assert check(verifier, token).reason is Reason.EXPIRED


def test_token_before_not_before_is_denied_not_yet_valid(minter, verifier, clock):
    """A token is valid from its not_before second on."""
    token = minter.mint(**SCOPE, not_before=NOW + 100)
    clock.advance(99)
    assert check(verifier, token).reason is Reason.NOT_YET_VALID
    clock.advance(1)
    assert check(verifier, token).allowed


def test_resource_outside_the_globs_is_denied_resource_denied(token, verifier):
    """A resource no glob matches is resource_denied."""
    assert check(verifier, token, resource="hr/salaries").reason is Reason.RESOURCE_DENIED
    assert check(verifier, token, resource="crmx/1").reason is Reason.RESOURCE_DENIED


@pytest.mark.parametrize(
    "resource", ["", "crm//42", "crm/./42", "crm/../hr", "crm/", "/crm/42", "crm/\n"]
)
def test_non_canonical_resource_is_denied_resource_denied(minter, verifier, resource):
    """Resources with empty, '.' or '..' segments never match, not even '**'."""
    token = minter.mint(**{**SCOPE, "resources": ["**"]})
    assert check(verifier, token, resource=resource).reason is Reason.RESOURCE_DENIED


def test_every_resources_caveat_must_match(token, verifier):
    """After narrowing, a resource must match the original and the added globs."""
    child = agentcaps.attenuate(token, resources=["crm/contacts/*", "mail/*"])
    assert check(verifier, child, resource="crm/contacts/1").allowed
    assert check(verifier, child, resource="mail/1").reason is Reason.RESOURCE_DENIED


def test_action_not_listed_is_denied_action_denied(token, verifier):
    """An action the token does not list is action_denied."""
    assert check(verifier, token, action="delete").reason is Reason.ACTION_DENIED
    assert check(verifier, token, action="READ").reason is Reason.ACTION_DENIED


def test_declared_purpose_not_listed_is_denied_purpose_denied(token, verifier):
    """A declared purpose must be one the token lists."""
    assert check(verifier, token, purpose="sync").allowed
    assert check(verifier, token, purpose="marketing").reason is Reason.PURPOSE_DENIED


def test_no_declared_purpose_is_allowed_while_common_purposes_remain(token, verifier):
    """With no purpose declared, the token passes if its purpose caveats share a purpose."""
    assert check(verifier, token, purpose=None).allowed
    child = agentcaps.attenuate(token, purposes=["audit", "billing"])
    assert check(verifier, child, purpose=None).allowed
    assert check(verifier, child).purposes == ("audit",)


def test_no_declared_purpose_with_empty_common_purposes_is_denied_purpose_denied(token, verifier):
    """Disjoint purpose caveats leave no purpose, so even an undeclared request is denied."""
    child = agentcaps.attenuate(agentcaps.attenuate(token, purposes=["sync"]), purposes=["audit"])
    assert check(verifier, child, purpose=None).reason is Reason.PURPOSE_DENIED
    assert check(verifier, child, purpose="sync").reason is Reason.PURPOSE_DENIED
    assert check(verifier, child, purpose="audit").reason is Reason.PURPOSE_DENIED


def test_audience_not_listed_is_denied_audience_denied(minter, memory_stores, clock):
    """A token with an audience verifies only at a verifier of that audience."""
    token = minter.mint(**SCOPE, audience=["crm-gateway"])
    assert check(memory_stores.verifier(clock=clock, audience="crm-gateway"), token).allowed
    other = memory_stores.verifier(clock=clock, audience="mail-gateway")
    assert check(other, token).reason is Reason.AUDIENCE_DENIED
    unnamed = memory_stores.verifier(clock=clock)
    assert check(unnamed, token).reason is Reason.AUDIENCE_DENIED


def test_token_without_audience_verifies_at_any_audience(token, memory_stores, clock):
    """No audience caveat means no audience restriction."""
    assert check(memory_stores.verifier(clock=clock, audience="anything"), token).allowed


def test_actor_other_than_the_last_holder_is_denied_actor_mismatch(token, verifier):
    """If the request names an actor it must be the token's last holder."""
    assert check(verifier, token, actor="planner").allowed
    assert check(verifier, token, actor="mallory").reason is Reason.ACTOR_MISMATCH
    child = agentcaps.attenuate(token, delegate_to="fetcher")
    assert check(verifier, child, actor="fetcher").allowed
    assert check(verifier, child, actor=None).allowed
    assert check(verifier, child, actor="planner").reason is Reason.ACTOR_MISMATCH


def test_second_different_principal_is_denied_principal_conflict(token, verifier):
    """A holder appending another principal makes the token conflict."""
    conflicted = append(token, cv.Principal("acme", "mallory").encode())
    assert check(verifier, conflicted).reason is Reason.PRINCIPAL_CONFLICT


def test_second_agent_caveat_is_denied_principal_conflict(token, verifier):
    """A holder cannot rename the first holder with a second agent caveat."""
    renamed = append(token, cv.Agent("mallory").encode())
    assert check(verifier, renamed).reason is Reason.PRINCIPAL_CONFLICT


def test_delegation_after_max_delegations_zero_is_denied_delegation_limit(token, verifier):
    """Delegating past a max_delegations caveat is delegation_limit."""
    limited = agentcaps.attenuate(token, max_delegations=0)
    assert check(verifier, limited).allowed
    over = agentcaps.attenuate(limited, delegate_to="fetcher")
    assert check(verifier, over).reason is Reason.DELEGATION_LIMIT


def test_max_delegations_allows_up_to_its_limit(token, verifier):
    """A limit of 2 allows two further delegations and denies the third."""
    chain = agentcaps.attenuate(token, max_delegations=2)
    for agent in ("b", "c"):
        chain = agentcaps.attenuate(chain, delegate_to=agent)
        assert check(verifier, chain).allowed
    assert (
        check(verifier, agentcaps.attenuate(chain, delegate_to="d")).reason
        is Reason.DELEGATION_LIMIT
    )


@pytest.mark.parametrize(
    "cid",
    [
        b"time < 2030",
        b"account = 3735928559",
        b"ac2:kgaRpHJlYWQ",
        cv.Actions(("read",)).encode().replace(b"ac1:", b"AC1:"),
        b"ac1:" + wire.b64encode(wire.packb([11, "reserved"])).encode(),
        b"ac1:" + wire.b64encode(wire.packb([6, "read"])).encode(),  # wrong shape
        b"\xff\xfe\x00",
    ],
)
def test_caveat_the_verifier_does_not_understand_is_denied_unknown_caveat(token, verifier, cid):
    """Unknown text, unknown codes and wrong shapes fail closed with unknown_caveat."""
    assert check(verifier, append(token, cid)).reason is Reason.UNKNOWN_CAVEAT


def test_third_party_caveat_is_denied_discharge_missing(token, verifier):
    """A third-party caveat needs a discharge, which this verifier never has."""
    extended = append_third_party(token, b"third-party-cid", b"v" * 72, b"https://auth.example/")
    assert check(verifier, extended).reason is Reason.DISCHARGE_MISSING


def test_revoked_token_id_is_denied_revoked(memory_stores, minted, verifier, clock):
    """Revoking a token id denies it and every attenuation of it."""
    child = agentcaps.attenuate(minted.token, delegate_to="fetcher")
    memory_stores.revocations.revoke(
        Revocation(RevocationKind.TOKEN, (minted.token_id,), int(clock()))
    )
    assert check(verifier, minted.token).reason is Reason.REVOKED
    assert check(verifier, child).reason is Reason.REVOKED


def test_revoked_delegation_is_denied_revoked_below_it_only(memory_stores, token, verifier, clock):
    """Revoking a delegation id denies that branch and its descendants, not siblings or parents."""
    branch = agentcaps.attenuate(token, delegate_to="fetcher")
    below = agentcaps.attenuate(branch, delegate_to="tool")
    sibling = agentcaps.attenuate(token, delegate_to="fetcher")
    (delegation_id,) = check(verifier, branch).delegation_ids
    memory_stores.revocations.revoke(
        Revocation(RevocationKind.DELEGATION, (delegation_id,), int(clock()))
    )
    assert check(verifier, branch).reason is Reason.REVOKED
    assert check(verifier, below).reason is Reason.REVOKED
    assert check(verifier, sibling).allowed
    assert check(verifier, token).allowed


def test_revoked_user_is_denied_revoked_for_tokens_issued_until_then(
    memory_stores, minter, token, verifier, clock
):
    """A user revocation denies tokens issued at or before it; later tokens verify."""
    memory_stores.revocations.revoke(
        Revocation(RevocationKind.USER, ("acme", "alice"), int(clock()))
    )
    assert check(verifier, token).reason is Reason.REVOKED
    clock.advance(1)
    assert check(verifier, minter.mint(**SCOPE)).allowed
    assert check(verifier, minter.mint(**{**SCOPE, "user": "bob"})).allowed


def test_revoked_agent_is_denied_revoked_wherever_it_holds_the_token(
    memory_stores, token, verifier, clock
):
    """An agent revocation denies tokens naming it as any holder."""
    child = agentcaps.attenuate(token, delegate_to="fetcher")
    memory_stores.revocations.revoke(Revocation(RevocationKind.AGENT, ("fetcher",), int(clock())))
    assert check(verifier, child).reason is Reason.REVOKED
    assert check(verifier, token).allowed


def test_revoked_customer_is_denied_revoked(memory_stores, token, verifier, clock):
    """A customer revocation denies the customer's tokens issued until then."""
    memory_stores.revocations.revoke(Revocation(RevocationKind.CUSTOMER, ("acme",), int(clock())))
    assert check(verifier, token).reason is Reason.REVOKED


def test_unreachable_revocation_store_is_denied_revocation_unavailable(memory_stores, token, clock):
    """When revocation state cannot be known the verifier fails closed."""
    verifier = agentcaps.Verifier(memory_stores.keys, UnreachableRevocations(), clock=clock)
    decision = check(verifier, token)
    assert decision.allowed is False
    assert decision.reason is Reason.REVOCATION_UNAVAILABLE


def test_unreachable_key_store_is_denied_revocation_unavailable(token, clock):
    """When the key store cannot answer the verifier fails closed, too."""
    verifier = agentcaps.Verifier(UnreachableKeys(), UnreachableRevocations(), clock=clock)
    assert check(verifier, token).reason is Reason.REVOCATION_UNAVAILABLE


# --- leeway and the lifetime cap -------------------------------------------------


def test_leeway_extends_expiry_by_at_most_its_seconds(token, memory_stores, clock):
    """With 30 s leeway a token expiring at T verifies until T+29 and is expired at T+30."""
    verifier = memory_stores.verifier(clock=clock, leeway=30)
    clock.advance(600 + 29)
    assert check(verifier, token).allowed
    clock.advance(1)
    assert check(verifier, token).reason is Reason.EXPIRED


def test_leeway_admits_not_before_early_by_at_most_its_seconds(minter, memory_stores, clock):
    """With 30 s leeway a token valid from T verifies from T-30 on."""
    token = minter.mint(**SCOPE, not_before=NOW + 100)
    verifier = memory_stores.verifier(clock=clock, leeway=30)
    clock.advance(69)
    assert check(verifier, token).reason is Reason.NOT_YET_VALID
    clock.advance(1)
    assert check(verifier, token).allowed


def test_default_leeway_is_zero(token, clock, memory_stores):
    """Without leeway a token is expired exactly at its expiry second."""
    verifier = agentcaps.Verifier(memory_stores.keys, memory_stores.revocations, clock=clock)
    clock.advance(600)
    assert check(verifier, token).reason is Reason.EXPIRED


def test_negative_leeway_is_refused(memory_stores):
    """Leeway is a tolerance, never a tightening."""
    with pytest.raises(ValueError):
        agentcaps.Verifier(memory_stores.keys, memory_stores.revocations, leeway=-1)


def test_max_lifetime_caps_a_token_whatever_its_expiry(memory_stores, verifier, clock):
    """No token verifies 30 days (the default cap) after issue, even with a later expiry."""
    key = memory_stores.keys.signing_key("acme")
    forever = forge(key, scope_caveats(expires_at=NOW + 10 * 365 * 86400))
    clock.advance(30 * 86400 - 1)
    assert check(verifier, forever).allowed
    clock.advance(1)
    assert check(verifier, forever).reason is Reason.EXPIRED


def test_max_lifetime_is_configurable(token, memory_stores, clock):
    """A verifier with a 5-minute cap expires a 10-minute token after 5 minutes."""
    verifier = memory_stores.verifier(clock=clock, max_lifetime=300)
    clock.advance(299)
    assert check(verifier, token).allowed
    clock.advance(1)
    assert check(verifier, token).reason is Reason.EXPIRED


# --- the Decision --------------------------------------------------------------


def test_decision_carries_the_provenance(memory_stores, minted, verifier):
    """Ids are lowercase hex; chain, customer, user, purposes and times are reported."""
    child = agentcaps.attenuate(minted.token, delegate_to="fetcher", purposes=["sync", "billing"])
    grandchild = agentcaps.attenuate(child, delegate_to="tool", ttl=60, clock=lambda: NOW)
    decision = check(verifier, grandchild)
    assert decision.allowed
    assert decision.token_id == minted.token_id
    assert HEX32.fullmatch(decision.token_id)
    assert decision.key_id == minted.key_id
    assert decision.customer == "acme"
    assert decision.user == "alice"
    assert decision.chain == ("planner", "fetcher", "tool")
    assert decision.agent == "tool"
    assert len(decision.delegation_ids) == 2
    assert all(HEX32.fullmatch(d) for d in decision.delegation_ids)
    assert list(decision.delegation_ids) == agentcaps.inspect(grandchild)["delegation_ids"]
    assert decision.purposes == ("sync",)
    assert decision.expires_at == NOW + 60
    assert decision.issued_at == NOW
    assert decision.to_dict()["chain"] == ["planner", "fetcher", "tool"]


def test_decision_purposes_are_sorted(token, verifier):
    """The purposes a Decision reports are in a stable, sorted order."""
    assert check(verifier, token).purposes == ("audit", "sync")


def test_denied_authentic_token_still_reports_its_provenance(token, verifier):
    """A caveat deny after a good signature reports who asked, for the audit trail."""
    decision = check(verifier, token, resource="hr/salaries")
    assert decision.reason is Reason.RESOURCE_DENIED
    assert (decision.customer, decision.user, decision.chain) == ("acme", "alice", ("planner",))


def test_verify_refuses_a_request_of_the_wrong_types(token, verifier):
    """The request (not the token) is the caller's code: wrong types are a TypeError."""
    with pytest.raises(TypeError):
        verifier.verify(token, resource=None, action="read")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verifier.verify(token, resource="crm/1", action="read", purpose=5)  # type: ignore[arg-type]


def test_authenticate_accepts_an_authentic_token_whatever_it_allows(token, verifier, clock):
    """authenticate() checks only the signature: an expired but authentic token passes, with its identity."""
    clock.advance(10_000)
    assert check(verifier, token).reason is Reason.EXPIRED
    decision = verifier.authenticate(token)
    assert decision.allowed and decision.reason is Reason.OK
    assert decision.customer == "acme" and decision.chain


def test_authenticate_in_force_also_checks_the_clock_and_the_key(
    token, minted, minter, memory_stores, verifier, clock
):
    """authenticate(in_force=True): expired, not yet valid or on a revoked key is not in force."""
    assert verifier.authenticate(token, in_force=True).reason is Reason.OK
    clock.advance(10_000)
    assert verifier.authenticate(token, in_force=True).reason is Reason.EXPIRED
    fresh = minter.mint(**SCOPE, not_before=int(clock()) + 600)
    assert verifier.authenticate(fresh, in_force=True).reason is Reason.NOT_YET_VALID
    clock.advance(600)
    memory_stores.keys.revoke(minted.key_id)
    assert verifier.authenticate(fresh, in_force=True).reason is Reason.KEY_REVOKED
    assert verifier.authenticate(fresh).reason is Reason.OK


def test_authenticate_denies_a_forged_token_bad_signature(token, verifier):
    """authenticate() refuses a token whose signature chain does not hold."""
    decision = verifier.authenticate(flip_last_signature_bit(token))
    assert decision.reason is Reason.BAD_SIGNATURE
    assert_no_identity(decision)


def test_a_token_of_many_patterns_is_matched_only_when_judged_and_never_cached(
    memory_stores, clock, monkeypatch
):
    """Any holder can append caveats of long patterns: nothing is built for them before they are judged.

    Expired, their matchers are never built; in force, built to be matched;
    either way, neither the token nor its long caveats stay in the
    verifier's caches.
    """
    from agentcaps.verify import MAX_CACHED_TOKEN_CHARS

    built = []
    real = cv.glob_matcher
    monkeypatch.setattr(cv, "glob_matcher", lambda glob: built.append(glob) or real(glob))
    monkeypatch.setattr(cv, "DECODED", {})
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    for n in range(5):  # 1 + 5 * 12 patterns: within the 64 a token may carry
        long = [f"**/{n}{i:02x}/*/{'x' * 40}/**/y" for i in range(11)]
        token = agentcaps.attenuate(token, resources=["crm/**", *long], clock=clock)
    assert len(token) > MAX_CACHED_TOKEN_CHARS
    verifier = memory_stores.verifier(clock=clock, signature_cache_size=64)
    clock.advance(3600)
    assert check(verifier, token).reason is Reason.EXPIRED
    assert built == []
    clock.advance(-3600)
    assert check(verifier, token).allowed
    assert len(built) == 1 + 5 * 12
    assert all(len(cid) <= cv.DECODED_MAX_BYTES for cid in cv.DECODED)
    assert check(verifier, token).allowed
    assert len(built) == 1 + 2 * 5 * 12  # decoded again: not kept, nor are its long caveats


def test_too_many_resource_patterns_in_all_are_too_large_and_never_matched(
    token, verifier, clock, monkeypatch
):
    """A bound on the work appended patterns can cause: attenuate refuses, verifiers deny too_large."""
    built = []
    real = cv.glob_matcher
    monkeypatch.setattr(cv, "glob_matcher", lambda glob: built.append(glob) or real(glob))
    limit = cv.MAX_RESOURCE_PATTERNS
    narrowed, held = token, 1  # 1 pattern as minted
    while held < limit:  # each caveat must allow crm/7 on its own
        step = ["crm/7/**", *(f"crm/{held + i}/x/**" for i in range(min(50, limit - held) - 1))]
        narrowed = agentcaps.attenuate(narrowed, resources=step, clock=clock)
        held += len(step)
    assert check(verifier, narrowed, resource="crm/7/x").allowed  # exactly the limit
    with pytest.raises(InvalidArgument, match=f"at most {limit} resource patterns") as refused:
        agentcaps.attenuate(narrowed, resources=["crm/7/**"], clock=clock)
    assert "narrow it with actions, purposes or ttl" in str(refused.value)
    assert agentcaps.attenuate(
        narrowed, actions=["read"], clock=clock
    )  # other narrowing still works
    # Written by hand, as another implementation could.
    built.clear()
    over = append(narrowed, cv.Resources(("crm/7/**",)).encode())
    assert check(verifier, over, resource="crm/7/x").reason is Reason.TOO_LARGE
    assert built == []


def test_more_than_64_single_stars_between_double_stars_are_too_large(token, verifier, clock):
    """Each run with `*` between two `**` may cost a regex compile: a token holds a bounded number.

    Patterns with at most one `**` compile nothing, and are not counted.
    """
    plain = [f"crm/{i}/*/*/*/**" for i in range(30)]  # 90 single stars, one ** each
    narrowed = agentcaps.attenuate(token, resources=[*plain, "crm/**"], clock=clock)
    many = [f"crm/{i}/**/*/*/*/**" for i in range(16)]  # 48 counted
    narrowed = agentcaps.attenuate(narrowed, resources=[*many, "crm/**"], clock=clock)
    assert check(verifier, narrowed, resource="crm/7/a/b/c").allowed
    more = [f"crm/{i}/**/*/*/*/*/**" for i in range(5)]  # 20 more: 68
    with pytest.raises(InvalidArgument, match="at most 64"):
        agentcaps.attenuate(narrowed, resources=more, clock=clock)
    over = append(narrowed, cv.Resources(tuple(more)).encode())
    assert check(verifier, over, resource="crm/3/a/b/c/d").reason is Reason.TOO_LARGE
    with pytest.raises(InvalidArgument, match="at most 64"):  # nor may a mint
        agentcaps.connect().minter().mint(**{**SCOPE, "resources": [*many, *more]})
