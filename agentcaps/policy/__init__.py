"""Cedar policies: what may be minted, and what a gateway lets through after a token's caveats pass.

Importing this package loads cedarpy; `import agentcaps` does not. The guide
is docs/policy.md; the schemas are in `agentcaps.policy.schema`.
"""

from __future__ import annotations

from agentcaps.policy.decision import PolicyDecision
from agentcaps.policy.deployment import Policies
from agentcaps.policy.errors import PolicyDenied, PolicyError
from agentcaps.policy.gateway import (
    GatewayOutcome,
    GatewayPolicy,
    PolicedVerifier,
    apply_gateway_policy,
)
from agentcaps.policy.mint import MintGrant, MintIssuer, PolicyEngine, mint_with_policy
from agentcaps.policy.policyset import PolicySet
from agentcaps.policy.schema import MINT_SCHEMA, PolicyKind, default_mint_policy, gateway_schema
from agentcaps.policy.store import PolicyStore, PolicyWatcher, ReloadResult, install_sighup

__all__ = [
    "MINT_SCHEMA",
    "GatewayOutcome",
    "GatewayPolicy",
    "MintGrant",
    "MintIssuer",
    "PolicedVerifier",
    "Policies",
    "PolicyDecision",
    "PolicyDenied",
    "PolicyEngine",
    "PolicyError",
    "PolicyKind",
    "PolicySet",
    "PolicyStore",
    "PolicyWatcher",
    "ReloadResult",
    "apply_gateway_policy",
    "default_mint_policy",
    "gateway_schema",
    "install_sighup",
    "mint_with_policy",
]
