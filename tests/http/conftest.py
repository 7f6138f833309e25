"""The service on the embedded stores and the test clock, driven in-process by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from agentcaps.config import Settings
from agentcaps.http.app import create_app
from agentcaps.http.service import Service
from agentcaps.service_tokens import mint_admin_token, mint_issuer_token
from agentcaps.stores.redis import Stores
from tests.conftest import MASTER_KEY, SCOPE, FakeClock

GATEWAY = "crm-gateway"


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    """A TestClient on the service, with its Service and the tokens tests need most."""

    client: TestClient
    service: Service
    clock: FakeClock
    admin: str

    def issuer(self, customer: str = "acme") -> str:
        """An issuer token for `customer`, as POST /v1/issuers makes it."""
        return mint_issuer_token(self.service.service_minter, customer=customer, ttl=3600).token

    def agent_token(self, **overrides: Any) -> str:
        """An agent token of SCOPE (with overrides), signed by the customer's key."""
        return self.service.minter.mint(**{**SCOPE, **overrides})

    def post(self, path: str, body: Any = None, token: str | None = None, **headers: str) -> Any:
        headers.update(bearer(token))
        if body is None:
            return self.client.post(path, headers=headers)
        return self.client.post(path, json=body, headers=headers)

    def get(self, path: str, token: str | None = None, **headers: str) -> Any:
        headers.update(bearer(token))
        return self.client.get(path, headers=headers)


@pytest.fixture
def api(memory_stores: Stores, clock: FakeClock) -> Iterator[Api]:
    """The service on memory:// and the test clock, gateway audience `crm-gateway`."""
    settings = Settings(master_key=MASTER_KEY, audience=GATEWAY, access_log="all")
    app = create_app(settings, memory_stores, clock, sleep=clock.advance)
    service: Service = app.state.service
    admin = mint_admin_token(service.service_minter, ttl=3600).token
    with TestClient(app) as client:
        yield Api(client, service, clock, admin)


def assert_error(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    """`response` is a JSON error with `status`: {"error", "detail"}, no-store, no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], str), body
    if error is not None:
        assert body["error"] == error, body
    assert response.headers["cache-control"] == "no-store"
    assert "Traceback" not in response.text
    return dict(body)
