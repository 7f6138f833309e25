"""Minter.mint/issue and offline attenuate(): argument checks, caveats written, narrowing only."""

from __future__ import annotations

import re

import pytest

import agentcaps
from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.claims import decode_unverified
from agentcaps.errors import InvalidArgument, MalformedToken, TokenTooLarge
from agentcaps.keys import KeyState, RootKey
from tests.conftest import SCOPE

NOW = 1_800_000_000


@pytest.fixture
def token(minter):
    return minter.mint(**SCOPE)


def allows(verifier, token, resource="crm/contacts/42", action="read", purpose=None, actor=None):
    return verifier.verify(token, resource=resource, action=action, purpose=purpose, actor=actor)


def cids_of(token: str) -> tuple[bytes, ...]:
    return wire.decode_token(token).cids


# --- mint ----------------------------------------------------------------------


def test_minted_token_verifies(token, verifier):
    """A freshly minted token allows a request inside its scope."""
    decision = allows(verifier, token)
    assert decision.allowed
    assert decision.reason == "ok"


def test_minted_token_carries_one_principal_one_agent_scope_and_expiry(token):
    """mint writes principal, agent, resources, actions, purposes and expiry, once each."""
    caveats = decode_unverified(token).caveats
    assert caveats == (
        cv.Principal("acme", "alice"),
        cv.Agent("planner"),
        cv.Resources(("crm/**",)),
        cv.Actions(("read", "write")),
        cv.Purposes(("sync",)),
        cv.Expires(NOW + 600),
    )


def test_mint_adds_audience_not_before_and_max_delegations_when_given(minter):
    """Optional mint arguments each add their caveat."""
    token = minter.mint(**SCOPE, audience=["crm-gateway"], not_before=NOW + 5, max_delegations=2)
    caveats = decode_unverified(token).caveats
    assert cv.Audience(("crm-gateway",)) in caveats
    assert cv.NotBefore(NOW + 5) in caveats
    assert cv.MaxDelegations(2) in caveats


def test_issue_reports_token_id_key_id_and_times(memory_stores, minter):
    """issue returns the token with its id (lowercase hex), key id, issue and expiry times."""
    minted = minter.issue(**SCOPE)
    ident = wire.decode_identifier(wire.decode_token(minted.token).identifier)
    assert re.fullmatch(r"[0-9a-f]{32}", minted.token_id)
    assert minted.token_id == ident.tid.hex()
    assert minted.key_id == ident.kid
    assert minted.issued_at == ident.iat == NOW
    assert minted.expires_at == NOW + 600
    assert str(minted) == minted.token
    assert minted.to_dict()["token_id"] == minted.token_id


def test_each_mint_has_a_fresh_token_id(minter):
    """Two tokens minted with the same arguments have different ids."""
    first, second = minter.issue(**SCOPE), minter.issue(**SCOPE)
    assert first.token_id != second.token_id
    assert first.token != second.token


def test_mint_signs_with_the_customers_own_active_key(memory_stores, minter):
    """Each customer's tokens are signed by that customer's active root key."""
    acme = minter.issue(**SCOPE)
    globex = minter.issue(**{**SCOPE, "customer": "globex"})
    assert acme.key_id != globex.key_id
    assert memory_stores.keys.get(acme.key_id).customer == "acme"
    assert memory_stores.keys.get(globex.key_id).customer == "globex"
    assert memory_stores.keys.get(acme.key_id).state is KeyState.ACTIVE


