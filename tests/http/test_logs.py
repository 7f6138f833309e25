"""Token values never appear in the service's logs."""

from __future__ import annotations

import logging

import pytest
from starlette.testclient import TestClient

import agentcaps
from agentcaps.config import Settings
from agentcaps.http.app import create_app
from tests.conftest import MASTER_KEY, SCOPE
from tests.http.conftest import Api, bearer


def test_a_whole_session_logs_no_token(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Mint, verify, forward-auth, errors and tokens in URLs: one access line each, no token text."""
    caplog.set_level(logging.DEBUG)
    issuer = api.issuer()
    minted = api.post("/v1/tokens", SCOPE, issuer).json()["token"]
    child = agentcaps.attenuate(minted, delegate_to="fetcher")
    tokens = [api.admin, issuer, minted, child]
    api.post("/v1/verify", {"token": child, "resource": "crm/a", "action": "read"})
    api.client.get("/v1/authz/crm/a", headers=bearer(child))
    api.client.get(f"/v1/authz/{child}", headers=bearer(child))  # a token in a path
    api.client.get(f"/healthz?token={child}")  # and in a query string
    api.post("/v1/verify", {"token": child, "resource": 1, "action": child})
    api.post("/v1/revocations", {"token": child}, child)
    # The service's loggers (the test client's own httpx log shows the URLs it sent).
    ours = [r for r in caplog.records if r.name.startswith(("agentcaps", "uvicorn"))]
    text = "\n".join(r.getMessage() for r in ours)
    access = [r for r in caplog.records if r.name == "agentcaps.http.access"]
    assert len(access) == 7
    for token in tokens:
        assert token not in text
        assert token[4:40] not in text
    assert "?" not in "".join(r.getMessage() for r in access)


@pytest.mark.parametrize(("mode", "lines"), [("all", 3), ("errors", 1), ("off", 0)])
def test_access_log_setting_chooses_which_requests_get_a_line(
    memory_stores, clock, caplog: pytest.LogCaptureFixture, mode: str, lines: int
) -> None:
    """AGENTCAPS_ACCESS_LOG: every request, only those answered 400 and up, or none."""
    caplog.set_level(logging.INFO, logger="agentcaps.http.access")
    app = create_app(Settings(master_key=MASTER_KEY, access_log=mode), memory_stores, clock)
    with TestClient(app) as client:
        client.get("/healthz")
        client.get("/readyz")
        client.get("/v1/authz/crm/a")  # no token: 401
    access = [r for r in caplog.records if r.name == "agentcaps.http.access"]
    assert len(access) == lines
