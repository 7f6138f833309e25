"""Gateway policy: requests a token allows, decided again by platform rules; its cache."""

from __future__ import annotations

from pathlib import Path

import cedarpy
import pytest

import agentcaps
from agentcaps.decision import Decision, Reason
from agentcaps.policy import (
    GatewayPolicy,
    PolicyKind,
    PolicyStore,
    apply_gateway_policy,
    gateway_schema,
)
from agentcaps.policy.gateway import gateway_request

NOW = 1_800_000_100
RULES = """\
@id("allow")
permit (principal, action, resource);

@id("no-billing-deletes")
forbid (principal, action == Action::"delete", resource)
when { resource.path like "billing/*" };

@id("shallow-writes")
forbid (principal, action == Action::"write", resource)
when { context.delegation_depth > 1 };
"""
DECISION = Decision(
    True,
    Reason.OK,
    "ab" * 16,
    "k1",
    "acme",
    "alice",
    ("planner", "fetcher"),
    ("cd" * 16,),
    ("sync",),
    1_800_000_600,
    1_800_000_000,
)


def gateway(text: str = RULES, **options: int) -> GatewayPolicy:
    return GatewayPolicy(PolicyStore.from_text(text, PolicyKind.GATEWAY, name="t"), **options)


def test_request_is_last_holder_action_resource_and_context():
    """Agent::"<last holder>", Action::"<action>", Resource::"<resource>" with path, and the context."""
    request, entities = gateway_request(
        "fetcher", "read", "crm/1", "acme", "alice", ("planner", "fetcher"), ("sync",), "", 42
    )
    assert request["principal"] == {"type": "Agent", "id": "fetcher"}
    assert request["action"] == {"type": "Action", "id": "read"}
    assert request["resource"] == {"type": "Resource", "id": "crm/1"}
    assert request["context"] == {
        "customer": "acme",
        "user": "alice",
        "chain": ["planner", "fetcher"],
        "delegation_depth": 1,
        "purposes": ["sync"],
        "purpose": "",
        "token_age": 42,
    }
    attrs = {"path": "crm/1", "area": "crm"}
    assert entities == [{"uid": request["resource"], "attrs": attrs, "parents": []}]


def test_gateway_requests_conform_to_the_shipped_schema():
    """Cedar, given the gateway schema, finds nothing wrong with the request agentcaps builds."""
    request, entities = gateway_request(
        "fetcher", "write", "crm/1", "acme", "alice", ("planner", "fetcher"), ("sync",), "s", 1
    )
    schema = cedarpy.Schema.from_str(gateway_schema())
    result = cedarpy.is_authorized(
        request, "permit (principal, action, resource);", entities, schema
    )
    assert result.diagnostics.errors == [] and result.allowed


def test_a_platform_forbid_denies_what_the_token_allows():
    """delete on billing/… is denied by no-billing-deletes; elsewhere the permit allows."""
    policy = gateway()
    denied = policy.check(DECISION, "billing/invoices/7", "delete", None, NOW)
    assert not denied.allowed and denied.policies == ("no-billing-deletes",)
    allowed = policy.check(DECISION, "crm/contacts/7", "delete", None, NOW)
    assert allowed.allowed and allowed.policies == ("allow",)


def test_delegation_depth_counts_delegations_after_the_first_holder():
    """Chain (planner, fetcher) is depth 1: a write passes; one more delegation is refused."""
    policy = gateway()
    assert policy.check(DECISION, "crm/1", "write", None, NOW).allowed
    deeper = DECISION._replace(chain=("planner", "fetcher", "writer"))
    assert policy.check(deeper, "crm/1", "write", None, NOW).policies == ("shallow-writes",)


def test_apply_turns_a_policy_deny_into_policy_denied_keeping_provenance():
    """apply_gateway_policy: reason policy_denied, allowed False, chain and ids unchanged."""
    outcome = apply_gateway_policy(
        gateway(), DECISION, resource="billing/x", action="delete", purpose=None, now=NOW
    )
    assert outcome.decision == DECISION._replace(allowed=False, reason=Reason.POLICY_DENIED)
    assert outcome.decision.to_dict()["reason"] == "policy_denied"
    assert outcome.policy is not None and outcome.policy.policies == ("no-billing-deletes",)


def test_apply_passes_denials_and_missing_policies_through():
    """A token's own deny is not asked about; without a gateway policy nothing changes."""
    denied = Decision(False, Reason.RESOURCE_DENIED)
    kw = {"resource": "crm/1", "action": "read", "purpose": None, "now": NOW}
    assert apply_gateway_policy(gateway(), denied, **kw) == (denied, None)
    assert apply_gateway_policy(None, DECISION, **kw) == (DECISION, None)


def test_check_refuses_a_denied_decision():
    """check() is for requests a token allowed; a deny has no chain to trust."""
    with pytest.raises(ValueError):
        gateway().check(Decision(False, Reason.EXPIRED), "crm/1", "read", None, NOW)


def test_repeated_requests_are_answered_from_the_cache():
    """The second identical request is a cache hit returning the same decision."""
    policy = gateway()
    first = policy.check(DECISION, "crm/1", "read", "sync", NOW)
    second = policy.check(DECISION, "crm/1", "read", "sync", NOW + 30)
    info = policy.cache_info()
    assert second is first
    assert (info.hits, info.misses) == (1, 1)


