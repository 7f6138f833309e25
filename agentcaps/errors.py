"""The one exception tree agentcaps raises; details travel as attributes, never secrets."""

from __future__ import annotations

from agentcaps.decision import Decision, Reason


class AgentCapsError(Exception):
    """Base of every error agentcaps raises."""


class InvalidArgument(AgentCapsError, ValueError):
    """A caller passed a value agentcaps will not put in a token or a store."""


class InvalidToken(AgentCapsError):
    """Not a token we can read or trust; `reason` is the decision reason it maps to."""

    reason: Reason = Reason.MALFORMED

    def __init__(self, detail: str, reason: Reason | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


class MalformedToken(InvalidToken):
    """The bytes do not follow the token wire format."""

    reason = Reason.MALFORMED


class TokenTooLarge(InvalidToken):
    """The token breaks a size limit; nothing past the limit was parsed."""

    reason = Reason.TOO_LARGE


class NotAuthenticated(AgentCapsError):
    """No token was presented, or one that cannot be accepted whatever it is used for.

    `reason` says why (e.g. `expired`, `bad_signature`); None when there was no token.
    """

    def __init__(self, detail: str, reason: Reason | None = None) -> None:
        super().__init__(detail)
        self.reason = reason


class NotAllowed(AgentCapsError):
    """An acceptable token that does not allow this request; `reason` says which check refused."""

    def __init__(self, detail: str, reason: Reason) -> None:
        super().__init__(detail)
        self.reason = reason


class ConfigError(AgentCapsError):
    """Settings are missing or contradict each other; the process should not start."""


class UnknownKey(AgentCapsError):
    """No root key with this id exists (or it is not usable for the asked job)."""


class NeedsIO(AgentCapsError):
    """Deciding would mean asking a store: raised only to callers that asked for no I/O."""


class StoreUnavailable(AgentCapsError):
    """A store did not answer or cannot be trusted right now; callers fail closed."""


class UnconfirmedWrite(StoreUnavailable):
    """Written to the Redis primary, but not confirmed by its replicas in time: not acknowledged.

    `reply` is what the write answered on the primary (it did happen there).
    """

    def __init__(self, detail: str, reply: object) -> None:
        super().__init__(detail)
        self.reply = reply


class RevocationStateLost(StoreUnavailable):
    """The revocation store lost acknowledged data (flush, empty restart, stale failover).

    Verification fails closed until an operator runs `agentcaps revocations recover`.
    """


class NothingPersistsWarning(UserWarning):
    """The stores run on memory://: keys and revocations die with the process."""


# Reasons that condemn the token itself, whatever the request: the caller must
# present another one. The other denials judge this request only.
TOKEN_REJECTED = frozenset(
    {
        Reason.MALFORMED,
        Reason.TOO_LARGE,
        Reason.UNKNOWN_KEY,
        Reason.KEY_REVOKED,
        Reason.BAD_SIGNATURE,
        Reason.EXPIRED,
        Reason.NOT_YET_VALID,
        Reason.PRINCIPAL_CONFLICT,
        Reason.DELEGATION_LIMIT,
        Reason.UNKNOWN_CAVEAT,
        Reason.DISCHARGE_MISSING,
        Reason.REVOKED,
    }
)


def refusal(decision: Decision) -> AgentCapsError:
    """The error a denied decision means to whoever asked.

    NotAuthenticated when the token itself is unacceptable (forged, expired,
    revoked, ...), StoreUnavailable when revocation state is unknown, else
    NotAllowed: a good token that does not cover this request.
    """
    reason = decision.reason
    if reason is Reason.REVOCATION_UNAVAILABLE:
        return StoreUnavailable("revocation state is unknown right now; failing closed")
    if reason in TOKEN_REJECTED:
        return NotAuthenticated(f"the token is not acceptable ({reason})", reason)
    return NotAllowed(f"the token does not allow this request ({reason})", reason)
