"""Forward-auth: nginx, Traefik and Envoy forms, identity headers, and refusals."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

import agentcaps
from agentcaps.stores.redis import Stores
from tests.conftest import FakeClock
from tests.http.conftest import Api, assert_error, bearer

NGINX = "X-Original-URI"
TRAEFIK = "X-Forwarded-Uri"


def nginx(api: Api, token: str | None, uri: str, method: str = "GET", **extra: str):
    headers = {**bearer(token), NGINX: uri, "X-Original-Method": method, **extra}
    return api.client.get("/v1/authz", headers=headers)


def test_an_allowed_request_answers_200_with_identity_headers(api: Api) -> None:
    """200 with customer, user, agent (last holder), chain, token id and purpose headers."""
    token = agentcaps.attenuate(api.agent_token(), delegate_to="fetcher")
    response = nginx(api, token, "/crm/contacts/42?x=1", **{"X-Agentcaps-Purpose": "sync"})
    assert response.status_code == 200, response.text
    h = response.headers
    assert (h["x-agentcaps-customer"], h["x-agentcaps-user"], h["x-agentcaps-agent"]) == (
        "acme",
        "alice",
        "fetcher",
    )
    assert h["x-agentcaps-chain"] == "planner,fetcher"
    assert h["x-agentcaps-token-id"] == agentcaps.inspect(token)["token_id"]
    assert h["x-agentcaps-purpose"] == "sync"
    assert response.content == b"" and h["content-length"] == "0"
    assert h["cache-control"] == "no-store" and "x-request-id" in h


def test_the_three_gateway_forms_decide_alike(api: Api) -> None:
    """nginx headers, Traefik headers and Envoy's /v1/authz/<path> reach the same decision."""
    token = api.agent_token(actions=["read"])
    auth = bearer(token)
    forms = [
        api.client.get("/v1/authz", headers={**auth, NGINX: "/crm/a", "X-Original-Method": "GET"}),
        api.client.get(
            "/v1/authz", headers={**auth, TRAEFIK: "/crm/a", "X-Forwarded-Method": "GET"}
        ),
        api.client.get("/v1/authz/crm/a", headers=auth),
    ]
    assert [r.status_code for r in forms] == [200, 200, 200]
    denied = [
        api.client.get("/v1/authz", headers={**auth, NGINX: "/crm/a", "X-Original-Method": "POST"}),
        api.client.get(
            "/v1/authz", headers={**auth, TRAEFIK: "/crm/a", "X-Forwarded-Method": "DELETE"}
        ),
        api.client.post("/v1/authz/crm/a", headers=auth),
    ]
    for response in denied:
        assert_error(response, 403, "forbidden")
        assert response.headers["x-agentcaps-reason"] == "action_denied"


def test_no_or_bad_token_is_401_with_www_authenticate(api: Api) -> None:
    """Missing, forged or expired tokens → 401 with WWW-Authenticate; never 200."""
    response = nginx(api, None, "/crm/a")
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="agentcaps"'
    token = api.agent_token()
    api.clock.advance(601)
    response = nginx(api, token, "/crm/a")
    assert_error(response, 401)
    assert 'error_description="expired"' in response.headers["www-authenticate"]
    assert response.headers["x-agentcaps-reason"] == "expired"


def test_a_good_token_for_another_resource_is_403_with_the_reason(api: Api) -> None:
    """A token that does not cover the path → 403 with X-Agentcaps-Reason: resource_denied."""
    response = nginx(api, api.agent_token(), "/billing/1")
    assert_error(response, 403)
    assert response.headers["x-agentcaps-reason"] == "resource_denied"


def test_purpose_and_actor_headers_are_enforced(api: Api) -> None:
    """X-Agentcaps-Purpose must be one of the token's; X-Agentcaps-Actor must be the last holder."""
    token = agentcaps.attenuate(api.agent_token(), delegate_to="fetcher")
    wrong_purpose = nginx(api, token, "/crm/a", **{"X-Agentcaps-Purpose": "marketing"})
    assert wrong_purpose.headers["x-agentcaps-reason"] == "purpose_denied"
    wrong_actor = nginx(api, token, "/crm/a", **{"X-Agentcaps-Actor": "planner"})
    assert wrong_actor.headers["x-agentcaps-reason"] == "actor_mismatch"
    assert nginx(api, token, "/crm/a", **{"X-Agentcaps-Actor": "fetcher"}).status_code == 200


