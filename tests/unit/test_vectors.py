"""Published vectors: libmacaroons' V2 example and our own golden tokens, rebuilt byte for byte."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

import agentcaps
from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.keys import KeyState, RootKey

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
LIBMACAROONS = json.loads((VECTORS / "libmacaroons-v2.json").read_text())
OURS = json.loads((VECTORS / "agentcaps-v1.json").read_text())
ROOT_KEY = bytes.fromhex(OURS["root_key_hex"])


def stdlib_hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class StaticKeys:
    """A KeyStore holding only the vectors' root key."""

    def __init__(self, key: RootKey) -> None:
        self.key = key

    def get(self, kid: str) -> RootKey | None:
        return self.key if kid == self.key.kid else None


class NoRevocations:
    """A RevocationStore with nothing revoked."""

    def check(self, facts: object) -> None:
        return None


def typed_caveat(entry: dict) -> cv.Caveat:
    """The caveat a vector entry describes, built from its code and JSON value."""
    value = entry["value"]
    if entry["code"] == cv.Delegate.code:
        return cv.Delegate(value[0], bytes.fromhex(value[1]))
    return cv.REGISTRY[entry["code"]].from_wire(value)


# --- libmacaroons ------------------------------------------------------------


def test_libmacaroons_v2_vector_decodes_to_its_fields():
    """The published V2 serialization decodes to location, identifier, caveats and signature."""
    raw = wire.decode_macaroon(wire.b64decode(LIBMACAROONS["v2_base64url"]))
    assert raw.location == LIBMACAROONS["location"].encode()
    assert raw.identifier == LIBMACAROONS["identifier"].encode()
    assert raw.cids == tuple(c.encode() for c in LIBMACAROONS["caveats"])
    assert raw.signature.hex() == LIBMACAROONS["signatures_hex"][-1]
    assert raw.third_party == ()


def test_libmacaroons_v2_vector_re_encodes_byte_for_byte():
    """Our encoder writes exactly the published bytes back."""
    data = wire.b64decode(LIBMACAROONS["v2_base64url"])
    raw = wire.decode_macaroon(data)
    assert wire.encode_macaroon(raw) == data
    assert wire.b64encode(wire.encode_macaroon(raw)) == LIBMACAROONS["v2_base64url"]


def test_libmacaroons_v2_vector_is_rebuilt_from_its_inputs():
    """Building from key, location, identifier and caveats gives the published bytes."""
    derived = signature.derive_key(LIBMACAROONS["root_key"].encode())
    identifier = LIBMACAROONS["identifier"].encode()
    cids = tuple(c.encode() for c in LIBMACAROONS["caveats"])
    raw = wire.RawMacaroon(
        identifier,
        cids,
        signature.chain(derived, identifier, cids),
        LIBMACAROONS["location"].encode(),
    )
    assert wire.b64encode(wire.encode_macaroon(raw)) == LIBMACAROONS["v2_base64url"]


def test_libmacaroons_vector_prefixed_is_a_token_we_can_read():
    """`agc_` + the published serialization decodes as a token (that is all the prefix adds)."""
    raw = wire.decode_token("agc_" + LIBMACAROONS["v2_base64url"])
    assert raw.identifier == b"keyid"


# --- our golden vectors ------------------------------------------------------


def test_golden_vectors_root_key_derives_the_stated_key():
    """derived_key = HMAC-SHA256('macaroons-key-generator', root_key)."""
    assert signature.derive_key(ROOT_KEY).hex() == OURS["derived_key_hex"]
    assert stdlib_hmac(b"macaroons-key-generator", ROOT_KEY).hex() == OURS["derived_key_hex"]


