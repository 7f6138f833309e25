"""Root key routes, admin only: create, list, rotate, revoke."""

from __future__ import annotations

from tests.conftest import SCOPE
from tests.http.conftest import Api, assert_error


def test_keys_are_created_listed_rotated_and_revoked_without_secrets(api: Api) -> None:
    """POST /v1/keys, GET /v1/keys, rotate, revoke: metadata only, states as the store keeps them."""
    created = api.post("/v1/keys", {"customer": "acme"}, api.admin)
    assert created.status_code == 201
    key = created.json()
    assert set(key) == {"key_id", "customer", "state", "created_at"}
    assert (key["customer"], key["state"]) == ("acme", "active")
    rotated = api.post(f"/v1/keys/{key['key_id']}/rotate", None, api.admin)
    assert rotated.status_code == 201 and rotated.json()["state"] == "active"
    revoked = api.post(f"/v1/keys/{rotated.json()['key_id']}/revoke", {"reason": "leak"}, api.admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    listed = api.get("/v1/keys", api.admin)
    states = {k["key_id"]: k["state"] for k in listed.json()["keys"]}
    assert states[key["key_id"]] == "verify-only"
    assert states[rotated.json()["key_id"]] == "revoked"
    assert "secret" not in listed.text


def test_an_empty_body_creates_a_platform_key(api: Api) -> None:
    """POST /v1/keys with no body creates a platform key (customer null)."""
    response = api.post("/v1/keys", None, api.admin)
    assert response.status_code == 201 and response.json()["customer"] is None


def test_unknown_keys_are_404_and_revoked_keys_cannot_rotate(api: Api) -> None:
    """Rotating or revoking an unknown key is 404; rotating a revoked key is 422."""
    assert_error(api.post("/v1/keys/knope/rotate", None, api.admin), 404, "unknown_key")
    assert_error(api.post("/v1/keys/knope/revoke", None, api.admin), 404, "unknown_key")
    kid = api.post("/v1/keys", {"customer": "acme"}, api.admin).json()["key_id"]
    api.post(f"/v1/keys/{kid}/revoke", None, api.admin)
    assert_error(api.post(f"/v1/keys/{kid}/rotate", None, api.admin), 422)


def test_revoking_a_customer_key_kills_all_its_tokens(api: Api) -> None:
    """Every token the revoked key signed is denied key_revoked; other customers' tokens live."""
    tokens = [api.agent_token(user=u) for u in ("alice", "bob", "carol")]
    other = api.agent_token(customer="globex")
    kid = api.post("/v1/verify", {"token": tokens[0], "resource": "crm/x", "action": "read"})
    kid = kid.json()["key_id"]
    assert api.post(f"/v1/keys/{kid}/revoke", None, api.admin).status_code == 200
    for token in tokens:
        body = {"token": token, "resource": "crm/x", "action": "read"}
        assert api.post("/v1/verify", body).json()["reason"] == "key_revoked"
    body = {"token": other, "resource": "crm/x", "action": "read"}
    assert api.post("/v1/verify", body).json()["allowed"] is True
    # A new mint for acme gets a new key and works.
    fresh = api.post("/v1/tokens", SCOPE, api.issuer()).json()
    assert fresh["key_id"] != kid


def test_revoking_the_platform_key_kills_every_admin_token(api: Api) -> None:
    """The platform key signs admin tokens: revoking it locks out every admin token at once."""
    kid = api.post("/v1/verify", {"token": api.admin, "resource": "x", "action": "x"}).json()[
        "key_id"
    ]
    assert api.post(f"/v1/keys/{kid}/revoke", None, api.admin).status_code == 200
    assert assert_error(api.get("/v1/keys", api.admin), 401)["reason"] == "key_revoked"


def test_an_unknown_key_id_is_named_back_only_when_it_looks_like_one(api: Api) -> None:
    """404 for any unknown id; a long or odd one (control characters) is never echoed."""
    for kid, shown in (("k0123456789abcdef", True), ("a" * 5000, False), ("%00x", False)):
        response = api.post(f"/v1/keys/{kid}/rotate", token=api.admin)
        assert_error(response, 404)
        assert (kid in response.text) is shown and len(response.text) < 300