def test_a_purpose_or_actor_given_twice_is_refused_whichever_comes_first(api: Api) -> None:
    """A gateway that appends its own X-Agentcaps-Actor to the client's must not let either win."""
    token = agentcaps.attenuate(api.agent_token(), delegate_to="fetcher")
    for name, values, reason in (
        ("X-Agentcaps-Actor", ["fetcher", "mallory"], "actor_mismatch"),
        ("X-Agentcaps-Actor", ["mallory", "fetcher"], "actor_mismatch"),
        ("X-Agentcaps-Purpose", ["sync", "marketing"], "purpose_denied"),
        ("X-Agentcaps-Purpose", ["sync", "sync"], "purpose_denied"),
    ):
        headers = [*bearer(token).items(), (NGINX, "/crm/a"), ("X-Original-Method", "GET")]
        headers += [(name, value) for value in values]
        response = api.client.get("/v1/authz", headers=headers)
        assert_error(response, 403)
        assert response.headers["x-agentcaps-reason"] == reason, (name, values)
    # A bad token is still told it is a bad token.
    twice = [(NGINX, "/crm/a"), ("X-Agentcaps-Actor", "a"), ("X-Agentcaps-Actor", "b")]
    assert_error(api.client.get("/v1/authz", headers=[*bearer("agc_junk").items(), *twice]), 401)


def test_tricky_paths_are_403_resource_denied_even_for_a_broad_token(api: Api) -> None:
    """`..`, encoded slashes and the like are refused with resource_denied, whatever the token allows."""
    token = api.agent_token(resources=["**"])
    for uri in ("/crm/../admin", "/crm/%2e%2e/admin", "/crm%2Fadmin", "/crm//a", "/a/..;/b"):
        response = nginx(api, token, uri)
        assert_error(response, 403)
        assert response.headers["x-agentcaps-reason"] == "resource_denied"
    # The Envoy form reads the raw path: no decoding happens before ours.
    response = api.client.get("/v1/authz/crm/%2e%2e/admin", headers=bearer(token))
    assert response.headers["x-agentcaps-reason"] == "resource_denied"
    # A bad token on a bad path is still told it is a bad token.
    assert_error(nginx(api, "agc_junk", "/crm/../admin"), 401)


def test_a_client_cannot_choose_the_path_it_is_judged_on(api: Api) -> None:
    """Two namings of the original request that disagree are refused (403), never one picked."""
    token = api.agent_token(resources=["public/**"], actions=["read", "write", "delete"])
    spoofed = nginx(api, token, "/admin/delete-all", **{TRAEFIK: "/public/x"})
    assert_error(spoofed, 403)
    assert spoofed.headers["x-agentcaps-reason"] == "resource_denied"
    method = nginx(api, token, "/public/x", "DELETE", **{TRAEFIK: "/public/x",
                                                        "X-Forwarded-Method": "GET"})  # fmt: skip
    assert_error(method, 403)
    envoy = api.client.get("/v1/authz/admin/x", headers={**bearer(token), NGINX: "/public/x"})
    assert_error(envoy, 403)
    agree = nginx(api, token, "/public/x", **{TRAEFIK: "/public/x"})
    assert agree.status_code == 200


def test_no_original_request_is_400(api: Api) -> None:
    """GET /v1/authz without any original request is a bad request, not an allow."""
    assert_error(api.client.get("/v1/authz", headers=bearer(api.agent_token())), 400)


def test_revocation_state_unknown_is_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """When revocations cannot be read, forward-auth fails closed with 503."""
    from agentcaps.errors import StoreUnavailable

    def down(facts: object) -> None:
        raise StoreUnavailable("down")

    token = api.agent_token()
    monkeypatch.setattr(api.service.stores.revocations, "check", down)
    response = nginx(api, token, "/crm/a")
    assert_error(response, 503)
    assert response.headers["x-agentcaps-reason"] == "revocation_unavailable"


def test_names_are_percent_encoded_in_headers(api: Api) -> None:
    """Non-ASCII and comma-bearing names survive as percent-encoded UTF-8 header values."""
    token = api.agent_token(user="zoë, jr", agent="agent,1")
    response = nginx(api, token, "/crm/a")
    assert response.status_code == 200
    assert unquote(response.headers["x-agentcaps-user"]) == "zoë, jr"
    chain = response.headers["x-agentcaps-chain"].split(",")
    assert [unquote(a) for a in chain] == ["agent,1"]


