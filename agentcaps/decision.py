"""Reason codes and the Decision a verification returns: the verifier's whole answer."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Reason(StrEnum):
    """Why a token was allowed or denied; the strings are a stable contract (DESIGN.md)."""

    OK = "ok"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    RESOURCE_DENIED = "resource_denied"
    ACTION_DENIED = "action_denied"
    PURPOSE_DENIED = "purpose_denied"
    AUDIENCE_DENIED = "audience_denied"
    ACTOR_MISMATCH = "actor_mismatch"
    PRINCIPAL_CONFLICT = "principal_conflict"
    DELEGATION_LIMIT = "delegation_limit"
    UNKNOWN_CAVEAT = "unknown_caveat"
    DISCHARGE_MISSING = "discharge_missing"
    REVOKED = "revoked"
    REVOCATION_UNAVAILABLE = "revocation_unavailable"
    # The token's caveats allow the request, but the gateway policy (issue 5) does not.
    POLICY_DENIED = "policy_denied"


class Decision(NamedTuple):
    """The outcome of one verification, with the provenance it was decided on.

    Identity fields are filled as far as the token could be trusted: a token that
    failed its signature check reports no customer, user or chain, because none
    of those claims can be believed. (A NamedTuple: immutable and cheap to
    build on the hot path.)
    """

    allowed: bool
    reason: Reason
    token_id: str | None = None
    key_id: str | None = None
    customer: str | None = None
    user: str | None = None
    chain: tuple[str, ...] = ()
    delegation_ids: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    expires_at: int | None = None
    issued_at: int | None = None

    @property
    def agent(self) -> str | None:
        """The last holder of the token: who is acting now."""
        return self.chain[-1] if self.chain else None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view; token ids and delegation ids are lowercase hex."""
        return {
            "allowed": self.allowed,
            "reason": self.reason.value,
            "token_id": self.token_id,
            "key_id": self.key_id,
            "customer": self.customer,
            "user": self.user,
            "agent": self.agent,
            "chain": list(self.chain),
            "delegation_ids": list(self.delegation_ids),
            "purposes": list(self.purposes),
            "expires_at": self.expires_at,
            "issued_at": self.issued_at,
        }


def deny(reason: Reason) -> Decision:
    """A decision that trusts nothing from the token."""
    return Decision(allowed=False, reason=reason)
