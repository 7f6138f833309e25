"""Token strings <-> macaroon fields: the only decoder of untrusted token bytes.

A token is `agc_` + unpadded base64url of a libmacaroons V2 binary macaroon. Its
identifier is msgpack `[1, kid, tid, iat]`; each first-party caveat we write is
`ac1:` + unpadded base64url of msgpack `[code, value]`. Decoding is strict so
that what the signature covers has exactly one spelling: one alphabet, no
padding, canonical varints and msgpack, no trailing bytes, fields in their one
legal order. The root location is the exception: no signature covers it, and
macaroon libraries write it differently (pymacaroons an empty one), so it is
read, kept for attenuation, and means nothing. Revocation and audit go by the
token id, never by the string. Size limits are checked before anything is
parsed, and long before any HMAC work.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import NamedTuple

import msgpack

from agentcaps.errors import MalformedToken, TokenTooLarge

PREFIX = "agc_"
CAVEAT_PREFIX = b"ac1:"
IDENTIFIER_VERSION = 1
TOKEN_ID_BYTES = 16
SIGNATURE_BYTES = 32
MAX_IDENTIFIER_BYTES = 256
MAX_LOCATION_BYTES = 256

# libmacaroons V2 binary field types.
_V2 = 2
_EOS = 0
_LOCATION = 1
_IDENTIFIER = 2
_VID = 4
_SIGNATURE = 6

_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_+/=", b"+/!!!")
_PADDING = {0: b"", 2: b"==", 3: b"="}
_BASE64URL_VALUE = {
    c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
# By the length modulo 4: the bits of the last character that carry no data.
_UNUSED_BITS = {0: 0, 2: 0x0F, 3: 0x03}

# Types a caveat value, or an item of a caveat value that is an array, may
# decode to. Floats, maps, nil, booleans, extension types, timestamps and
# deeper nesting have no place in a token: they are malformed, not coerced.
_ALLOWED_SCALARS = (int, str, bytes)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied before parsing; a token over any of them is `too_large`."""

    max_token_bytes: int = 16 * 1024
    max_caveats: int = 64
    max_caveat_bytes: int = 1024


DEFAULT_LIMITS = Limits()


class ThirdParty(NamedTuple):
    """A caveat's verification id (third-party) or location, by its position among the caveats."""

    position: int
    vid: bytes | None
    location: bytes | None


class RawMacaroon(NamedTuple):
    """The fields of a V2 macaroon, unverified.

    `cids` are the caveat ids in order. The rare caveat with a verification id
    or location (a third-party caveat) is listed again in `third_party` by its
    position, which keeps the common first-party path to plain bytes.
    """

    identifier: bytes
    cids: tuple[bytes, ...]
    signature: bytes
    location: bytes | None = None
    third_party: tuple[ThirdParty, ...] = ()


class Identifier(NamedTuple):
    """The decoded macaroon identifier: root key id, token id, issued-at."""

    kid: str
    tid: bytes
    iat: int


# --- base64url -------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str | bytes) -> bytes:
    """Strict unpadded base64url: one alphabet, no padding, no stray bits.

    Raises:
        MalformedToken: anything that is not the one canonical spelling of some bytes.
    """
    try:
        encoded = text.encode("ascii") if type(text) is str else text
    except UnicodeEncodeError:
        raise MalformedToken("not unpadded base64url") from None
    assert isinstance(encoded, bytes)
    rem = len(encoded) % 4
    if rem == 1:
        raise MalformedToken("not unpadded base64url")
    try:
        # Map the url-safe alphabet onto the standard one and everything from
        # the standard one that url-safe lacks ("+", "/", "=") onto a byte that
        # strict mode refuses, so exactly one alphabet gets through.
        data = binascii.a2b_base64(
            encoded.translate(_TO_STANDARD_ALPHABET) + _PADDING[rem], strict_mode=True
        )
    except binascii.Error:
        raise MalformedToken("not unpadded base64url") from None
    # Nonzero unused bits in the last character would give the same bytes a
    # second spelling.
    if rem and _BASE64URL_VALUE[encoded[-1]] & _UNUSED_BITS[rem]:
        raise MalformedToken("not canonical base64url")
    return data


# --- libmacaroons V2 binary --------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_field(ftype: int, data: bytes) -> bytes:
    return bytes((ftype,)) + _varint(len(data)) + data


