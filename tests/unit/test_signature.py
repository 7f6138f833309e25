"""The signature chain: libmacaroons' key derivation and HMAC-SHA256 chain, against references."""

from __future__ import annotations

import binascii
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import Macaroon
from pymacaroons.macaroon import MACAROON_V2
from pymacaroons.utils import sign_third_party_caveat

from agentcaps import signature

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)

LIBMACAROONS_KEY = b"this is the key"
LIBMACAROONS_SIGNATURES = [
    "7cdee792511c5bc6f528485805dfe9b24e785e28e2a99301f9d711c609e38ef7",
    "f54807f6dc6edf88bf0f7306b3822562a362533dbf7339ba61765da4bd259d87",
    "4be967cd1ea0c6b26baf6a4a94ee9b05b15886da0ba85e8c42a93c8d0e125efc",
]


def test_libmacaroons_identifier_signature():
    """HMAC(derive('this is the key'), 'keyid') is libmacaroons' 7cdee792…."""
    derived = signature.derive_key(LIBMACAROONS_KEY)
    assert signature.hmac_sha256(derived, b"keyid").hex() == LIBMACAROONS_SIGNATURES[0]
    assert signature.chain(derived, b"keyid", []).hex() == LIBMACAROONS_SIGNATURES[0]


def test_libmacaroons_first_caveat_signature():
    """Appending 'account = 3735928559' gives libmacaroons' f54807f6…."""
    first = bytes.fromhex(LIBMACAROONS_SIGNATURES[0])
    assert signature.extend(first, b"account = 3735928559").hex() == LIBMACAROONS_SIGNATURES[1]


def test_libmacaroons_second_caveat_signature():
    """Appending 'user = alice' gives libmacaroons' 4be967cd…, and chain() agrees."""
    second = bytes.fromhex(LIBMACAROONS_SIGNATURES[1])
    assert signature.extend(second, b"user = alice").hex() == LIBMACAROONS_SIGNATURES[2]
    derived = signature.derive_key(LIBMACAROONS_KEY)
    full = signature.chain(derived, b"keyid", [b"account = 3735928559", b"user = alice"])
    assert full.hex() == LIBMACAROONS_SIGNATURES[2]


def test_derive_key_is_hmac_with_the_libmacaroons_generator_string():
    """The derived key is HMAC-SHA256(key='macaroons-key-generator', msg=root_key)."""
    root = bytes(range(32))
    assert signature.derive_key(root) == hmac.digest(b"macaroons-key-generator", root, "sha256")


@DETERMINISTIC
@given(key=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_hmac_sha256_equals_hmac_digest_for_32_byte_keys(key, message):
    """The fast path for 32-byte keys returns exactly what hmac.digest does."""
    assert signature.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


@DETERMINISTIC
@given(key=st.binary(max_size=200).filter(lambda k: len(k) != 32), message=st.binary(max_size=300))
def test_hmac_sha256_equals_hmac_digest_for_other_key_lengths(key, message):
    """Keys shorter, longer than a block, or empty give hmac.digest's result too."""
    assert signature.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


def test_hmac_sha256_equals_hmac_digest_at_block_boundaries():
    """Key lengths around SHA-256's 64-byte block are handled like hmac.digest."""
    for length in (0, 1, 31, 32, 33, 63, 64, 65, 128):
        key = bytes((7 * i) % 256 for i in range(length))
        assert signature.hmac_sha256(key, b"msg") == hmac.digest(key, b"msg", "sha256"), length


@DETERMINISTIC
@given(
    sig=st.binary(min_size=32, max_size=32),
    vid=st.binary(min_size=1, max_size=120),
    cid=st.binary(min_size=1, max_size=120),
)
def test_third_party_step_matches_pymacaroons(sig, vid, cid):
    """HMAC(sig, HMAC(sig, vid) + HMAC(sig, cid)) is pymacaroons' sign_third_party_caveat."""
    expected = binascii.unhexlify(sign_third_party_caveat(sig, vid, cid))
    assert signature.extend_third_party(sig, vid, cid) == expected


def test_chain_with_a_third_party_caveat_matches_pymacaroons():
    """A macaroon with first- and third-party caveats gets pymacaroons' signature."""
    root = bytes(range(32))
    mac = Macaroon(location="", identifier=b"id", key=root, version=MACAROON_V2)
    mac.add_first_party_caveat("before")
    mac.add_third_party_caveat(
        "https://auth.example/", b"third-party key", "third-party-id", nonce=bytes(24)
    )
    mac.add_first_party_caveat("after")
    vid = mac.caveats[1].verification_key_id
    assert isinstance(vid, bytes) and len(vid) > 0
    ours = signature.chain(
        signature.derive_key(root), b"id", [b"before", b"third-party-id", b"after"], {1: vid}
    )
    assert ours.hex() == mac.signature


def test_chain_extends_step_by_step():
    """chain() equals the identifier signature extended caveat by caveat."""
    derived = signature.derive_key(b"\x01" * 32)
    sig = signature.hmac_sha256(derived, b"identifier")
    for cid in (b"a", b"b", b"c"):
        sig = signature.extend(sig, cid)
    assert signature.chain(derived, b"identifier", [b"a", b"b", b"c"]) == sig
    assert signature.chain(derived, b"identifier", [b"a", b"b", b"c"], {}) == sig


def test_signatures_equal_compares_whole_values():
    """Equal signatures compare equal; any differing or truncated one does not."""
    sig = bytes(range(32))
    assert signature.signatures_equal(sig, bytes(range(32)))
    assert not signature.signatures_equal(sig, sig[:-1] + b"\x00")
    assert not signature.signatures_equal(sig, sig[:31])
    assert not signature.signatures_equal(sig, b"")
