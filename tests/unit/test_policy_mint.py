"""Mint-time policy: the Cedar request for a mint, the built-in default, and folder policies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cedarpy
import pytest

from agentcaps.policy import (
    MINT_SCHEMA,
    MintGrant,
    MintIssuer,
    PolicyDenied,
    PolicyEngine,
    PolicyError,
    default_mint_policy,
)
from agentcaps.policy.mint import areas, mint_request
from agentcaps.policy.schema import PolicyKind
from agentcaps.policy.store import PolicyStore

NOW = 1_800_000_000
GRANT = MintGrant(
    token_id="ab" * 16,
    customer="acme",
    user="alice",
    agent="planner",
    resources=("crm/**",),
    actions=("read",),
    purposes=("sync",),
    ttl=600,
)
ACME = MintIssuer.issuer("acme")
ADMIN = MintIssuer.admin()


def folder(tmp_path: Path, **files: str) -> Path:
    """A policy folder holding `files` (name without .cedar -> text)."""
    for name, text in files.items():
        (tmp_path / f"{name}.cedar").write_text(text)
    return tmp_path


def test_mint_request_is_principal_action_grant_with_attributes_and_now():
    """A mint becomes Issuer::"acme" / Action::"mint" / Grant::"<token id>" with the grant's fields."""
    request, entities = mint_request(ACME, dataclasses.replace(GRANT, audience=("gw",)), NOW)
    assert request["principal"] == {"type": "Issuer", "id": "acme"}
    assert request["action"] == {"type": "Action", "id": "mint"}
    assert request["resource"] == {"type": "Grant", "id": "ab" * 16}
    assert request["context"] == {"now": NOW}
    issuer, grant = entities
    assert issuer["attrs"] == {"customer": "acme"}
    assert grant["attrs"] == {
        "customer": "acme",
        "user": "alice",
        "agent": "planner",
        "resources": ["crm/**"],
        "areas": ["crm"],
        "actions": ["read"],
        "purposes": ["sync"],
        "audience": ["gw"],
        "ttl": 600,
        "max_delegations": -1,
    }


def test_admin_is_admin_admin_and_a_delegation_limit_is_passed_as_is():
    """An admin token is Admin::"admin"; max_delegations=2 is 2 (None would be -1)."""
    request, entities = mint_request(ADMIN, dataclasses.replace(GRANT, max_delegations=2), NOW)
    assert request["principal"] == {"type": "Admin", "id": "admin"}
    assert entities[1]["attrs"]["max_delegations"] == 2


@pytest.mark.parametrize("issuer", [ACME, ADMIN])
def test_mint_requests_conform_to_the_shipped_schema(issuer):
    """Cedar, given the schema, finds nothing wrong with the request agentcaps builds."""
    request, entities = mint_request(issuer, GRANT, NOW)
    policy = 'permit (principal, action == Action::"mint", resource);'
    result = cedarpy.is_authorized(request, policy, entities, cedarpy.Schema.from_str(MINT_SCHEMA))
    assert result.diagnostics.errors == [] and result.allowed


def test_default_policy_lets_an_issuer_mint_for_its_own_customer():
    """Built-in default: acme's issuer mints for acme, decided by builtin:issuer-own-customer."""
    decision = PolicyEngine.default(3600).authorize_mint(ACME, GRANT, NOW)
    assert decision.allowed
    assert decision.policies == ("builtin:issuer-own-customer",)
    assert decision.version.startswith("builtin-")


def test_default_policy_denies_an_issuer_minting_for_another_customer():
    """Built-in default: globex's issuer cannot mint for acme; nothing permits it (default deny)."""
    decision = PolicyEngine.default().authorize_mint(MintIssuer.issuer("globex"), GRANT, NOW)
    assert not decision.allowed
    assert decision.policies == ()
    assert "default deny" in decision.detail


def test_default_policy_caps_ttl_at_the_deployment_max_ttl():
    """Built-in default with max_ttl 900: ttl 900 passes, 901 is denied, for admins too."""
    engine = PolicyEngine.default(900)
    assert engine.authorize_mint(ACME, dataclasses.replace(GRANT, ttl=900), NOW).allowed
    assert not engine.authorize_mint(ACME, dataclasses.replace(GRANT, ttl=901), NOW).allowed
    assert not engine.authorize_mint(ADMIN, dataclasses.replace(GRANT, ttl=901), NOW).allowed


def test_default_policy_lets_an_admin_mint_for_any_customer():
    """Built-in default: an admin mints for any customer within the ttl."""
    grant = dataclasses.replace(GRANT, customer="initech")
    decision = PolicyEngine.default().authorize_mint(ADMIN, grant, NOW)
    assert decision.allowed and decision.policies == ("builtin:admin",)


def test_default_policy_text_carries_the_max_ttl():
    """The built-in text has AGENTCAPS_MAX_TTL's value templated in, and a bad value is refused."""
    assert "resource.ttl <= 1234" in default_mint_policy(1234)
    with pytest.raises(ValueError):
        default_mint_policy(0)


