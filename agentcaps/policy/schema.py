"""The Cedar schemas agentcaps ships (mint-time and gateway) and the built-in mint policy.

The schemas are contracts: policy authors write against them, `agentcaps
policy schema` prints them, and every policy set is validated against them
before it may run. docs/policy.md explains each attribute.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class PolicyKind(StrEnum):
    """Which decision a policy set makes: what may be minted, or what a gateway lets through."""

    MINT = "mint"
    GATEWAY = "gateway"


MINT_SCHEMA = """\
// agentcaps mint-time policy schema: every mint is one request
//   principal Issuer::"<customer>" (an issuer token) or Admin::"admin" (an admin token),
//   action Action::"mint", resource Grant::"<new token id>", context { now }.

// The customer's backend, holding an issuer token for that customer.
entity Issuer = {
  customer: String,
};

// The platform's operators, holding an admin token.
entity Admin;

// The token being minted.
entity Grant = {
  customer: String,
  user: String,
  agent: String,
  resources: Set<String>,
  // the first segment of each resource pattern, "*" for one that starts
  // with a wildcard (it can reach any top-level area): what forbids match
  areas: Set<String>,
  actions: Set<String>,
  purposes: Set<String>,
  audience: Set<String>,
  // seconds from now until it expires
  ttl: Long,
  // -1 when the token may be delegated without limit
  max_delegations: Long,
};

action "mint" appliesTo {
  principal: [Issuer, Admin],
  resource: Grant,
  context: {
    // unix seconds
    now: Long,
  },
};
"""

# The actions every gateway schema declares; a gateway policy set may name more
# (route rules can map requests to any action), and those are declared too.
GATEWAY_ACTIONS = ("read", "write", "delete")

_GATEWAY_SCHEMA = """\
// agentcaps gateway policy schema: every request whose token's caveats pass is one request
//   principal Agent::"<last holder>", action Action::"<action>",
//   resource Resource::"<resource>", context as below.

// The agent presenting the token: the last holder of its delegation chain.
entity Agent;

// What is asked for, e.g. Resource::"crm/contacts/42"; `path` is the same string,
// so that policies can match it (resource.path like "crm/contacts/*"), and `area`
// its first segment ("crm"): resource.area == "billing" is billing and all below it.
entity Resource = {
  path: String,
  area: String,
};

type GatewayContext = {
  customer: String,
  user: String,
  // every agent in the provenance chain, first holder to last (as a set: order is not kept)
  chain: Set<String>,
  // delegations after the first holder: 0 for the agent the token was minted for
  delegation_depth: Long,
  // the purposes the token allows
  purposes: Set<String>,
  // the purpose the request declares, "" when it declares none
  purpose: String,
  // seconds since the token was minted
  token_age: Long,
};

action {actions} appliesTo {
  principal: Agent,
  resource: Resource,
  context: GatewayContext,
};
"""


def cedar_string(text: str) -> str:
    """`text` as a Cedar string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gateway_schema(extra_actions: Iterable[str] = ()) -> str:
    """The gateway schema, declaring read, write, delete and `extra_actions`."""
    names = list(GATEWAY_ACTIONS)
    names += sorted(set(extra_actions) - set(GATEWAY_ACTIONS))
    return _GATEWAY_SCHEMA.replace("{actions}", ", ".join(cedar_string(n) for n in names))


def schema_text(kind: PolicyKind, extra_actions: Iterable[str] = ()) -> str:
    """The schema a policy set of `kind` is validated against."""
    return MINT_SCHEMA if kind is PolicyKind.MINT else gateway_schema(extra_actions)


_DEFAULT_MINT_POLICY = """\
// agentcaps built-in mint policy: in force when no policy folder is configured
// (AGENTCAPS_POLICY_DIR / --policy-dir). Longest ttl: {max_ttl} s (AGENTCAPS_MAX_TTL).
//
// An issuer mints only for its own customer, for at most the deployment's
// maximum token lifetime.
@id("builtin:issuer-own-customer")
permit (
  principal is Issuer,
  action == Action::"mint",
  resource is Grant
)
when { principal.customer == resource.customer && resource.ttl <= {max_ttl} };

// An admin mints anything, within the same lifetime.
@id("builtin:admin")
permit (
  principal is Admin,
  action == Action::"mint",
  resource is Grant
)
when { resource.ttl <= {max_ttl} };
"""


def default_mint_policy(max_ttl: int) -> str:
    """The built-in mint policy text, with the deployment's maximum ttl filled in."""
    if type(max_ttl) is not int or max_ttl < 1:
        raise ValueError("max_ttl is a whole number of seconds, at least 1")
    return _DEFAULT_MINT_POLICY.replace("{max_ttl}", str(max_ttl))