@pytest.mark.parametrize("vector", OURS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_identifier_is_rebuilt_exactly(vector):
    """The identifier is msgpack [1, kid, tid, iat], byte for byte."""
    ident = wire.Identifier(
        vector["key_id"], bytes.fromhex(vector["token_id_hex"]), vector["issued_at"]
    )
    assert wire.encode_identifier(ident).hex() == vector["identifier_hex"]
    assert wire.decode_identifier(bytes.fromhex(vector["identifier_hex"])) == ident


@pytest.mark.parametrize("vector", OURS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_caveats_and_signatures_are_rebuilt_exactly(vector):
    """Every caveat id, payload and intermediate signature matches, ours and stdlib hmac's."""
    derived = bytes.fromhex(OURS["derived_key_hex"])
    identifier = bytes.fromhex(vector["identifier_hex"])
    sig = signature.hmac_sha256(derived, identifier)
    assert sig.hex() == vector["initial_signature_hex"] == stdlib_hmac(derived, identifier).hex()
    for entry in vector["caveats"]:
        if entry.get("third_party"):
            cid, vid = bytes.fromhex(entry["cid_hex"]), bytes.fromhex(entry["vid_hex"])
            expected = stdlib_hmac(sig, stdlib_hmac(sig, vid) + stdlib_hmac(sig, cid))
            sig = signature.extend_third_party(sig, vid, cid)
        else:
            caveat = typed_caveat(entry)
            assert caveat.name == entry["name"]
            assert (
                wire.packb([caveat.code, caveat.wire_value()]).hex() == entry["payload_msgpack_hex"]
            )
            cid = caveat.encode()
            assert cid.decode("ascii") == entry["cid"]
            assert cv.decode(cid) == caveat
            expected = stdlib_hmac(sig, cid)
            sig = signature.extend(sig, cid)
        assert sig == expected
        assert sig.hex() == entry["signature_hex"]
    assert sig.hex() == vector["signature_hex"]


def token_of(vector: dict[str, Any]) -> str:
    """The vector's token string, spelled from its binary with the standard library alone.

    The files carry no token strings: `agc_` + unpadded base64url of `binary_hex`.
    """
    encoded = base64.urlsafe_b64encode(bytes.fromhex(vector["binary_hex"]))
    return "agc_" + encoded.rstrip(b"=").decode("ascii")


@pytest.mark.parametrize("vector", OURS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_binary_and_token_are_rebuilt_exactly(vector):
    """The V2 binary and the agc_ token string match, and decode back to the same fields."""
    cids, extras = [], []
    for index, entry in enumerate(vector["caveats"]):
        if entry.get("third_party"):
            cids.append(bytes.fromhex(entry["cid_hex"]))
            extras.append(
                wire.ThirdParty(index, bytes.fromhex(entry["vid_hex"]), entry["location"].encode())
            )
        else:
            cids.append(entry["cid"].encode("ascii"))
    raw = wire.RawMacaroon(
        bytes.fromhex(vector["identifier_hex"]),
        tuple(cids),
        bytes.fromhex(vector["signature_hex"]),
        None,
        tuple(extras),
    )
    assert wire.encode_macaroon(raw).hex() == vector["binary_hex"]
    token = token_of(vector)
    assert wire.encode_token(raw) == token
    assert wire.decode_token(token) == raw
    key = RootKey(vector["key_id"], "acme", KeyState.ACTIVE, 0, ROOT_KEY)
    assert (
        signature.chain(key.derived, raw.identifier, raw.cids, {e.position: e.vid for e in extras})
        == raw.signature
    )


@pytest.mark.parametrize(
    ("vector", "check"),
    [(v, c) for v in OURS["vectors"] for c in v["checks"]],
    ids=lambda x: x["name"] if "name" in x else f"{x['reason']}@{x['now']}",
)
def test_golden_vector_decisions(vector, check):
    """Each vector's requests get the stated reason (and chain) from a verifier with the key."""
    key = RootKey(vector["key_id"], "acme", KeyState.ACTIVE, 0, ROOT_KEY)
    verifier = agentcaps.Verifier(
        StaticKeys(key), NoRevocations(), clock=lambda: check["now"], audience=check["audience"]
    )
    decision = verifier.verify(
        token_of(vector),
        resource=check["resource"],
        action=check["action"],
        purpose=check["purpose"],
        actor=check["actor"],
    )
    assert decision.reason == check["reason"]
    assert decision.allowed is (check["reason"] == "ok")
    if "chain" in check:
        assert list(decision.chain) == check["chain"]
        assert decision.token_id == vector["token_id_hex"]


def test_golden_vectors_cover_every_caveat_type_and_a_third_party_caveat():
    """Together the vectors pin all ten caveat codes and the third-party encoding."""
    codes = {e["code"] for v in OURS["vectors"] for e in v["caveats"] if not e.get("third_party")}
    assert codes == set(range(1, 11))
    assert any(e.get("third_party") for v in OURS["vectors"] for e in v["caveats"])