def encode_macaroon(mac: RawMacaroon) -> bytes:
    """Serialize to libmacaroons V2 binary."""
    extras = {tp.position: tp for tp in mac.third_party}
    parts = [bytes((_V2,))]
    if mac.location:
        parts.append(_encode_field(_LOCATION, mac.location))
    parts.append(_encode_field(_IDENTIFIER, mac.identifier))
    parts.append(bytes((_EOS,)))
    for index, cid in enumerate(mac.cids):
        extra = extras.get(index)
        if extra is not None and extra.location:
            parts.append(_encode_field(_LOCATION, extra.location))
        parts.append(_encode_field(_IDENTIFIER, cid))
        if extra is not None and extra.vid is not None:
            parts.append(_encode_field(_VID, extra.vid))
        parts.append(bytes((_EOS,)))
    parts.append(bytes((_EOS,)))
    parts.append(_encode_field(_SIGNATURE, mac.signature))
    return b"".join(parts)


def _field(data: bytes, pos: int, ftype: int, limit: int) -> tuple[bytes, int]:
    """Read one field of type `ftype`, 1..limit bytes long, at `pos`; return it and the next pos.

    An index past the end raises IndexError, which `decode_macaroon` reports as truncation.
    """
    if data[pos] != ftype:
        raise MalformedToken("unexpected field in macaroon")
    pos += 1
    length = data[pos]
    pos += 1
    if length >= 0x80:
        # Lengths are bounded by the token limit: at most three varint bytes,
        # and no over-long spelling.
        length &= 0x7F
        for shift in (7, 14):
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0:
                    raise MalformedToken("non-canonical varint")
                break
        else:
            raise MalformedToken("field length out of range")
    if length == 0:
        raise MalformedToken("empty field")
    if length > limit:
        raise TokenTooLarge("field exceeds its size limit")
    end = pos + length
    if end > len(data):
        raise MalformedToken("truncated macaroon")
    return data[pos:end], end


def decode_macaroon(data: bytes, limits: Limits = DEFAULT_LIMITS) -> RawMacaroon:
    """Parse libmacaroons V2 binary, strictly and within `limits`.

    Raises:
        MalformedToken: not a well-formed V2 macaroon.
        TokenTooLarge: too many caveats, or a field over its limit.
    """
    if len(data) > limits.max_token_bytes:
        raise TokenTooLarge("token exceeds the size limit")
    if not data or data[0] != _V2:
        raise MalformedToken("not a V2 macaroon")
    try:
        return _decode_v2_body(data, limits)
    except IndexError:
        raise MalformedToken("truncated macaroon") from None


def _decode_v2_body(data: bytes, limits: Limits) -> RawMacaroon:
    pos = 1
    location = None
    if data[pos] == _LOCATION:
        if data[pos + 1] == 0:
            # pymacaroons writes an empty root location rather than none. The
            # location is not signed and means nothing to us: read it as none.
            pos += 2
        else:
            location, pos = _field(data, pos, _LOCATION, MAX_LOCATION_BYTES)
    identifier, pos = _field(data, pos, _IDENTIFIER, MAX_IDENTIFIER_BYTES)
    if data[pos] != _EOS:
        raise MalformedToken("unexpected field in macaroon")
    pos += 1
    max_caveats, max_caveat_bytes = limits.max_caveats, limits.max_caveat_bytes
    cids: list[bytes] = []
    third_party: list[ThirdParty] = []
    while (ftype := data[pos]) != _EOS:
        if len(cids) == max_caveats:
            raise TokenTooLarge("too many caveats")
        # Fast path: a first-party caveat id under 128 bytes and its EOS.
        length = data[pos + 1]
        if ftype == _IDENTIFIER and 0 < length < 0x80 and length <= max_caveat_bytes:
            end = pos + 2 + length
            if data[end] == _EOS:
                cids.append(data[pos + 2 : end])
                pos = end + 1
                continue
        cav_location = vid = None
        if ftype == _LOCATION:
            cav_location, pos = _field(data, pos, _LOCATION, MAX_LOCATION_BYTES)
        cid, pos = _field(data, pos, _IDENTIFIER, max_caveat_bytes)
        if data[pos] == _VID:
            vid, pos = _field(data, pos, _VID, max_caveat_bytes)
        if data[pos] != _EOS:
            raise MalformedToken("unexpected field in caveat")
        pos += 1
        if vid is not None or cav_location is not None:
            third_party.append(ThirdParty(len(cids), vid, cav_location))
        cids.append(cid)
    # The limit here only bounds the read; any length but 32 is malformed.
    signature, pos = _field(data, pos + 1, _SIGNATURE, limits.max_token_bytes)
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedToken("signature has the wrong length")
    if pos != len(data):
        raise MalformedToken("trailing bytes after the signature")
    return RawMacaroon(identifier, tuple(cids), signature, location, tuple(third_party))


# --- token strings -----------------------------------------------------------


_TOKEN_TEXT = re.compile(PREFIX + r"[A-Za-z0-9_-]+")


