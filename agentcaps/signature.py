"""The libmacaroons signature chain: derived key, then one HMAC-SHA256 per field.

signature = HMAC(derive(root_key), identifier), then for each first-party
caveat HMAC(signature, cid), and for a third-party caveat
HMAC(signature, HMAC(signature, vid) + HMAC(signature, cid)). Signatures are
compared in constant time, and only here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

# libmacaroons personalises root keys with this string, as the HMAC key.
_KEY_GENERATOR = b"macaroons-key-generator"

# HMAC-SHA256 with keys of exactly 32 bytes (every chain step after the first),
# written out with precomputed pad tables: it returns the same bytes as
# hmac.digest but skips its per-call setup, which dominates for short messages.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_ZEROS = bytes(32)
_sha256 = hashlib.sha256


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256(key, message)."""
    if len(key) != 32:
        return hmac.digest(key, message, "sha256")
    block = key + _ZEROS
    return _sha256(
        block.translate(_OPAD) + _sha256(block.translate(_IPAD) + message).digest()
    ).digest()


def derive_key(root_key: bytes) -> bytes:
    """The key libmacaroons signs identifiers with, derived from a root key."""
    return hmac.digest(_KEY_GENERATOR, root_key, "sha256")


def extend(signature: bytes, cid: bytes) -> bytes:
    """The signature after appending a first-party caveat."""
    return hmac_sha256(signature, cid)


def extend_third_party(signature: bytes, vid: bytes, cid: bytes) -> bytes:
    """The signature after appending a third-party caveat."""
    return hmac_sha256(signature, hmac_sha256(signature, vid) + hmac_sha256(signature, cid))


def chain(
    derived_key: bytes,
    identifier: bytes,
    cids: Iterable[bytes],
    vids: dict[int, bytes] | None = None,
) -> bytes:
    """The signature of a macaroon; `vids` maps caveat index to verification id."""
    signature = hmac_sha256(derived_key, identifier)
    if not vids:
        for cid in cids:
            signature = hmac_sha256(signature, cid)
        return signature
    for index, cid in enumerate(cids):
        vid = vids.get(index)
        if vid is None:
            signature = hmac_sha256(signature, cid)
        else:
            signature = extend_third_party(signature, vid, cid)
    return signature


def signatures_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(a, b)
