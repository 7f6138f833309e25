"""Root keys and the KeyStore protocol that holds them.

A root key is 32 random bytes under a key id, owned by one customer (or by the
platform, for service tokens), in one of three states: `active` signs new
tokens, `verify-only` still verifies the tokens it signed (after rotation),
`revoked` verifies nothing. Minting for a customer uses that customer's active
key, so revoking it revokes every token it signed at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from agentcaps.signature import derive_key

ROOT_KEY_BYTES = 32


class KeyState(StrEnum):
    """Lifecycle of a root key."""

    ACTIVE = "active"
    VERIFY_ONLY = "verify-only"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class RootKey:
    """A root key with its metadata; `secret` never appears in repr or logs."""

    kid: str
    customer: str | None
    state: KeyState
    created_at: int
    secret: bytes = field(repr=False)
    derived: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) != ROOT_KEY_BYTES:
            raise ValueError("a root key is 32 bytes")
        object.__setattr__(self, "derived", derive_key(self.secret))

    def to_dict(self) -> dict[str, object]:
        """Public metadata, without the secret."""
        return {
            "key_id": self.kid,
            "customer": self.customer,
            "state": self.state.value,
            "created_at": self.created_at,
        }


def new_key_id() -> str:
    """A fresh, unguessable key id."""
    return "k" + secrets.token_hex(8)


def new_secret() -> bytes:
    """32 bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(ROOT_KEY_BYTES)


class KeyStore(Protocol):
    """Where root keys live. Implementations raise StoreUnavailable when they cannot answer."""

    def get(self, kid: str, *, cached_only: bool = False) -> RootKey | None:
        """The key with this id for verification, or None if there is none. Fast: cached.

        With `cached_only`, answer from this process's memory or raise NeedsIO.
        """
        ...

    def signing_key(self, customer: str | None) -> RootKey:
        """The active key of `customer` (None: the platform), created on first use."""
        ...

    def create(self, customer: str | None) -> RootKey:
        """A new active key for `customer`; the previous active one becomes verify-only."""
        ...

    def rotate(self, kid: str) -> RootKey:
        """Replace key `kid` by a new active key of the same owner; `kid` becomes verify-only."""
        ...

    def revoke(self, kid: str) -> RootKey:
        """Revoke key `kid`: every token it signed stops verifying (`key_revoked`)."""
        ...

    def list(self) -> list[RootKey]:
        """Every key, newest first."""
        ...