def test_minted_signature_is_the_libmacaroons_chain_over_the_root_key(memory_stores, minter):
    """The signature is HMAC(derive(root), identifier) chained over every caveat id."""
    minted = minter.issue(**SCOPE)
    raw = wire.decode_token(minted.token)
    secret = memory_stores.keys.get(minted.key_id).secret
    assert raw.signature == signature.chain(signature.derive_key(secret), raw.identifier, raw.cids)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("customer", ""),
        ("customer", " acme"),
        ("customer", None),
        ("user", "al\nice"),
        ("user", 7),
        ("agent", ""),
        ("agent", "x" * 257),
        ("resources", "crm/**"),
        ("resources", []),
        ("resources", ["crm//x"]),
        ("resources", ["crm/a*"]),
        ("resources", ["../etc"]),
        ("resources", None),
        ("actions", "read"),
        ("actions", []),
        ("actions", [""]),
        ("actions", None),
        ("purposes", []),
        ("purposes", ["sync", 5]),
        ("purposes", None),
        ("ttl", 0),
        ("ttl", -1),
        ("ttl", 1.5),
        ("ttl", "600"),
        ("ttl", True),
        ("ttl", None),
        ("audience", "gw"),
        ("audience", []),
        ("max_delegations", -1),
        ("max_delegations", 65),
        ("max_delegations", True),
        ("not_before", -1),
        ("not_before", 1.5),
    ],
)
def test_mint_rejects_invalid_arguments(minter, name, value):
    """A value that cannot go into a token is refused with InvalidArgument."""
    with pytest.raises(InvalidArgument):
        minter.mint(**{**SCOPE, name: value})


def test_mint_refuses_ttl_over_the_minters_max_ttl(memory_stores, clock):
    """ttl is capped at mint: the deployment's max_ttl (default 3600) or the one given."""
    memory_stores.minter(clock=clock).mint(**{**SCOPE, "ttl": 3600})
    with pytest.raises(InvalidArgument):
        memory_stores.minter(clock=clock).mint(**{**SCOPE, "ttl": 3601})
    short = memory_stores.minter(clock=clock, max_ttl=60)
    short.mint(**{**SCOPE, "ttl": 60})
    with pytest.raises(InvalidArgument):
        short.mint(**{**SCOPE, "ttl": 61})


# --- attenuate: what each option does ----------------------------------------------


def test_attenuate_resources_narrows_the_resources(token, verifier):
    """After narrowing to crm/contacts/*, other crm resources are denied."""
    child = agentcaps.attenuate(token, resources=["crm/contacts/*"])
    assert allows(verifier, child, resource="crm/contacts/42").allowed
    assert allows(verifier, child, resource="crm/deals/7").reason == "resource_denied"
    assert allows(verifier, token, resource="crm/deals/7").allowed


def test_resource_patterns_are_not_held_to_the_names_256_characters(minter, token, verifier):
    """A long pattern is minted, attenuated and decoded: the limits are the pattern's and the caveat's."""
    long = "crm/contacts/" + "x" * 687  # 700 characters; a caveat is at most 1024 bytes
    minted = minter.mint(**{**SCOPE, "resources": [long]})
    assert allows(verifier, minted, resource=long).allowed
    child = agentcaps.attenuate(token, resources=[long])
    assert allows(verifier, child, resource=long).allowed
    assert allows(verifier, child, resource="crm/contacts/42").reason == "resource_denied"
    assert cv.decode(cv.Resources((long,)).encode()) == cv.Resources((long,))
    with pytest.raises(InvalidArgument, match="at most 1024 bytes"):
        agentcaps.attenuate(token, resources=[long + "x" * 300])


def test_attenuation_cannot_widen_resources(token, verifier):
    """Adding a broader resources caveat does not grant what the token lacked."""
    child = agentcaps.attenuate(token, resources=["**"])
    assert allows(verifier, child, resource="hr/salaries").reason == "resource_denied"


def test_attenuate_actions_narrows_the_actions(token, verifier):
    """After narrowing to read, write is denied."""
    child = agentcaps.attenuate(token, actions=["read"])
    assert allows(verifier, child, action="read").allowed
    assert allows(verifier, child, action="write").reason == "action_denied"


def test_attenuation_cannot_widen_actions(token, verifier):
    """Listing an action the token never had does not grant it."""
    child = agentcaps.attenuate(token, actions=["read", "delete"])
    assert allows(verifier, child, action="delete").reason == "action_denied"
    assert allows(verifier, child, action="read").allowed


