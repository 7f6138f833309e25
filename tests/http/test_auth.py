"""Who may call what: admin and issuer routes against no token, agent tokens, other customers."""

from __future__ import annotations

import pytest

import agentcaps
from tests.conftest import SCOPE
from tests.http.conftest import Api, assert_error

ISSUER_BODY = {"customer": "acme", "ttl": 3600}
MINT_BODY = dict(SCOPE)

# Admin routes: (method, path, body).
ADMIN_ROUTES = [
    ("POST", "/v1/issuers", ISSUER_BODY),
    ("POST", "/v1/keys", {}),
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys/kmissing/rotate", None),
    ("POST", "/v1/keys/kmissing/revoke", None),
    ("GET", "/v1/revocations", None),
    ("POST", "/v1/revocations", {"agent": "planner"}),
    ("POST", "/v1/revocations", {"token_id": "00" * 16}),
    ("POST", "/v1/revocations", {"delegation_id": "00" * 16}),
    ("POST", "/v1/revocations", {"key_id": "kmissing"}),
]
# Routes an issuer of acme may call.
ISSUER_ROUTES = [
    ("POST", "/v1/tokens", MINT_BODY),
    ("POST", "/v1/revocations", {"customer": "acme"}),
    ("POST", "/v1/revocations", {"customer": "acme", "user": "alice"}),
]
ALL_ROUTES = ADMIN_ROUTES + ISSUER_ROUTES


def call(api: Api, method: str, path: str, body: object, token: str | None):
    if method == "GET":
        return api.get(path, token)
    return api.post(path, body, token)


@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES)
def test_no_token_is_401_with_a_bearer_challenge(
    api: Api, method: str, path: str, body: object
) -> None:
    """Without a token every admin and issuer route answers 401 with WWW-Authenticate: Bearer."""
    response = call(api, method, path, body, None)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES)
def test_an_agent_token_is_403_whatever_its_caveats(
    api: Api, method: str, path: str, body: object
) -> None:
    """An agent token minted by an issuer never acts as a service token, even one scoped like an admin's."""
    mimic = api.agent_token(
        customer="agentcaps-lookalike",
        resources=["agentcaps/**"],
        actions=["admin", "mint", "revoke"],
        purposes=["administer", "issue"],
        audience=["other"],
    )
    # No audience caveat at all passes the audience check: the platform-key rule is what refuses it.
    plain = api.agent_token(
        resources=["agentcaps/**"], actions=["admin", "mint", "revoke"], purposes=["administer"]
    )
    for token in (mimic, plain):
        body_out = assert_error(call(api, method, path, body, token), 403, "forbidden")
        assert body_out["reason"] == "audience_denied"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_an_issuer_token_is_403_on_admin_routes(
    api: Api, method: str, path: str, body: object
) -> None:
    """An issuer token, even of the right customer, cannot manage keys, issuers or others' revocations."""
    assert_error(call(api, method, path, body, api.issuer("acme")), 403, "forbidden")


@pytest.mark.parametrize(("method", "path", "body"), ISSUER_ROUTES)
def test_another_customers_issuer_is_403_on_issuer_routes(
    api: Api, method: str, path: str, body: object
) -> None:
    """An issuer of globex cannot mint for, or revoke, acme's tokens."""
    body_out = assert_error(call(api, method, path, body, api.issuer("globex")), 403, "forbidden")
    assert body_out["reason"] == "resource_denied"


@pytest.mark.parametrize(("method", "path", "body"), ISSUER_ROUTES)
def test_the_customers_issuer_and_admin_may_call_issuer_routes(
    api: Api, method: str, path: str, body: object
) -> None:
    """An issuer of acme and an admin both succeed on acme's issuer routes."""
    for token in (api.issuer("acme"), api.admin):
        response = call(api, method, path, body, token)
        assert response.status_code == 201, response.text


def test_unacceptable_tokens_are_401_with_their_reason(api: Api) -> None:
    """Forged, expired, revoked and unreadable bearer tokens get 401 naming the reason."""
    admin = api.admin
    forged = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    cases = {"malformed": "agc_not-a-token", "bad_signature": forged}
    for reason, token in cases.items():
        body = assert_error(api.get("/v1/keys", token), 401, "unauthenticated")
        assert body["reason"] == reason
    api.clock.advance(3601)
    response = api.get("/v1/keys", admin)
    assert assert_error(response, 401)["reason"] == "expired"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_revoked_admin_token_is_401(api: Api) -> None:
    """Once an admin token revokes itself, it opens nothing."""
    assert api.post("/v1/revocations", {"token": api.admin}, api.admin).status_code == 201
    assert assert_error(api.get("/v1/keys", api.admin), 401)["reason"] == "revoked"


def test_other_authorization_schemes_are_401(api: Api) -> None:
    """Basic credentials or an empty bearer are not a token."""
    for value in ("Basic YWRtaW46YWRtaW4=", "Bearer ", "Bearer"):
        assert_error(api.client.get("/v1/keys", headers={"Authorization": value}), 401)


def test_an_admin_token_attenuated_to_read_only_scope_cannot_administer(api: Api) -> None:
    """Attenuating an admin token works as for any token: a narrowed one cannot mint issuers."""
    narrowed = agentcaps.attenuate(api.admin, actions=["revoke"])
    body = assert_error(api.post("/v1/issuers", ISSUER_BODY, narrowed), 403)
    assert body["reason"] == "action_denied"
    assert api.post("/v1/revocations", {"agent": "planner"}, narrowed).status_code == 201


def test_an_issuer_cannot_mint_or_be_made_for_the_platform_customer(api: Api) -> None:
    """`agentcaps` is the admins' customer name: no issuer or agent token may be made for it."""
    assert_error(api.post("/v1/issuers", {"customer": "agentcaps", "ttl": 60}, api.admin), 422)
    body = {**MINT_BODY, "customer": "agentcaps"}
    assert_error(api.post("/v1/tokens", body, api.admin), 422, "invalid_argument")


def test_customer_names_cannot_reach_another_customers_resources(api: Api) -> None:
    """An issuer of `a` cannot mint for `a/b`, `a*` or `..`: names are one encoded segment."""
    issuer = api.issuer("a")
    for customer in ("a/b", "a*", "a/**", "..", "a%2Fb"):
        response = api.post("/v1/tokens", {**MINT_BODY, "customer": customer}, issuer)
        assert_error(response, 403)
    assert api.post("/v1/tokens", {**MINT_BODY, "customer": "a"}, issuer).status_code == 201
    odd = api.issuer("a/b")
    assert api.post("/v1/tokens", {**MINT_BODY, "customer": "a/b"}, odd).status_code == 201
    assert_error(api.post("/v1/tokens", {**MINT_BODY, "customer": "a"}, odd), 403)


def test_the_audience_agentcaps_is_reserved_for_service_tokens(api: Api) -> None:
    """Minting an agent token with audience `agentcaps` is refused (422 naming the field)."""
    body = {**MINT_BODY, "audience": ["crm", "agentcaps"]}
    detail = assert_error(api.post("/v1/tokens", body, api.issuer()), 422)["detail"]
    assert detail.startswith("audience")