def test_route_rules_from_agentcaps_routes_apply(
    memory_stores: Stores, clock: FakeClock, tmp_path: Path
) -> None:
    """With AGENTCAPS_ROUTES, forward-auth judges the rule's resource and action."""
    from starlette.testclient import TestClient

    from agentcaps.config import Settings
    from agentcaps.http.app import create_app
    from tests.conftest import MASTER_KEY, SCOPE

    rules = tmp_path / "routes.toml"
    rules.write_text(
        '[[route]]\nmethod = "GET"\npath = "/v2/people/{id}"\nresource = "crm/contacts/{id}"\n',
        encoding="utf-8",
    )
    settings = Settings(master_key=MASTER_KEY, routes_file=str(rules))
    app = create_app(settings, memory_stores, clock)
    token = app.state.service.minter.mint(**{**SCOPE, "resources": ["crm/contacts/*"]})
    with TestClient(app) as client:
        ok = client.get("/v1/authz/v2/people/7", headers=bearer(token))
        assert ok.status_code == 200
        assert client.get("/v1/authz/crm/contacts/7", headers=bearer(token)).status_code == 200
        assert client.get("/v1/authz/v2/other/7", headers=bearer(token)).status_code == 403


def test_any_method_is_judged_in_every_form(api: Api) -> None:
    """A method beyond the usual seven is an action like any other, not a 405 (Envoy forwards it as is)."""
    token = api.agent_token(actions=["propfind"])
    envoy = api.client.request("PROPFIND", "/v1/authz/crm/a", headers=bearer(token))
    assert envoy.status_code == 200, envoy.text
    assert nginx(api, token, "/crm/a", "PROPFIND").status_code == 200
    refused = api.client.request("MKCOL", "/v1/authz/crm/a", headers=bearer(token))
    assert_error(refused, 403)
    assert refused.headers["x-agentcaps-reason"] == "action_denied"


def test_oversized_paths_purposes_and_actors_are_refused_never_echoed_or_recorded(api: Api) -> None:
    """No token allows a resource over 1024 characters or a name over 256: refused, kept out of the trail."""
    from tests.http.test_audit import audit

    token = api.agent_token()
    assert nginx(api, token, "/crm/" + "x" * 1000).status_code == 200  # long, and allowed
    huge = "/crm/" + "a" * 200_000
    for response, reason in (
        (nginx(api, token, huge), "resource_denied"),
        (nginx(api, token, "/crm/" + "%C3%A9" * 1025), "resource_denied"),  # 1029 once decoded
        (nginx(api, token, "/crm/1", **{"X-Agentcaps-Purpose": "p" * 100_000}), "purpose_denied"),
        (nginx(api, token, "/crm/1", **{"X-Agentcaps-Actor": "a" * 100_000}), "actor_mismatch"),
        (nginx(api, token, "/crm/1", method="Q" * 5000), "resource_denied"),
    ):
        assert_error(response, 403)
        assert response.headers["x-agentcaps-reason"] == reason
        assert len(response.text) < 500
    assert_error(nginx(api, "agc_AAAA", huge), 401)
    events = audit(api, kind="verify")
    assert len(events) >= 6
    for event in events:
        for name in ("resource", "purpose", "actor"):
            assert len(event.get(name) or "") <= 1024, (name, len(event[name]))
        assert len(event.get("action") or "") <= 20  # a refused method is not recorded


def test_a_verifier_records_at_most_1024_characters_of_what_a_caller_sent(
    memory_stores: Stores,
) -> None:
    """A library caller may pass anything to Verifier.verify: its audit event clips it."""
    from agentcaps.audit import MAX_CALLER_TEXT, AuditKind, AuditQuery
    from agentcaps.stores.audit import open_audit

    trail = open_audit(memory_stores)
    try:
        verifier = memory_stores.verifier(audit=trail.recorder)
        token = memory_stores.minter().mint(
            customer="acme", user="alice", agent="planner", resources=["crm/**"],
            actions=["read"], purposes=["sync"], ttl=600,
        )  # fmt: skip
        secret = memory_stores.minter().mint(
            customer="acme", user="alice", agent="planner", resources=["crm/**"],
            actions=["read"], purposes=["sync"], ttl=600,
        )  # fmt: skip
        decision = verifier.verify(
            token, resource="crm/" + "a" * 50_000, action="r" * 50_000,
            purpose="x" * 1020 + secret, actor="y" * 50_000,
        )  # fmt: skip
        assert decision.reason.value == "actor_mismatch"
        trail.recorder.flush(5.0)
        assert trail.log is not None
        (event,) = trail.log.query(AuditQuery(kind=AuditKind.VERIFY)).events
        for value in (event.resource, event.action, event.purpose, event.actor):
            assert value is not None and len(value) <= MAX_CALLER_TEXT + 20
        assert secret[:30] not in str(event.to_dict())
    finally:
        trail.close()