def test_folder_without_a_permit_denies_every_mint(tmp_path):
    """Cedar's default deny: a folder whose only policy is a forbid allows nothing."""
    engine = PolicyEngine.from_dir(
        folder(tmp_path, a="forbid (principal, action, resource) when { resource.ttl > 9999 };")
    )
    decision = engine.authorize_mint(ACME, GRANT, NOW)
    assert not decision.allowed and decision.policies == ()


def test_forbid_wins_over_permit_and_is_named(tmp_path):
    """A matching forbid denies even though a permit matches too; the denial names the forbid."""
    engine = PolicyEngine.from_dir(
        folder(
            tmp_path,
            allow="permit (principal, action, resource);",
            limits='@id("short-ttl")\nforbid (principal, action, resource) when { resource.ttl > 300 };',
        )
    )
    decision = engine.authorize_mint(ACME, GRANT, NOW)
    assert not decision.allowed
    assert decision.policies == ("short-ttl",)
    assert "forbidden by policy short-ttl" in decision.detail


def test_allow_names_every_permit_that_applied_by_file_and_position(tmp_path):
    """Policies without @id are named <file>#<n>, counting from 1, in load order."""
    engine = PolicyEngine.from_dir(
        folder(
            tmp_path,
            a="permit (principal, action, resource) when { resource.ttl > 9999 };\n"
            "permit (principal is Issuer, action, resource);",
            b="permit (principal, action, resource) when { context.now > 0 };",
        )
    )
    decision = engine.authorize_mint(ACME, GRANT, NOW)
    assert decision.allowed
    assert decision.policies == ("a.cedar#2", "b.cedar#1")


def test_a_forbid_that_fails_to_evaluate_denies(tmp_path):
    """Fail closed: a forbid that errors (integer overflow) denies instead of being skipped."""
    engine = PolicyEngine.from_dir(
        folder(
            tmp_path,
            allow="permit (principal, action, resource);",
            overflow='@id("overflow")\nforbid (principal, action, resource)\n'
            "when { resource.ttl + 9223372036854775807 > 0 };",
        )
    )
    decision = engine.authorize_mint(ACME, GRANT, NOW)
    assert not decision.allowed
    assert decision.policies == ("overflow",)
    assert decision.errors and "overflow" in decision.errors[0]


def test_a_permit_that_fails_to_evaluate_only_loses_its_allow(tmp_path):
    """A permit that errors is skipped (Cedar's rule); another permit still allows, errors reported."""
    engine = PolicyEngine.from_dir(
        folder(
            tmp_path,
            allow='@id("allow")\npermit (principal, action, resource);',
            overflow="permit (principal, action, resource)\n"
            "when { resource.ttl + 9223372036854775807 > 0 };",
        )
    )
    decision = engine.authorize_mint(ACME, GRANT, NOW)
    assert decision.allowed and decision.policies == ("allow",)
    assert len(decision.errors) == 1


def test_refusal_is_policy_denied_naming_the_policies():
    """A denied decision's refusal() is PolicyDenied: reason policy_denied, the policies, the version."""
    decision = PolicyEngine.default().authorize_mint(
        ACME, dataclasses.replace(GRANT, ttl=99999), NOW
    )
    error = decision.refusal()
    assert isinstance(error, PolicyDenied)
    assert error.reason == "policy_denied"
    assert error.version == decision.version
    assert "default deny" in str(error)
    assert decision.to_dict() == {
        "allowed": False,
        "policies": [],
        "version": decision.version,
        "errors": [],
    }


def test_engine_refuses_a_store_of_gateway_policies(tmp_path):
    """PolicyEngine takes mint policies only."""
    from agentcaps.policy import PolicyStore

    store = PolicyStore.from_text("permit (principal, action, resource);", PolicyKind.GATEWAY)
    with pytest.raises(ValueError):
        PolicyEngine(store)


def test_missing_folder_is_a_policy_error(tmp_path):
    """A policy folder that does not exist cannot be loaded, and says which folder."""
    with pytest.raises(PolicyError, match="no such policy folder"):
        PolicyEngine.from_dir(tmp_path / "nope")


def test_areas_name_each_patterns_top_level_area_and_a_wildcard_as_star():
    """`resource.areas`: a forbid over it catches every spelling of a glob, as one over globs cannot."""
    assert areas(["crm/**", "hr/cases/*", "crm/deals/*"]) == ["crm", "hr"]
    for catch_all in (["**"], ["**/**"], ["*/**"], ["**/*"], ["*/contacts/*"]):
        assert areas(catch_all) == ["*"]
    forbid = (
        '@id("no-hr") forbid (principal, action, resource) when { resource.areas.contains("hr") };'
    )
    engine = PolicyEngine(
        PolicyStore.from_text(default_mint_policy(3600) + "\n" + forbid, PolicyKind.MINT)
    )
    for spelling in ("hr/**", "hr/*/**", "hr/cases/*/x"):
        grant = dataclasses.replace(GRANT, resources=("crm/**", spelling))
        assert not engine.authorize_mint(ADMIN, grant, NOW).allowed
    assert engine.authorize_mint(ADMIN, GRANT, NOW).allowed
