"""The policy layer's errors, in agentcaps' one exception tree."""

from __future__ import annotations

from collections.abc import Sequence

from agentcaps.decision import Reason
from agentcaps.errors import AgentCapsError, NotAllowed


class PolicyError(AgentCapsError):
    """A policy set (or a policy test file) that cannot be used: it does not read, parse or validate.

    `messages` holds every problem found, Cedar's own words included, each
    naming its file and policy; str() is the first of them with a count.
    """

    def __init__(self, *messages: str) -> None:
        self.messages: tuple[str, ...] = messages
        more = f" (and {len(messages) - 1} more problems)" if len(messages) > 1 else ""
        super().__init__((messages[0] if messages else "policy error") + more)


class PolicyDenied(NotAllowed):
    """A mint (or request) the policy does not allow; `policies` names the policies that decided.

    HTTP maps it to 403 `{"error": "policy_denied", ...}`; `version` is the
    policy set's version, for the audit trail.
    """

    def __init__(self, detail: str, policies: Sequence[str], version: str) -> None:
        super().__init__(detail, Reason.POLICY_DENIED)
        self.policies = tuple(policies)
        self.version = version
