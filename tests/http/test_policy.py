"""The service under policy: mint-time policy on POST /v1/tokens, gateway policy on verify and forward-auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentcaps import attenuate
from agentcaps.config import Settings
from agentcaps.http.app import create_app
from agentcaps.http.service import Service
from agentcaps.service_tokens import mint_admin_token
from agentcaps.stores.redis import Stores
from tests.conftest import MASTER_KEY, SCOPE, FakeClock
from tests.http.conftest import GATEWAY, Api, assert_error

# Issuers mint for their own customer, reads only; admins anything.
MINT_POLICY = """
@id("issuers-own-customer")
permit (principal is Issuer, action == Action::"mint", resource is Grant)
when { resource.customer == principal.customer };

@id("no-writes")
forbid (principal is Issuer, action == Action::"mint", resource is Grant)
when { resource.actions.contains("write") };

@id("admins")
permit (principal is Admin, action == Action::"mint", resource is Grant);
"""
RELAXED = MINT_POLICY.replace('resource.actions.contains("write")', "resource.ttl > 86400")
GATEWAY_POLICY = """
@id("allow-all")
permit (principal, action, resource);

@id("no-deletes-under-billing")
forbid (principal, action == Action::"delete", resource)
when { resource.path like "billing/*" };
"""


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    write(folder, "mint.cedar", MINT_POLICY)
    write(folder / "gateway", "gateway.cedar", GATEWAY_POLICY)
    return folder


@pytest.fixture
def api(memory_stores: Stores, clock: FakeClock, policy_dir: Path) -> Iterator[Api]:
    """The service with the policy folder above (no file watching: reloads are explicit)."""
    settings = Settings(
        master_key=MASTER_KEY,
        audience=GATEWAY,
        policy_dir=str(policy_dir),
        policy_poll_interval=0,
    )
    app = create_app(settings, memory_stores, clock)
    service: Service = app.state.service
    admin = mint_admin_token(service.service_minter, ttl=3600).token
    with TestClient(app) as client:
        yield Api(client, service, clock, admin)


def mint_body(**overrides: object) -> dict[str, object]:
    return {**SCOPE, **overrides}


def test_mint_the_policy_forbids_is_403_policy_denied_naming_the_policy(api: Api) -> None:
    """An issuer's mint that a forbid policy matches is refused 403 policy_denied, naming it."""
    body = assert_error(
        api.post("/v1/tokens", mint_body(actions=["read", "write"]), api.issuer()),
        403,
        "policy_denied",
    )
    assert "no-writes" in body["detail"]


def test_mint_the_policy_allows_is_minted(api: Api) -> None:
    """The same issuer minting what the policy permits gets its token."""
    response = api.post("/v1/tokens", mint_body(actions=["read"]), api.issuer())
    assert response.status_code == 201, response.text


def test_admin_mints_are_decided_as_admin(api: Api) -> None:
    """An admin token is the Admin principal: the forbid on issuers does not apply."""
    response = api.post("/v1/tokens", mint_body(actions=["read", "write"]), api.admin)
    assert response.status_code == 201, response.text


def test_a_delegated_admin_token_is_still_the_admin_principal(api: Api, policy_dir: Path) -> None:
    """Delegating an admin token offline does not make it an issuer of whatever customer a mint names.

    Admins here are held to short, support-only grants; issuers are not. A
    delegated admin token must meet the admins' rules, not slip past them.
    """
    write(
        policy_dir,
        "mint.cedar",
        """
@id("issuers-own-customer")
permit (principal is Issuer, action == Action::"mint", resource is Grant)
when { resource.customer == principal.customer };

@id("admins-break-glass")
permit (principal is Admin, action == Action::"mint", resource is Grant)
when { resource.ttl <= 300 };
""",
    )
    api.service.policies.reload()
    delegated = attenuate(api.admin, delegate_to="ops-bot")
    for token in (api.admin, delegated):
        assert_error(api.post("/v1/tokens", mint_body(ttl=3600), token), 403, "policy_denied")
        assert api.post("/v1/tokens", mint_body(ttl=300), token).status_code == 201
    assert api.post("/v1/tokens", mint_body(ttl=3600), api.issuer()).status_code == 201


def test_a_reloaded_policy_decides_the_next_mint_without_a_restart(
    api: Api, policy_dir: Path
) -> None:
    """After the policy file changes and is reloaded, the mint it denied before is minted."""
    issuer = api.issuer()
    assert api.post("/v1/tokens", mint_body(), issuer).status_code == 403
    write(policy_dir, "mint.cedar", RELAXED)
    api.service.policies.reload()
    assert api.post("/v1/tokens", mint_body(), issuer).status_code == 201


def test_a_broken_policy_never_replaces_the_running_one_and_readyz_says_so(
    api: Api, policy_dir: Path
) -> None:
    """A reload of a file that does not parse keeps the old set deciding and shows in /readyz."""
    version = api.service.policies.engine.version
    write(policy_dir, "mint.cedar", "permit (principal, action, resource")
    api.service.policies.reload()
    assert api.service.policies.engine.version == version
    assert (
        api.post("/v1/tokens", mint_body(actions=["read", "write"]), api.issuer()).status_code
        == 403
    )
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["mint_policy"].startswith("reload failed, still running")


def test_gateway_policy_denies_what_the_token_allows_in_verify(api: Api) -> None:
    """POST /v1/verify: a delete the token allows is denied policy_denied by the gateway policy."""
    token = api.agent_token(resources=["billing/**"], actions=["delete"])
    request = {"token": token, "resource": "billing/invoices", "action": "delete"}
    decision = api.post("/v1/verify", request).json()
    assert decision["allowed"] is False and decision["reason"] == "policy_denied"
    assert decision["chain"] == ["planner"]
    allowed = api.post("/v1/verify", {**request, "resource": "crm/contacts"}).json()
    assert allowed["reason"] == "resource_denied"  # the token's own caveats still decide first


def test_gateway_policy_makes_forward_auth_answer_403(api: Api) -> None:
    """Forward-auth answers 403 policy_denied for a request the token allows and the policy forbids."""
    token = api.agent_token(resources=["billing/**"], actions=["delete", "read"])
    denied = api.client.get(
        "/v1/authz",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Original-Method": "DELETE",
            "X-Original-URI": "/billing/invoices",
        },
    )
    assert denied.status_code == 403
    assert denied.headers["x-agentcaps-reason"] == "policy_denied"
    allowed = api.client.get(
        "/v1/authz",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Original-Method": "GET",
            "X-Original-URI": "/billing/invoices",
        },
    )
    assert allowed.status_code == 200