def test_the_cache_is_keyed_by_the_whole_request():
    """A different resource, action, purpose, chain or customer is a different entry."""
    policy = gateway()
    policy.check(DECISION, "crm/1", "read", None, NOW)
    policy.check(DECISION, "crm/2", "read", None, NOW)
    policy.check(DECISION, "crm/1", "write", None, NOW)
    policy.check(DECISION, "crm/1", "read", "sync", NOW)
    policy.check(DECISION._replace(chain=("planner",)), "crm/1", "read", None, NOW)
    policy.check(DECISION._replace(customer="globex"), "crm/1", "read", None, NOW)
    assert policy.cache_info().misses == 6 and policy.cache_info().hits == 0


@pytest.mark.parametrize(
    "condition",
    [
        "context.token_age > 60",
        'context["token_age"] > 60',
        "context has token_age && context.token_age > 60",
    ],
)
def test_token_age_counts_when_a_policy_reads_it(condition):
    """A policy on token_age sees the real age: the same request allowed young, denied old."""
    text = (
        "permit (principal, action, resource);\n"
        f'@id("fresh")\nforbid (principal, action, resource) when {{ {condition} }};'
    )
    policy = gateway(text)
    assert policy.check(DECISION, "crm/1", "read", None, DECISION.issued_at + 10).allowed
    old = policy.check(DECISION, "crm/1", "read", None, DECISION.issued_at + 61)
    assert not old.allowed and old.policies == ("fresh",)


def test_token_age_stays_out_of_the_key_when_no_policy_reads_it():
    """Without a policy on token_age, the same request a minute later is still a cache hit."""
    policy = gateway()
    policy.check(DECISION, "crm/1", "read", None, NOW)
    policy.check(DECISION, "crm/1", "read", None, NOW + 60)
    assert policy.cache_info().hits == 1


def test_a_policy_using_the_whole_context_record_keeps_token_age_in_play():
    """`context` used as a whole value: every attribute may matter, token_age included."""
    text = (
        "permit (principal, action, resource);\n"
        '@id("exact")\nforbid (principal, action, resource) when { context == '
        '{"customer": "acme", "user": "alice", "chain": ["planner", "fetcher"], '
        '"delegation_depth": 1, "purposes": ["sync"], "purpose": "", "token_age": 100} };'
    )
    policy = gateway(text)
    assert not policy.check(DECISION, "crm/1", "read", None, DECISION.issued_at + 100).allowed
    assert policy.check(DECISION, "crm/1", "read", None, DECISION.issued_at + 101).allowed


def test_a_reload_starts_a_fresh_cache_and_applies_the_new_rules(tmp_path: Path):
    """After a reload the next check misses the cache and is decided by the new policy."""
    (tmp_path / "g.cedar").write_text('@id("allow")\npermit (principal, action, resource);\n')
    store = PolicyStore.from_dir(tmp_path, PolicyKind.GATEWAY)
    policy = GatewayPolicy(store)
    assert policy.check(DECISION, "crm/1", "read", None, NOW).allowed
    assert policy.check(DECISION, "crm/1", "read", None, NOW).allowed
    assert policy.cache_info().hits == 1
    (tmp_path / "g.cedar").write_text('@id("closed")\nforbid (principal, action, resource);\n')
    assert store.reload().swapped
    after = policy.check(DECISION, "crm/1", "read", None, NOW)
    assert not after.allowed and after.policies == ("closed",)
    assert after.version == store.version
    assert (policy.cache_info().hits, policy.cache_info().misses) == (0, 1)


def test_the_cache_is_bounded():
    """cache_size bounds the entries; 0 turns the cache off."""
    policy = gateway(cache_size=2)
    for n in range(5):
        policy.check(DECISION, f"crm/{n}", "read", None, NOW)
    assert policy.cache_info().currsize == 2
    assert gateway(cache_size=0).cache_info() is None


def test_gateway_policy_needs_a_gateway_store():
    """A store of mint policies cannot serve as a gateway policy."""
    with pytest.raises(ValueError):
        GatewayPolicy(PolicyStore.from_text("permit (principal, action, resource);"))


def test_after_verify_the_gateway_policy_denies_what_caveats_allow(memory_stores, clock):
    """End to end in process: verify allows a delete under billing/, the gateway policy refuses it."""
    token = memory_stores.minter().mint(
        customer="acme",
        user="alice",
        agent="planner",
        resources=["billing/**"],
        actions=["read", "delete"],
        purposes=["invoicing"],
        ttl=600,
    )
    child = agentcaps.attenuate(token, delegate_to="fetcher", clock=clock)
    verifier = memory_stores.verifier()
    request = {"resource": "billing/invoices/7", "action": "delete"}
    decision = verifier.verify(child, **request)
    assert decision.allowed
    outcome = apply_gateway_policy(gateway(), decision, purpose=None, now=int(clock()), **request)
    assert not outcome.decision.allowed
    assert outcome.decision.reason is Reason.POLICY_DENIED
    assert outcome.decision.chain == ("planner", "fetcher")
    assert outcome.policy.policies == ("no-billing-deletes",)
