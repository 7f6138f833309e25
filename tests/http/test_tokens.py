"""Issuers, minting, attenuation and verification over HTTP."""

from __future__ import annotations

import agentcaps
from tests.conftest import SCOPE
from tests.http.conftest import GATEWAY, Api, assert_error

REQUEST = {"resource": "crm/contacts/42", "action": "read"}


def test_an_admin_creates_an_issuer_whose_token_mints_for_its_customer(api: Api) -> None:
    """POST /v1/issuers → 201 {token, token_id, expires_at}; that token mints for acme (201)."""
    response = api.post("/v1/issuers", {"customer": "acme", "ttl": 7200}, api.admin)
    assert response.status_code == 201
    issuer = response.json()
    assert {"token", "token_id", "expires_at"} <= set(issuer)
    assert issuer["expires_at"] == int(api.clock()) + 7200
    assert response.headers["cache-control"] == "no-store"
    minted = api.post("/v1/tokens", SCOPE, issuer["token"])
    assert minted.status_code == 201
    assert set(minted.json()) == {"token", "token_id", "key_id", "issued_at", "expires_at"}
    assert minted.headers["cache-control"] == "no-store"


def test_minted_tokens_are_signed_by_the_customers_key_and_carry_the_request(api: Api) -> None:
    """The minted token names the principal and agent, and is signed by acme's key, not the platform's."""
    minted = api.post(
        "/v1/tokens", {**SCOPE, "audience": [GATEWAY], "max_delegations": 1}, api.issuer()
    ).json()
    key = api.service.stores.keys.get(minted["key_id"])
    assert key is not None and key.customer == "acme"
    view = agentcaps.inspect(minted["token"])
    assert (view["customer"], view["user"], view["chain"]) == ("acme", "alice", ["planner"])
    assert view["token_id"] == minted["token_id"]


def test_mint_over_the_deployments_max_ttl_is_422_naming_ttl(api: Api) -> None:
    """A ttl above AGENTCAPS_MAX_TTL is refused by the library's check, answered 422."""
    body = assert_error(api.post("/v1/tokens", {**SCOPE, "ttl": 10**6}, api.issuer()), 422)
    assert body["detail"].startswith("ttl")


def test_attenuate_narrows_without_any_credential(api: Api) -> None:
    """POST /v1/tokens/attenuate needs no bearer; the result allows less, delegated to fetcher."""
    token = api.agent_token()
    response = api.post(
        "/v1/tokens/attenuate",
        {"token": token, "resources": ["crm/contacts/*"], "delegate_to": "fetcher", "ttl": 60},
    )
    assert response.status_code == 201 and response.headers["cache-control"] == "no-store"
    child = response.json()["token"]
    allowed = api.post("/v1/verify", {"token": child, **REQUEST, "actor": "fetcher"}).json()
    assert allowed["allowed"] and allowed["chain"] == ["planner", "fetcher"]
    denied = api.post("/v1/verify", {"token": child, "resource": "crm/deals/1", "action": "read"})
    assert denied.json()["reason"] == "resource_denied"


def test_attenuate_refuses_a_non_token_and_an_empty_request(api: Api) -> None:
    """A body token that is not a token → 422 invalid_token; no option → 422 invalid_argument."""
    assert_error(
        api.post("/v1/tokens/attenuate", {"token": "agc_x", "ttl": 5}), 422, "invalid_token"
    )
    assert_error(
        api.post("/v1/tokens/attenuate", {"token": api.agent_token()}), 422, "invalid_argument"
    )
    for huge in ({"ttl": 2**64}, {"expires_at": 2**64}):  # beyond what a caveat carries
        response = api.post("/v1/tokens/attenuate", {"token": api.agent_token(), **huge})
        assert_error(response, 422, "invalid_argument")


def test_verify_answers_200_with_the_whole_decision(api: Api) -> None:
    """POST /v1/verify returns allowed, reason and provenance fields, allowed or not."""
    token = api.agent_token()
    body = api.post("/v1/verify", {"token": token, **REQUEST, "purpose": "sync"}).json()
    assert body["allowed"] is True and body["reason"] == "ok"
    for name in ("token_id", "key_id", "customer", "user", "chain", "delegation_ids", "purposes",
                 "expires_at"):  # fmt: skip
        assert name in body
    assert (body["customer"], body["user"], body["purposes"]) == ("acme", "alice", ["sync"])
    denied = api.post("/v1/verify", {"token": token, **REQUEST, "action": "delete"})
    assert denied.status_code == 200 and denied.json()["reason"] == "action_denied"
    garbage = api.post("/v1/verify", {"token": "agc_garbage", **REQUEST}).json()
    assert (garbage["allowed"], garbage["reason"], garbage["customer"]) == (
        False,
        "malformed",
        None,
    )


def test_verify_uses_the_gateway_audience_not_the_services(api: Api) -> None:
    """A token for the gateway's audience verifies at /v1/verify; an admin token does not."""
    token = api.agent_token(audience=[GATEWAY])
    assert api.post("/v1/verify", {"token": token, **REQUEST}).json()["allowed"] is True
    other = api.agent_token(audience=["billing-gateway"])
    assert api.post("/v1/verify", {"token": other, **REQUEST}).json()["reason"] == "audience_denied"
    admin = {"token": api.admin, "resource": "agentcaps/admin/keys", "action": "admin"}
    assert api.post("/v1/verify", admin).json()["reason"] == "audience_denied"
