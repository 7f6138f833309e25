"""The wire format: strict decoding of token strings, V2 binary, identifiers and caveat payloads."""

from __future__ import annotations

import msgpack
import pytest

from agentcaps import wire
from agentcaps.errors import MalformedToken, TokenTooLarge

EOS = b"\x00"
SIG = bytes(range(32))
TID = bytes(range(16))


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fld(ftype: int, data: bytes) -> bytes:
    """One V2 field: type, varint length, data."""
    return bytes((ftype,)) + varint(len(data)) + data


def v2(*parts: bytes) -> bytes:
    return b"\x02" + b"".join(parts)


def first_party(*cids: bytes) -> bytes:
    return b"".join(fld(2, cid) + EOS for cid in cids)


GOOD = v2(fld(2, b"id"), EOS, first_party(b"cav-one", b"cav-two"), EOS, fld(6, SIG))
GOOD_RAW = wire.RawMacaroon(b"id", (b"cav-one", b"cav-two"), SIG)


def caveat_cid(payload: bytes) -> bytes:
    """An `ac1:` caveat id around raw msgpack bytes."""
    return b"ac1:" + wire.b64encode(payload).encode("ascii")


# --- base64url -----------------------------------------------------------------


def test_b64decode_reads_unpadded_base64url():
    """Unpadded url-safe base64 of every length class decodes to its bytes."""
    for data in (b"", b"\xfb", b"\xfb\xff", b"\xfb\xff\xbf", b"\xfb\xff\xbf\xfe"):
        assert wire.b64decode(wire.b64encode(data)) == data
    assert wire.b64decode("-_-_") == b"\xfb\xff\xbf"


@pytest.mark.parametrize("text", ["+_-_", "-/-_", "+/+/"])
def test_b64decode_rejects_the_standard_alphabet(text):
    """'+' and '/' belong to the other base64 alphabet and are refused."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


@pytest.mark.parametrize("text", ["AA==", "AAA=", "AA=", "AAAA===="])
def test_b64decode_rejects_padding(text):
    """'=' padding is not part of the one spelling."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


@pytest.mark.parametrize("text", ["AA AA", " AAAA", "AAAA\n", "AA\tAA", "AAA\r", "AA\x00A"])
def test_b64decode_rejects_whitespace_and_control_characters(text):
    """Whitespace and control characters anywhere are refused, not skipped."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


@pytest.mark.parametrize("text", ["AAé", "ＡＡＡＡ", "AA\u200bAA", "AA\udcff"])
def test_b64decode_rejects_non_ascii(text):
    """Non-ASCII characters (including look-alikes and lone surrogates) are refused."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