def test_attenuate_purposes_narrows_the_purposes(minter, verifier):
    """After narrowing to audit, a declared sync purpose is denied."""
    token = minter.mint(**{**SCOPE, "purposes": ["sync", "audit"]})
    child = agentcaps.attenuate(token, purposes=["audit"])
    assert allows(verifier, child, purpose="audit").allowed
    assert allows(verifier, child, purpose="sync").reason == "purpose_denied"


def test_attenuation_cannot_widen_purposes(token, verifier):
    """Listing a purpose the token never had grants nothing, declared or not."""
    child = agentcaps.attenuate(token, purposes=["billing"])
    assert allows(verifier, child, purpose="billing").reason == "purpose_denied"
    assert allows(verifier, child, purpose=None).reason == "purpose_denied"


def test_attenuate_ttl_shortens_the_life(token, verifier, clock):
    """ttl counts from the attenuating clock and caps the expiry."""
    child = agentcaps.attenuate(token, ttl=60, clock=clock)
    assert allows(verifier, child).expires_at == NOW + 60
    clock.advance(59)
    assert allows(verifier, child).allowed
    clock.advance(1)
    assert allows(verifier, child).reason == "expired"
    assert allows(verifier, token).allowed


def test_attenuation_cannot_extend_the_life(token, verifier, clock):
    """A ttl longer than what is left keeps the original expiry."""
    child = agentcaps.attenuate(token, ttl=3000, clock=clock)
    assert allows(verifier, child).expires_at == NOW + 600
    clock.advance(600)
    assert allows(verifier, child).reason == "expired"


def test_attenuate_expires_at_sets_an_absolute_expiry(token, verifier, clock):
    """expires_at is a unix time; the earliest expiry wins."""
    child = agentcaps.attenuate(token, expires_at=NOW + 10)
    assert allows(verifier, child).expires_at == NOW + 10
    clock.advance(10)
    assert allows(verifier, child).reason == "expired"


def test_attenuate_refuses_ttl_and_expires_at_together(token, clock):
    """ttl and expires_at are alternatives, never both."""
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(token, ttl=60, expires_at=NOW + 60, clock=clock)


def test_attenuate_refuses_nothing_to_add(token):
    """An attenuation without any option would be a no-op and is refused."""
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(token)


def test_attenuate_delegate_to_extends_the_chain_under_a_fresh_delegation_id(token, verifier):
    """Each delegation names the new holder and gets its own random 16-byte id."""
    first = agentcaps.attenuate(token, delegate_to="fetcher")
    second = agentcaps.attenuate(token, delegate_to="fetcher")
    d1, d2 = allows(verifier, first), allows(verifier, second)
    assert d1.allowed and d2.allowed
    assert d1.chain == d2.chain == ("planner", "fetcher")
    assert d1.delegation_ids != d2.delegation_ids
    assert all(re.fullmatch(r"[0-9a-f]{32}", d) for d in d1.delegation_ids + d2.delegation_ids)


def test_attenuate_audience_restricts_the_verifiers(token, memory_stores, clock):
    """An audience caveat limits which verifiers accept the token."""
    child = agentcaps.attenuate(token, audience=["crm-gateway"])
    crm = memory_stores.verifier(clock=clock, audience="crm-gateway")
    mail = memory_stores.verifier(clock=clock, audience="mail-gateway")
    assert allows(crm, child).allowed
    assert allows(mail, child).reason == "audience_denied"


def test_attenuate_max_delegations_counts_after_its_own_delegate_to(token, verifier):
    """delegate_to='b', max_delegations=0 stops at b: b may use it, not hand it on."""
    child = agentcaps.attenuate(token, delegate_to="fetcher", max_delegations=0)
    assert allows(verifier, child, actor="fetcher").allowed
    grandchild = agentcaps.attenuate(child, delegate_to="tool")
    assert allows(verifier, grandchild).reason == "delegation_limit"


