"""The httpx auth class agents use: sends the token, narrows it per call, offline."""

from __future__ import annotations

import httpx
import pytest

import agentcaps
from agentcaps.client import AgentcapsAuth, ServiceClient, ServiceError
from agentcaps.stores.redis import Stores
from tests.conftest import SCOPE, FakeClock


def capture() -> tuple[list[httpx.Request], httpx.MockTransport]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"ok": True})

    return requests, httpx.MockTransport(handler)


def sent_token(request: httpx.Request) -> str:
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def test_the_auth_sends_the_token_and_purpose(memory_stores: Stores, clock: FakeClock) -> None:
    """Each request carries Authorization: Bearer <token> and X-Agentcaps-Purpose."""
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    requests, transport = capture()
    with httpx.Client(transport=transport) as http:
        http.get("https://crm.example/crm/contacts/42", auth=AgentcapsAuth(token, purpose="sync"))
    assert sent_token(requests[0]) == token
    assert requests[0].headers["x-agentcaps-purpose"] == "sync"


def test_narrow_attenuates_offline_per_call(memory_stores: Stores, clock: FakeClock) -> None:
    """auth.narrow(resources=…, ttl=…) sends a narrower token that verifies only for that call."""
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    auth = AgentcapsAuth(token, purpose="sync", clock=clock)
    requests, transport = capture()
    with httpx.Client(transport=transport) as http:
        http.get(
            "https://crm.example/crm/contacts/42",
            auth=auth.narrow(resources=["crm/contacts/42"], actions=["read"], ttl=30),
        )
    narrowed = sent_token(requests[0])
    assert narrowed != token and requests[0].headers["x-agentcaps-purpose"] == "sync"
    verifier = memory_stores.verifier(clock=clock)
    assert verifier.verify(narrowed, resource="crm/contacts/42", action="read").allowed
    assert verifier.verify(narrowed, resource="crm/contacts/43", action="read").reason == (
        "resource_denied"
    )
    assert agentcaps.inspect(narrowed)["expires_at"] == int(clock()) + 30
    assert auth.token == token  # the original auth is unchanged


def test_the_auth_never_shows_its_token() -> None:
    """repr(auth) holds no token (reprs end up in logs)."""
    assert "agc_" not in repr(AgentcapsAuth("agc_secret", purpose="sync"))


def test_service_client_raises_the_services_error() -> None:
    """A non-2xx answer becomes ServiceError with status, code and detail."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "forbidden", "detail": "no"})

    with ServiceClient("http://svc", "agc_x", transport=httpx.MockTransport(handler)) as client:
        try:
            client.mint(customer="acme")
        except ServiceError as exc:
            assert (exc.status, exc.error, exc.detail) == (403, "forbidden", "no")
        else:  # pragma: no cover
            raise AssertionError("no error")


def test_the_service_client_never_shows_a_password_in_its_url_and_names_bad_input() -> None:
    """Unreachable: the URL without its password; a bad URL or a two-line token: said as such."""
    client = ServiceClient("http://user:SECRET-PW@127.0.0.1:1", "agc_x", timeout=2)
    with pytest.raises(ServiceError) as unreachable:
        client.request("GET", "/v1/keys")
    assert unreachable.value.error == "unreachable" and "SECRET-PW" not in str(unreachable.value)
    assert "SECRET-PW" not in repr(client)
    with pytest.raises(ServiceError) as bad_url:
        ServiceClient("http://[::1", "agc_x").request("GET", "/v1/keys")
    assert bad_url.value.error == "bad_url"
    with pytest.raises(ServiceError) as bad_token:
        ServiceClient("http://127.0.0.1:1", "agc_a\nagc_b").request("GET", "/v1/keys")
    assert bad_token.value.error == "bad_token"