@pytest.mark.parametrize("text", ["AB", "AR", "AAB", "AAC", "AAF", "__", "___"])
def test_b64decode_rejects_nonzero_unused_trailing_bits(text):
    """A last character with stray low bits would be a second spelling of the same bytes."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


@pytest.mark.parametrize("text", ["A", "AAAAA", "AAAAAAAAA"])
def test_b64decode_rejects_length_one_modulo_four(text):
    """No byte string encodes to a length of 1 modulo 4."""
    with pytest.raises(MalformedToken):
        wire.b64decode(text)


def test_b64encode_writes_no_padding_and_the_url_alphabet():
    """Encoding uses '-' and '_' and never pads."""
    assert wire.b64encode(b"\xfb\xff") == "-_8"
    assert wire.b64encode(b"\xfb\xff\xbf\xfe") == "-_-__g"


# --- token strings -------------------------------------------------------------


def test_token_string_round_trips_exactly():
    """encode_token then decode_token returns the same fields, and re-encoding the same string."""
    token = wire.encode_token(GOOD_RAW)
    assert token.startswith("agc_")
    assert "=" not in token
    assert wire.decode_token(token) == GOOD_RAW
    assert wire.encode_token(wire.decode_token(token)) == token


@pytest.mark.parametrize("prefix", ["", "AGC_", "agc-", "agc", "agc__", " agc_", "acg_"])
def test_decode_token_requires_the_agc_prefix(prefix):
    """Anything but exactly `agc_` before the base64url body is malformed."""
    body = wire.b64encode(GOOD)
    with pytest.raises(MalformedToken):
        wire.decode_token(prefix + body)


@pytest.mark.parametrize("value", [None, 42, b"agc_AgIC", ["agc_"], bytearray(b"agc_")])
def test_decode_token_rejects_non_strings(value):
    """A token is a str; any other type is malformed, not a TypeError."""
    with pytest.raises(MalformedToken):
        wire.decode_token(value)


def test_decode_token_rejects_an_empty_body():
    """The prefix alone is not a token."""
    with pytest.raises(MalformedToken):
        wire.decode_token("agc_")


def test_decode_token_rejects_padded_body():
    """Padding after an otherwise valid body makes it malformed."""
    token = wire.encode_token(GOOD_RAW)
    padded = token + "=" * (-(len(token) - 4) % 4 or 4)
    with pytest.raises(MalformedToken):
        wire.decode_token(padded)


# --- V2 binary -----------------------------------------------------------------


def test_decode_macaroon_reads_first_party_caveats():
    """A well-formed V2 macaroon decodes to its identifier, caveat ids and signature."""
    assert wire.decode_macaroon(GOOD) == GOOD_RAW


def test_macaroon_with_location_and_third_party_caveat_round_trips_exactly():
    """Locations and verification ids survive encode/decode byte for byte."""
    raw = wire.RawMacaroon(
        b"ident",
        (b"first", b"third", b"last"),
        SIG,
        b"https://issuer.example/",
        (wire.ThirdParty(1, b"v" * 40, b"https://auth.example/"),),
    )
    data = wire.encode_macaroon(raw)
    assert wire.decode_macaroon(data) == raw
    assert wire.encode_macaroon(wire.decode_macaroon(data)) == data


@pytest.mark.parametrize("first", [b"\x00", b"\x01", b"\x03", b"\xff", b"0", b"{"])
def test_decode_macaroon_rejects_wrong_version_byte(first):
    """Only the V2 binary format (first byte 2) is accepted; V1 text and JSON are not."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(first + GOOD[1:])


def test_decode_macaroon_rejects_empty_input():
    """Zero bytes is not a macaroon."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(b"")


def test_decode_macaroon_rejects_truncation_at_every_position():
    """Every proper prefix of a valid macaroon is malformed."""
    for cut in range(len(GOOD)):
        with pytest.raises(MalformedToken):
            wire.decode_macaroon(GOOD[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\x06", b"\x06\x20" + SIG, b"junk"])
def test_decode_macaroon_rejects_trailing_bytes(tail):
    """Nothing may follow the signature."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(GOOD + tail)


@pytest.mark.parametrize(
    "data",
    [
        v2(fld(3, b"x"), fld(2, b"id"), EOS, EOS, fld(6, SIG)),  # unknown header field
        v2(fld(2, b"id"), fld(5, b"x"), EOS, EOS, fld(6, SIG)),  # unknown field after identifier
        v2(fld(2, b"id"), fld(4, b"v"), EOS, EOS, fld(6, SIG)),  # vid in the header
        v2(fld(2, b"id"), fld(6, SIG), EOS, EOS, fld(6, SIG)),  # signature in the header
        v2(fld(2, b"id"), EOS, fld(2, b"c"), fld(7, b"x"), EOS, EOS, fld(6, SIG)),  # in a caveat
        v2(fld(2, b"id"), EOS, fld(6, SIG), EOS, EOS, fld(6, SIG)),  # caveat of signature type
        v2(fld(2, b"id"), EOS, EOS, fld(7, SIG)),  # unknown field where the signature goes
        v2(fld(2, b"id"), EOS, EOS, fld(2, SIG)),  # identifier where the signature goes
        v2(fld(2, b"id"), EOS, EOS),  # no signature at all
    ],
)
def test_decode_macaroon_rejects_unknown_or_misplaced_fields(data):
    """A field type outside its one legal place is malformed."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


@pytest.mark.parametrize(
    "data",
    [
        v2(fld(2, b"id"), fld(2, b"id"), EOS, EOS, fld(6, SIG)),
        v2(fld(1, b"loc"), fld(1, b"loc"), fld(2, b"id"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(2, b"a"), fld(2, b"b"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(2, b"a"), fld(4, b"v"), fld(4, b"v"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(1, b"l"), fld(1, b"l"), fld(2, b"a"), EOS, EOS, fld(6, SIG)),
    ],
)
def test_decode_macaroon_rejects_duplicate_fields(data):
    """A field may appear at most once in its section."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


