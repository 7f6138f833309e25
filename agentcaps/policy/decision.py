"""PolicyDecision: what a policy set decided about one request, and which policies decided it."""

from __future__ import annotations

from typing import NamedTuple

from agentcaps.policy.errors import PolicyDenied


class PolicyDecision(NamedTuple):
    """The answer of a policy set to one request.

    `policies` are the ids of the policies that determined it: the permits
    that allowed it, or the forbids that denied it (empty for Cedar's default
    deny: no permit applied). `errors` are Cedar's messages for policies that
    failed to evaluate; a forbid that fails denies (see docs/policy.md).
    `version` is the version of the policy set that decided.
    """

    allowed: bool
    policies: tuple[str, ...]
    version: str
    errors: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        """One sentence for people: the outcome and the policies behind it."""
        named = ", ".join(self.policies)
        if self.allowed:
            return f"allowed by policy {named} (policy version {self.version})"
        if self.errors and self.policies:
            why = f"policy {named} failed to evaluate: {self.errors[0]}"
        elif self.policies:
            why = f"forbidden by policy {named}"
        else:
            why = "no policy permits it (default deny)"
        return f"{why} (policy version {self.version})"

    def refusal(self) -> PolicyDenied:
        """The error this (denied) decision means to the caller: 403 policy_denied."""
        return PolicyDenied(f"the policy denies this: {self.detail}", self.policies, self.version)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, for responses and the audit trail."""
        return {
            "allowed": self.allowed,
            "policies": list(self.policies),
            "version": self.version,
            "errors": list(self.errors),
        }
