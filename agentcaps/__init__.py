"""agentcaps: capability tokens for AI agents, built on macaroons.

The core (this package's top level) is pure: importing it opens no connection
and pulls in neither Redis nor any web framework. `connect` imports the Redis
stores only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentcaps.claims import decode_unverified, inspect
from agentcaps.decision import Decision, Reason
from agentcaps.errors import (
    AgentCapsError,
    ConfigError,
    InvalidArgument,
    InvalidToken,
    MalformedToken,
    RevocationStateLost,
    StoreUnavailable,
    TokenTooLarge,
)
from agentcaps.keys import KeyState, KeyStore, RootKey
from agentcaps.mint import MintedToken, Minter, attenuate
from agentcaps.revocation import Revocation, RevocationKind, RevocationStore
from agentcaps.verify import Verifier
from agentcaps.wire import Limits

if TYPE_CHECKING:
    from agentcaps.stores.redis import Stores

__all__ = [
    "AgentCapsError",
    "ConfigError",
    "Decision",
    "InvalidArgument",
    "InvalidToken",
    "KeyState",
    "KeyStore",
    "Limits",
    "MalformedToken",
    "MintedToken",
    "Minter",
    "Reason",
    "Revocation",
    "RevocationKind",
    "RevocationStateLost",
    "RevocationStore",
    "RootKey",
    "StoreUnavailable",
    "TokenTooLarge",
    "Verifier",
    "attenuate",
    "connect",
    "decode_unverified",
    "inspect",
]


def connect(url: str | None = None, **options: Any) -> Stores:
    """Open the key and revocation stores at `url` (see `agentcaps.stores.redis.connect`)."""
    from agentcaps.stores.redis import connect as _connect

    return _connect(url, **options)