def test_attenuate_appends_caveats_and_keeps_identifier(token):
    """Attenuation keeps the identifier and every existing caveat, in order, and appends."""
    child = agentcaps.attenuate(token, actions=["read"], resources=["crm/contacts/*"])
    parent_raw, child_raw = wire.decode_token(token), wire.decode_token(child)
    assert child_raw.identifier == parent_raw.identifier
    assert child_raw.cids[: len(parent_raw.cids)] == parent_raw.cids
    assert decode_unverified(child).caveats[len(parent_raw.cids) :] == (
        cv.Resources(("crm/contacts/*",)),
        cv.Actions(("read",)),
    )


def test_attenuate_needs_no_key():
    """attenuate extends the HMAC chain from the token's own signature; no key store is involved."""
    secret = b"\x42" * 32
    key = RootKey("kunknown", "acme", KeyState.ACTIVE, 0, secret)
    identifier = wire.encode_identifier(wire.Identifier(key.kid, bytes(16), NOW))
    cids = (cv.Principal("acme", "alice").encode(), cv.Agent("planner").encode())
    token = wire.encode_token(
        wire.RawMacaroon(identifier, cids, signature.chain(key.derived, identifier, cids))
    )
    child = agentcaps.attenuate(token, actions=["read"], delegate_to="fetcher")
    raw = wire.decode_token(child)
    assert raw.signature == signature.chain(key.derived, raw.identifier, raw.cids)


@pytest.mark.parametrize(
    "options",
    [
        {"resources": "crm/*"},
        {"resources": []},
        {"resources": ["crm//x"]},
        {"resources": ["crm/*x"]},
        {"actions": "read"},
        {"actions": [""]},
        {"purposes": []},
        {"purposes": [None]},
        {"audience": "gw"},
        {"audience": []},
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": 1.5},
        {"ttl": True},
        {"expires_at": -1},
        {"expires_at": 2**63},
        {"expires_at": 2**64},
        {"ttl": 2**64},
        {"expires_at": 1.5},
        {"expires_at": "tomorrow"},
        {"delegate_to": ""},
        {"delegate_to": "b\n"},
        {"delegate_to": ["b"]},
        {"max_delegations": -1},
        {"max_delegations": 65},
        {"max_delegations": 1.0},
    ],
)
def test_attenuate_rejects_invalid_options(token, clock, options):
    """An option that cannot go into a token is refused with InvalidArgument."""
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(token, clock=clock, **options)


def test_attenuate_refuses_a_result_over_the_caveat_limit(token):
    """A result with more caveats than the limits allow is refused, not produced."""
    count = len(cids_of(token))
    limits = wire.Limits(max_caveats=count + 1)
    agentcaps.attenuate(token, actions=["read"], limits=limits)
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(token, actions=["read"], purposes=["sync"], limits=limits)


def test_no_caveat_over_the_per_caveat_limit_is_handed_out(minter, token):
    """Mint and attenuate refuse what every verifier would deny as too large."""
    long_patterns = [f"crm/{'x' * 200}/{n}" for n in range(6)]  # one caveat of ~1.6 kB
    with pytest.raises(InvalidArgument, match="caveat is at most"):
        agentcaps.attenuate(token, resources=long_patterns)
    with pytest.raises(InvalidArgument, match="caveat is at most"):
        minter.mint(**{**SCOPE, "resources": long_patterns})


def test_attenuate_refuses_a_result_over_the_token_size_limit(token):
    """A result longer than max_token_bytes is refused, not produced."""
    limits = wire.Limits(max_token_bytes=len(token) + 20)
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(token, resources=["crm/contacts/" + "x" * 40], limits=limits)


def test_attenuate_refuses_to_go_past_sixty_four_caveats(token):
    """Chained attenuations stop at the default 64-caveat limit."""
    child = token
    for _ in range(64 - len(cids_of(token))):
        child = agentcaps.attenuate(child, actions=["read"])
    assert len(cids_of(child)) == 64
    with pytest.raises(InvalidArgument):
        agentcaps.attenuate(child, actions=["read"])


