"""Differential tests against pymacaroons, the reference implementation of the macaroon format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import Macaroon
from pymacaroons import Verifier as PyVerifier
from pymacaroons.exceptions import MacaroonInvalidSignatureException
from pymacaroons.macaroon import MACAROON_V2

import agentcaps
from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.decision import Reason
from tests.conftest import SCOPE

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100)


@pytest.fixture
def minted(memory_stores, clock):
    return memory_stores.minter(clock=clock).issue(**SCOPE)


@pytest.fixture
def root_key(memory_stores, minted):
    return memory_stores.keys.get(minted.key_id).secret


def to_pymacaroons(token: str) -> Macaroon:
    """Strip the `agc_` prefix and let pymacaroons read the rest."""
    assert token.startswith("agc_")
    return Macaroon.deserialize(token[len("agc_") :])


def from_pymacaroons(mac: Macaroon) -> str:
    return "agc_" + mac.serialize()


def py_verifies(mac: Macaroon, key: bytes) -> bool:
    verifier = PyVerifier()
    verifier.satisfy_general(lambda caveat: True)
    return bool(verifier.verify(mac, key))


def check(verifier, token, action="read"):
    return verifier.verify(token, resource="crm/contacts/42", action=action)


# --- our tokens in pymacaroons -------------------------------------------------------


def test_minted_token_parses_in_pymacaroons_after_stripping_the_prefix(minted):
    """pymacaroons reads our identifier, caveats and signature exactly."""
    mac = to_pymacaroons(minted.token)
    raw = wire.decode_token(minted.token)
    assert mac.identifier_bytes == raw.identifier
    assert tuple(c.caveat_id_bytes for c in mac.caveats) == raw.cids
    assert mac.signature == raw.signature.hex()
    assert all(c.first_party() for c in mac.caveats)


def test_minted_token_verifies_in_pymacaroons_with_the_root_key(minted, root_key):
    """pymacaroons accepts our signature chain given the root key."""
    assert py_verifies(to_pymacaroons(minted.token), root_key)


def test_attenuated_token_verifies_in_pymacaroons_with_the_root_key(minted, root_key):
    """Our offline attenuation produces a chain pymacaroons accepts."""
    child = agentcaps.attenuate(minted.token, actions=["read"], delegate_to="fetcher", ttl=60)
    assert py_verifies(to_pymacaroons(child), root_key)


def test_pymacaroons_rejects_our_token_under_another_key(minted):
    """The differential check is real: a wrong root key fails in pymacaroons too."""
    with pytest.raises(MacaroonInvalidSignatureException):
        py_verifies(to_pymacaroons(minted.token), b"\x00" * 32)


# --- pymacaroons' attenuations with us ---------------------------------------------


def test_token_pymacaroons_attenuates_with_an_ac1_caveat_verifies_with_us(minted, verifier):
    """Another library can narrow our tokens: an `ac1:` caveat added by pymacaroons is honoured."""
    mac = to_pymacaroons(minted.token)
    mac.add_first_party_caveat(wire.encode_caveat(cv.Actions.code, ["read"]).decode("ascii"))
    token = from_pymacaroons(mac)
    assert check(verifier, token, action="read").reason is Reason.OK
    assert check(verifier, token, action="write").reason is Reason.ACTION_DENIED


def test_token_pymacaroons_attenuates_with_other_text_is_denied_unknown_caveat(minted, verifier):
    """A plain-text caveat from another library is not understood and fails closed."""
    mac = to_pymacaroons(minted.token)
    mac.add_first_party_caveat("time < 2030-01-01T00:00")
    assert check(verifier, from_pymacaroons(mac)).reason is Reason.UNKNOWN_CAVEAT


# --- differential properties ------------------------------------------------------

identifiers = st.binary(min_size=1, max_size=200)
caveat_ids = st.lists(st.binary(min_size=1, max_size=200), max_size=8)
text_caveats = st.lists(st.text(min_size=1, max_size=60), max_size=8)
locations = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
)


@DETERMINISTIC
@given(key=st.binary(min_size=1, max_size=64), identifier=identifiers, texts=text_caveats)
def test_our_signature_equals_pymacaroons_for_random_identifiers_and_caveats(
    key, identifier, texts
):
    """Our chain over any identifier and UTF-8 caveats equals pymacaroons' signature."""
    mac = Macaroon(location="", identifier=identifier, key=key, version=MACAROON_V2)
    for text in texts:
        mac.add_first_party_caveat(text)
    ours = signature.chain(signature.derive_key(key), identifier, [t.encode() for t in texts])
    assert ours.hex() == mac.signature


@DETERMINISTIC
@given(identifier=identifiers, cids=caveat_ids, sig=st.binary(min_size=32, max_size=32))
def test_pymacaroons_reads_our_v2_binary(identifier, cids, sig):
    """Any macaroon we encode, pymacaroons decodes to the same fields."""
    raw = wire.RawMacaroon(identifier, tuple(cids), sig)
    mac = Macaroon.deserialize(wire.b64encode(wire.encode_macaroon(raw)))
    assert mac.identifier_bytes == identifier
    assert [c.caveat_id_bytes for c in mac.caveats] == cids
    assert mac.signature == sig.hex()


@DETERMINISTIC
@given(
    key=st.binary(min_size=1, max_size=64),
    location=locations,
    identifier=identifiers,
    texts=text_caveats,
)
def test_we_read_pymacaroons_v2_binary_byte_for_byte(key, location, identifier, texts):
    """What pymacaroons serializes (with a location) we decode and re-encode identically."""
    mac = Macaroon(location=location, identifier=identifier, key=key, version=MACAROON_V2)
    for text in texts:
        mac.add_first_party_caveat(text)
    cids = [t.encode() for t in texts]
    serialized = mac.serialize()
    raw = wire.decode_macaroon(wire.b64decode(serialized))
    assert raw == wire.RawMacaroon(
        identifier, tuple(cids), bytes.fromhex(mac.signature), location.encode()
    )
    assert wire.b64encode(wire.encode_macaroon(raw)) == serialized