def mask_tokens(text: str) -> str:
    """`text` with anything token-shaped (`agc_` and base64url) replaced by `[token]`.

    For text that may quote a token in the wrong place (a resource, a reason,
    an error about an argument): a token is never shown back or stored.
    """
    return _TOKEN_TEXT.sub("[token]", text) if PREFIX in text else text


def encode_token(mac: RawMacaroon) -> str:
    """The token string: `agc_` + unpadded base64url of V2 binary."""
    return PREFIX + b64encode(encode_macaroon(mac))


def decode_token(token: object, limits: Limits = DEFAULT_LIMITS) -> RawMacaroon:
    """Parse a token string into unverified macaroon fields.

    Raises:
        TokenTooLarge: over `limits`, checked before decoding.
        MalformedToken: anything else that is not a token.
    """
    # Exactly str: a subclass could bring its own hashing and equality into
    # the verifier's caches, and so pass for a token it is not.
    if type(token) is not str:
        raise MalformedToken("a token is a string")
    if len(token) > limits.max_token_bytes:
        raise TokenTooLarge("token exceeds the size limit")
    if not token.startswith(PREFIX):
        raise MalformedToken("a token starts with agc_")
    return decode_macaroon(b64decode(token[len(PREFIX) :]), limits)


# --- msgpack values ----------------------------------------------------------


# One Packer, reused: msgpack.packb builds a new one per call, which costs more
# than the packing. Its C implementation packs a value without releasing the
# GIL, so sharing it between threads is safe.
_PACKER = msgpack.Packer(use_bin_type=True, autoreset=True)


def packb(value: object) -> bytes:
    """Canonical msgpack: the smallest encoding, str and bin kept apart."""
    return _PACKER.pack(value)  # type: ignore[no-any-return]


def unpackb(data: bytes) -> object:
    """Decode canonical msgpack; callers check the types they expect.

    Raises:
        MalformedToken: invalid or non-canonical msgpack, or trailing bytes.
    """
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise MalformedToken("invalid msgpack") from None
    try:
        canonical = packb(value)
    except (ValueError, TypeError):  # e.g. an extension or timestamp value
        raise MalformedToken("a value of a type tokens do not carry") from None
    if canonical != data:
        raise MalformedToken("non-canonical msgpack")
    return value


# --- identifier --------------------------------------------------------------


def encode_identifier(ident: Identifier) -> bytes:
    """msgpack `[1, kid, tid, iat]`."""
    return packb([IDENTIFIER_VERSION, ident.kid, ident.tid, ident.iat])


def decode_identifier(data: bytes) -> Identifier:
    """Parse and check the identifier.

    Raises:
        MalformedToken: wrong version, shape or types, or non-canonical msgpack.
    """
    value = unpackb(data)
    if type(value) is not list or len(value) != 4:
        raise MalformedToken("identifier is not [version, kid, tid, iat]")
    version, kid, tid, iat = value
    if type(version) is not int or version != IDENTIFIER_VERSION:
        raise MalformedToken("unknown identifier version")
    if type(kid) is not str or not kid:
        raise MalformedToken("identifier key id is not a string")
    if type(tid) is not bytes or len(tid) != TOKEN_ID_BYTES:
        raise MalformedToken("identifier token id is not 16 bytes")
    if type(iat) is not int or iat < 0:
        raise MalformedToken("identifier issued-at is not a unix time")
    return Identifier(kid, tid, iat)


# --- caveat payloads ---------------------------------------------------------


def encode_caveat(code: int, value: object) -> bytes:
    """The caveat text `ac1:` + base64url(msgpack [code, value])."""
    return CAVEAT_PREFIX + b64encode(packb([code, value])).encode("ascii")


def decode_caveat(cid: bytes) -> tuple[int, object] | None:
    """The `[code, value]` an `ac1:` caveat carries, or None for any other text.

    Raises:
        MalformedToken: an `ac1:` caveat whose payload is not canonical msgpack
            `[int, value]` of the allowed types (ints, strings, bytes, arrays
            of those; never floats, NaN, maps, nil, booleans or extensions).
    """
    if not cid.startswith(CAVEAT_PREFIX):
        return None
    value = unpackb(b64decode(cid[len(CAVEAT_PREFIX) :]))
    if type(value) is not list or len(value) != 2 or type(value[0]) is not int:
        raise MalformedToken("caveat payload is not [code, value]")
    code, inner = value
    if type(inner) is list:
        for item in inner:
            if type(item) not in _ALLOWED_SCALARS:
                raise MalformedToken("a value of a type tokens do not carry")
    elif type(inner) not in _ALLOWED_SCALARS:
        raise MalformedToken("a value of a type tokens do not carry")
    return code, inner
