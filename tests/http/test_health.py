"""Liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

import agentcaps
from agentcaps.config import Settings
from agentcaps.http import forward_auth
from agentcaps.http.app import ENDPOINTS, create_app
from tests.conftest import MASTER_KEY, FakeClock
from tests.http.conftest import Api, assert_error


def test_healthz_is_200_while_the_process_runs(api: Api) -> None:
    """GET /healthz → 200 {"status": "ok"}."""
    response = api.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_200_when_redis_answers(api: Api) -> None:
    """GET /readyz → 200 with each check ok."""
    response = api.client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert response.json()["ready"] is True
    assert checks["redis"] == "ok" and checks["revocation_state"] == "ok"
    assert checks["mint_policy"].startswith("ok: version builtin-")


def test_readyz_is_503_and_says_why_when_redis_is_unreachable(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis does not answer, /readyz is 503 naming the redis check."""
    monkeypatch.setattr(api.service.stores, "ping", lambda: False)
    body = assert_error(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["redis"].startswith("unreachable")
    assert "redis" in body["detail"]


def test_readyz_is_503_when_revocation_state_was_lost(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detected loss of revocation state makes /readyz 503 with the operator message."""
    monkeypatch.setattr(api.service.stores.store.watch, "lost", "the store was flushed")
    body = assert_error(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["revocation_state"] == "the store was flushed"


def test_readyz_notices_a_lost_store_before_any_verification_does(api: Api) -> None:
    """Direct mode reads the epoch only when it verifies; /readyz reads it itself."""
    assert api.client.get("/readyz").status_code == 200
    api.service.stores.client.flushall()
    body = assert_error(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["revocation_state"] != "ok"


def test_openapi_describes_every_route_request_and_response(api: Api) -> None:
    """/openapi.json is OpenAPI 3.1 with every route and method, bodies and responses by $ref."""
    document = api.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    served = {
        (method, route.path.replace("{path:path}", "{path}"))
        for route in api.client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        # Forward-auth answers any method; OpenAPI lists the usual ones.
        for method in route.methods or forward_auth.METHODS
        if method != "HEAD"
    }
    described = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert served == described
    for endpoint in ENDPOINTS:
        for method in endpoint.methods:
            if method == "HEAD":
                continue
            op = document["paths"][endpoint.path.replace("{path:path}", "{path}")][method.lower()]
            if endpoint.body is not None:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.split("/")[-1] in schemas
            for status, model in endpoint.responses.items():
                described_response = op["responses"][str(status)]
                if model is None:  # no body
                    assert "content" not in described_response
                    continue
                ref = described_response["content"]["application/json"]["schema"]["$ref"]
                assert ref.split("/")[-1] in schemas
    mint = schemas["MintRequest"]
    assert set(mint["required"]) == {"customer", "user", "agent", "resources", "actions",
                                     "purposes", "ttl"}  # fmt: skip
    assert mint["additionalProperties"] is False


def test_readyz_reports_a_stale_revocation_replica(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In replica mode /readyz is 200 while the replica is current, 503 once staler than its bound."""
    settings = Settings(master_key=MASTER_KEY, revocation_mode="replica", replica_staleness=2.0)
    stores = agentcaps.connect("memory://", settings=settings, clock=clock)
    try:
        assert stores.revocations.wait_ready(10)  # type: ignore[union-attr]
        with TestClient(create_app(settings, stores, clock)) as client:
            monkeypatch.setattr(stores.revocations, "lag", lambda: 0.1)
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["replica"].startswith("ok")
            monkeypatch.setattr(stores.revocations, "lag", lambda: 5.0)
            body = assert_error(client.get("/readyz"), 503, "not_ready")
            assert body["checks"]["replica"].startswith("stale")
    finally:
        stores.close()