@pytest.mark.parametrize(
    "data",
    [
        v2(fld(2, b"id"), fld(1, b"loc"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(2, b"a"), fld(1, b"loc"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(4, b"v"), fld(2, b"a"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, fld(1, b"l"), fld(4, b"v"), fld(2, b"a"), EOS, EOS, fld(6, SIG)),
    ],
)
def test_decode_macaroon_rejects_out_of_order_fields(data):
    """Fields follow libmacaroons' order: location, identifier, verification id."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


@pytest.mark.parametrize(
    "data",
    [
        # length 2 spelled in two bytes (0x82 0x00)
        b"\x02" + b"\x02\x82\x00id" + EOS + EOS + fld(6, SIG),
        # a caveat of length 1 spelled 0x81 0x00
        v2(fld(2, b"id"), EOS, b"\x02\x81\x00a", EOS, EOS, fld(6, SIG)),
        # the signature's length 32 spelled 0xa0 0x00
        v2(fld(2, b"id"), EOS, EOS, b"\x06\xa0\x00" + SIG),
        # 200 spelled in three bytes (0xc8 0x81 0x00)
        v2(fld(2, b"id"), EOS, b"\x02\xc8\x81\x00" + b"a" * 200, EOS, EOS, fld(6, SIG)),
    ],
)
def test_decode_macaroon_rejects_over_long_varints(data):
    """A length with redundant continuation bytes is a second spelling, so malformed."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


def test_decode_macaroon_rejects_varints_longer_than_any_allowed_length():
    """A four-byte length cannot fit in a token and is malformed, not read."""
    data = v2(fld(2, b"id"), EOS, b"\x02\x80\x80\x80\x01", EOS, EOS, fld(6, SIG))
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


@pytest.mark.parametrize(
    "data",
    [
        v2(fld(2, b""), EOS, EOS, fld(6, SIG)),  # empty identifier
        v2(fld(2, b"id"), EOS, fld(2, b""), EOS, EOS, fld(6, SIG)),  # empty caveat id
        v2(fld(2, b"id"), EOS, fld(2, b"a"), fld(4, b""), EOS, EOS, fld(6, SIG)),  # empty vid
        v2(fld(2, b"id"), EOS, fld(1, b""), fld(2, b"a"), fld(4, b"v"), EOS, EOS, fld(6, SIG)),
        v2(fld(2, b"id"), EOS, EOS, fld(6, b"")),  # empty signature
    ],
)
def test_decode_macaroon_rejects_empty_fields(data):
    """Identifiers, caveat ids, vids, caveat locations and signatures are never empty."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(data)


def test_empty_root_location_as_pymacaroons_writes_it_is_read_as_no_location():
    """pymacaroons always writes a root location, empty if unset; such tokens must decode."""
    data = v2(
        fld(1, b""), fld(2, b"id"), EOS, first_party(b"cav-one", b"cav-two"), EOS, fld(6, SIG)
    )
    raw = wire.decode_macaroon(data)
    assert (raw.identifier, raw.cids, raw.signature, raw.third_party) == (
        GOOD_RAW.identifier,
        GOOD_RAW.cids,
        GOOD_RAW.signature,
        (),
    )
    assert not raw.location


@pytest.mark.parametrize("length", [1, 16, 31])
def test_decode_macaroon_rejects_short_signatures(length):
    """A signature is exactly 32 bytes; a shorter one is malformed."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(v2(fld(2, b"id"), EOS, EOS, fld(6, SIG[:length])))


@pytest.mark.parametrize("length", [33, 64])
def test_decode_macaroon_reports_long_signatures_as_malformed(length):
    """A signature longer than 32 bytes is a wrong shape (malformed), not a size-limit breach."""
    with pytest.raises(MalformedToken):
        wire.decode_macaroon(v2(fld(2, b"id"), EOS, EOS, fld(6, bytes(length))))


# --- size limits ---------------------------------------------------------------


def test_default_limits_are_16_kib_64_caveats_1_kib_per_caveat():
    """The defaults match the issue: 16 KiB per token, 64 caveats, 1 KiB per caveat."""
    assert wire.DEFAULT_LIMITS == wire.Limits(16 * 1024, 64, 1024)


def test_token_over_size_limit_is_too_large_before_any_parsing():
    """A string past 16 KiB is too large even if it is not base64url or has no prefix."""
    with pytest.raises(TokenTooLarge):
        wire.decode_token("agc_" + "!" * (16 * 1024))
    with pytest.raises(TokenTooLarge):
        wire.decode_token("x" * (16 * 1024 + 1))


def test_binary_over_size_limit_is_too_large_before_any_parsing():
    """decode_macaroon checks the byte length before looking at the version byte."""
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(b"\xff" * (16 * 1024 + 1))


def test_token_exactly_at_the_size_limit_decodes():
    """The limit is inclusive: a token of exactly max_token_bytes characters is read."""
    token = wire.encode_token(GOOD_RAW)
    assert wire.decode_token(token, wire.Limits(max_token_bytes=len(token))) == GOOD_RAW
    with pytest.raises(TokenTooLarge):
        wire.decode_token(token, wire.Limits(max_token_bytes=len(token) - 1))


def test_sixty_four_caveats_decode_and_sixty_five_are_too_large():
    """The caveat count limit is 64 by default."""
    cids = [b"c%d" % i for i in range(65)]
    ok = v2(fld(2, b"id"), EOS, first_party(*cids[:64]), EOS, fld(6, SIG))
    assert len(wire.decode_macaroon(ok).cids) == 64
    over = v2(fld(2, b"id"), EOS, first_party(*cids), EOS, fld(6, SIG))
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(over)


def test_caveat_of_1024_bytes_decodes_and_1025_is_too_large():
    """The per-caveat limit is 1 KiB by default, for first- and third-party caveats."""
    ok = v2(fld(2, b"id"), EOS, first_party(b"a" * 1024), EOS, fld(6, SIG))
    assert wire.decode_macaroon(ok).cids == (b"a" * 1024,)
    over = v2(fld(2, b"id"), EOS, first_party(b"a" * 1025), EOS, fld(6, SIG))
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(over)
    third = v2(fld(2, b"id"), EOS, fld(2, b"a" * 1025), fld(4, b"v"), EOS, EOS, fld(6, SIG))
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(third)
    vid = v2(fld(2, b"id"), EOS, fld(2, b"a"), fld(4, b"v" * 1025), EOS, EOS, fld(6, SIG))
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(vid)


def test_limits_are_configurable():
    """Smaller Limits make otherwise fine tokens too large; larger ones admit bigger tokens."""
    limits = wire.Limits(max_token_bytes=4096, max_caveats=1, max_caveat_bytes=8)
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(GOOD, limits)  # two caveats
    one = v2(fld(2, b"id"), EOS, first_party(b"123456789"), EOS, fld(6, SIG))
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(one, limits)  # nine bytes
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(GOOD, wire.Limits(max_token_bytes=len(GOOD) - 1))
    big = v2(fld(2, b"id"), EOS, first_party(*[b"c"] * 100), EOS, fld(6, SIG))
    assert len(wire.decode_macaroon(big, wire.Limits(max_caveats=100)).cids) == 100


def test_too_many_caveats_is_reported_before_later_bytes_are_parsed():
    """Past the caveat limit, decoding stops with too_large even if the rest is garbage."""
    data = v2(fld(2, b"id"), EOS, first_party(b"a", b"b"), b"\x07garbage")
    with pytest.raises(TokenTooLarge):
        wire.decode_macaroon(data, wire.Limits(max_caveats=2))


# --- identifier ----------------------------------------------------------------


def test_identifier_round_trips_exactly():
    """encode_identifier then decode_identifier returns the same kid, tid and iat."""
    ident = wire.Identifier("k0123456789abcdef", TID, 1_800_000_000)
    data = wire.encode_identifier(ident)
    assert data == msgpack.packb([1, "k0123456789abcdef", TID, 1_800_000_000], use_bin_type=True)
    assert wire.decode_identifier(data) == ident


@pytest.mark.parametrize("version", [0, 2, 255, -1])
def test_identifier_with_unknown_version_is_malformed(version):
    """Only identifier format version 1 is known."""
    with pytest.raises(MalformedToken):
        wire.decode_identifier(wire.packb([version, "k", TID, 1]))


@pytest.mark.parametrize(
    "value",
    [
        [True, "k", TID, 1],  # bool version
        [1.0, "k", TID, 1],  # float version
        ["1", "k", TID, 1],  # str version
        [None, "k", TID, 1],
        [1, b"k", TID, 1],  # kid as bytes
        [1, 7, TID, 1],
        [1, "", TID, 1],  # empty kid
        [1, None, TID, 1],
        [1, "k", TID.hex(), 1],  # tid as str
        [1, "k", TID[:15], 1],
        [1, "k", TID + b"\x00", 1],
        [1, "k", b"", 1],
        [1, "k", None, 1],
        [1, "k", TID, 1.0],  # float iat
        [1, "k", TID, 1.5],
        [1, "k", TID, float("nan")],
        [1, "k", TID, True],
        [1, "k", TID, None],
        [1, "k", TID, -1],
        [1, "k", TID, "1"],
        [1, "k", TID],  # too short
        [1, "k", TID, 1, 2],  # too long
        [],
        {"v": 1},
        1,
        "k",
        None,
    ],
)
def test_identifier_of_wrong_shape_or_types_is_malformed(value):
    """The identifier is exactly [1, str kid, 16-byte tid, int iat >= 0]."""
    with pytest.raises(MalformedToken):
        wire.decode_identifier(wire.packb(value))


def test_identifier_with_trailing_bytes_is_malformed():
    """Bytes after the msgpack array are refused."""
    data = wire.encode_identifier(wire.Identifier("k", TID, 1))
    for tail in (b"\x00", b"\xc0", data):
        with pytest.raises(MalformedToken):
            wire.decode_identifier(data + tail)


@pytest.mark.parametrize(
    "data",
    [
        b"\xdc\x00\x04" + b"\x01\xa1k\xc4\x10" + TID + b"\x01",  # array16 for 4 items
        b"\x94" + b"\xcc\x01" + b"\xa1k\xc4\x10" + TID + b"\x01",  # uint8 for version 1
        b"\x94\x01" + b"\xd9\x01k" + b"\xc4\x10" + TID + b"\x01",  # str8 for a 1-char kid
        b"\x94\x01\xa1k" + b"\xc5\x00\x10" + TID + b"\x01",  # bin16 for 16 bytes
        b"\x94\x01\xa1k\xc4\x10" + TID + b"\xce\x00\x00\x00\x01",  # uint32 for iat 1
        b"\x94\x01\xa1k\xc4\x10" + TID + b"\xd3" + (1).to_bytes(8, "big"),  # int64 for iat 1
    ],
)
def test_identifier_in_non_canonical_msgpack_is_malformed(data):
    """Each identifier has one msgpack spelling: the smallest encoding of each value."""
    assert msgpack.unpackb(data) == [1, "k", TID, 1]
    with pytest.raises(MalformedToken):
        wire.decode_identifier(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x94", b"\x94\x01\xa1", b"\xc1", b"\x94\x01\xa2\xff\xfe\xc4\x10" + TID + b"\x01"],
)
def test_identifier_that_is_not_msgpack_is_malformed(data):
    """Truncated msgpack, reserved bytes and invalid UTF-8 strings are malformed."""
    with pytest.raises(MalformedToken):
        wire.decode_identifier(data)


# --- caveat payloads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (1, 1_800_000_000),
        (3, ["acme", "alice"]),
        (5, ["crm/**", "mail/*"]),
        (8, ["fetcher", bytes(16)]),
        (10, 0),
        (63, "anything"),
        (12345, [b"\x00", 7, "x"]),
        (-5, -5),
        (1, 2**64 - 1),
        (1, -(2**63)),
    ],
)
def test_caveat_payload_round_trips_exactly(code, value):
    """encode_caveat then decode_caveat returns the code and value unchanged."""
    cid = wire.encode_caveat(code, value)
    assert cid.startswith(b"ac1:")
    assert wire.decode_caveat(cid) == (code, value)


def test_caveat_payload_is_ac1_and_base64url_of_msgpack_code_value():
    """The caveat text is exactly `ac1:` + unpadded base64url(msgpack [code, value])."""
    cid = wire.encode_caveat(6, ["read"])
    assert cid == b"ac1:" + wire.b64encode(msgpack.packb([6, ["read"]], use_bin_type=True)).encode()
    assert cid.decode("ascii") == "ac1:kgaRpHJlYWQ"


@pytest.mark.parametrize(
    "cid", [b"", b"time < 2030", b"AC1:kgaRpHJlYWQ", b"ac1", b"ac2:kgaRpHJlYWQ", b"\xffac1:"]
)
def test_non_ac1_caveat_text_decodes_to_none(cid):
    """Text that does not start with `ac1:` is not ours: decode_caveat returns None."""
    assert wire.decode_caveat(cid) is None


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1_800_000_000.0,  # a float that equals an int is still not coerced
        float("nan"),
        float("inf"),
        {"a": 1},
        {},
        None,
        True,
        False,
        msgpack.ExtType(5, b"x"),
        msgpack.Timestamp(1_800_000_000, 0),
        ["read", 1.5],
        ["read", None],
        ["read", True],
        ["read", {"a": "b"}],
        [["a", ["too deep"]]],
    ],
    ids=repr,
)
def test_caveat_value_of_a_type_tokens_do_not_carry_is_malformed(value):
    """Floats, NaN, maps, nil, booleans, extensions and timestamps are malformed, not coerced."""
    cid = caveat_cid(msgpack.packb([1, value], use_bin_type=True))
    with pytest.raises(MalformedToken):
        wire.decode_caveat(cid)


