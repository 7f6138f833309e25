"""The one exception tree agentcaps raises; details travel as attributes, never secrets."""

from __future__ import annotations

from agentcaps.decision import Reason


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


class ConfigError(AgentCapsError):
    """Settings are missing or contradict each other; the process should not start."""


class UnknownKey(AgentCapsError):
    """No root key with this id exists (or it is not usable for the asked job)."""


class StoreUnavailable(AgentCapsError):
    """A store did not answer or cannot be trusted right now; callers fail closed."""


class RevocationStateLost(StoreUnavailable):
    """The revocation store lost acknowledged data (flush, empty restart, stale failover).

    Verification fails closed until an operator runs `agentcaps revocations recover`.
    """


class NothingPersistsWarning(UserWarning):
    """The stores run on memory://: keys and revocations die with the process."""