@pytest.mark.parametrize("bad", ["", "agc_", "not a token", "agc_AAAA", None, 5])
def test_attenuate_rejects_a_malformed_token(bad):
    """attenuate refuses input that is not a token."""
    with pytest.raises(MalformedToken):
        agentcaps.attenuate(bad, actions=["read"])


def test_attenuate_rejects_an_oversized_token():
    """attenuate applies the size limits before parsing."""
    with pytest.raises(TokenTooLarge):
        agentcaps.attenuate("agc_" + "A" * 20_000, actions=["read"])


def test_as_minted_tells_a_minted_token_from_a_narrowed_copy(minter):
    """Each kind once, in the minter's order: minted; anything attenuate appends (but a lone delegation limit) shows."""
    from agentcaps.claims import decode_unverified
    from agentcaps.mint import as_minted

    def caveats(token: str):
        return decode_unverified(token).caveats

    plain = minter.mint(**SCOPE)
    full = minter.mint(**SCOPE, audience=["gw"], not_before=1_800_000_000, max_delegations=2)
    assert as_minted(caveats(plain)) and as_minted(caveats(full))
    for narrowed in (
        agentcaps.attenuate(plain, resources=["crm/contacts/*"]),
        agentcaps.attenuate(plain, ttl=10),
        agentcaps.attenuate(plain, audience=["gw"]),
        agentcaps.attenuate(plain, delegate_to="fetcher"),
        agentcaps.attenuate(full, max_delegations=1),
    ):
        assert not as_minted(caveats(narrowed))
    # The one copy that cannot be told apart: a limit added to a token minted without one.
    assert as_minted(caveats(agentcaps.attenuate(plain, max_delegations=1)))


def test_as_delegated_tells_a_delegation_from_a_copy_narrowed_after_it(minter):
    """Nothing after the last delegate caveat but the limit the same attenuate call adds."""
    from agentcaps.claims import decode_unverified
    from agentcaps.mint import as_delegated

    def caveats(token: str):
        return decode_unverified(token).caveats

    plain = minter.mint(**SCOPE)
    child = agentcaps.attenuate(plain, resources=["crm/contacts/*"], delegate_to="fetcher", ttl=60)
    limited = agentcaps.attenuate(plain, delegate_to="fetcher", max_delegations=1)
    assert as_delegated(caveats(child)) and as_delegated(caveats(limited))
    assert not as_delegated(caveats(plain))
    for narrowed in (
        agentcaps.attenuate(child, resources=["crm/contacts/1"]),
        agentcaps.attenuate(limited, max_delegations=0),
        agentcaps.attenuate(limited, ttl=5),
    ):
        assert not as_delegated(caveats(narrowed))
    # As with as_minted, the one copy that cannot be told apart: a lone limit
    # added to a delegation made without one.
    assert as_delegated(caveats(agentcaps.attenuate(child, max_delegations=0)))


def test_a_mint_never_waits_longer_than_its_bound_even_if_the_clock_steps_back(memory_stores):
    """A same-second revocation, then the clock stepped back an hour mid-wait: the mint gives up within the bound."""
    from agentcaps.revocation import Revocation, RevocationKind

    moments = iter([1_800_000_000.0] + [1_799_996_400.0] * 100)
    slept: list[float] = []
    store = memory_stores.store
    store.revoke(Revocation(RevocationKind.CUSTOMER, ("acme",), 1_800_000_000))
    minter = agentcaps.Minter(
        memory_stores.keys, clock=lambda: next(moments), revocations=store, sleep=slept.append
    )
    minter.issue(**SCOPE)
    assert sum(slept) <= 2.0


def test_an_empty_customer_name_is_refused_never_read_as_the_platform(memory_stores):
    """keys.create(None) makes a platform key; "" or a padded name is a mistake, not that."""
    platform = memory_stores.keys.signing_key(None)
    for bad in ("", " acme"):
        with pytest.raises(InvalidArgument):
            memory_stores.keys.create(bad)
    assert memory_stores.keys.signing_key(None) == platform