def test_float32_caveat_value_is_malformed():
    """A single-precision float is as foreign to a token as a double."""
    cid = caveat_cid(msgpack.packb([1, 1.5], use_bin_type=True, use_single_float=True))
    with pytest.raises(MalformedToken):
        wire.decode_caveat(cid)


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb(6),  # not an array
        msgpack.packb([6]),  # one element
        msgpack.packb([6, ["read"], 1]),  # three elements
        msgpack.packb(["6", ["read"]]),  # code as str
        msgpack.packb([b"\x06", ["read"]], use_bin_type=True),  # code as bytes
        msgpack.packb([True, ["read"]]),  # code as bool
        msgpack.packb([6.0, ["read"]]),  # code as float
        msgpack.packb([]),
    ],
)
def test_caveat_payload_not_code_value_pair_is_malformed(payload):
    """An `ac1:` payload must be the array [int code, value]."""
    with pytest.raises(MalformedToken):
        wire.decode_caveat(caveat_cid(payload))


@pytest.mark.parametrize(
    "cid",
    [
        b"ac1:",  # empty payload
        b"ac1:kgaRpHJlYWQ=",  # padded
        b"ac1:kgaRpHJlYWQ\n",
        b"ac1:kgaRpHJl+WQ",  # standard alphabet
        b"ac1:kgaRpHJlYWR",  # stray trailing bits
        b"ac1:\xc3\xa9",  # non-ASCII
        b"ac1:kgaRpHJlYQ",  # truncated msgpack
        caveat_cid(msgpack.packb([6, ["read"]]) + b"\x00"),  # trailing bytes
        caveat_cid(b"\x92\xcc\x06\x91\xa4read"),  # code 6 spelled as uint8
        caveat_cid(b"\x92\x06\x91\xd9\x04read"),  # "read" spelled as str8
        caveat_cid(b"\x92\x06\xdc\x00\x01\xa4read"),  # array16 for one item
    ],
)
def test_caveat_payload_that_is_not_canonical_is_malformed(cid):
    """An `ac1:` caveat has one spelling: strict base64url of canonical msgpack, nothing after."""
    with pytest.raises(MalformedToken):
        wire.decode_caveat(cid)
