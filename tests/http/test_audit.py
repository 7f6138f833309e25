"""The audit trail through the service: what each route records, GET /v1/audit, request ids, /metrics."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import agentcaps
from agentcaps.audit import AuditKind, AuditQuery
from agentcaps.config import Settings
from agentcaps.http.app import create_app
from agentcaps.http.audit import CustomerView
from agentcaps.http.logs import JsonFormatter
from agentcaps.http.middleware import AgentcapsMiddleware
from agentcaps.http.service import Service
from agentcaps.service_tokens import mint_admin_token
from agentcaps.stores.audit import FIRST_USE_DETAIL, open_audit
from agentcaps.stores.redis import Stores
from tests.conftest import MASTER_KEY, SCOPE, FakeClock
from tests.http.conftest import GATEWAY, Api, assert_error
from tests.http.test_policy import GATEWAY_POLICY, MINT_POLICY, RELAXED, write


def audit(api: Api, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """GET /v1/audit as `token` (default admin); the events."""
    response = api.client.get(
        "/v1/audit", params=params, headers={"Authorization": f"Bearer {token or api.admin}"}
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def story(api: Api) -> dict[str, Any]:
    """An issuer mints for alice's planner, which delegates to fetcher; verify, authz, revoke."""
    issuer = api.issuer()
    minted = api.post("/v1/tokens", {**SCOPE, "audience": [GATEWAY]}, issuer).json()
    fetcher = agentcaps.attenuate(minted["token"], delegate_to="fetcher")
    verify = {"token": fetcher, "resource": "crm/contacts/42", "action": "read", "purpose": "sync"}
    api.post("/v1/verify", verify, **{"X-Request-Id": "req-allowed"})
    api.post("/v1/verify", {**verify, "resource": "hr/1"}, **{"X-Request-Id": "req-denied"})
    api.client.get("/v1/authz/crm/contacts/7", headers={"Authorization": f"Bearer {fetcher}"})
    api.post("/v1/revocations", {"token": fetcher, "reason": "task done"}, fetcher)
    return {"issuer": issuer, "minted": minted, "fetcher": fetcher}


def test_a_tokens_events_carry_who_what_for_whom_and_why(api: Api) -> None:
    """Mint, verifications (allowed, denied, forward-auth) and the revocation, each with its fields."""
    s = story(api)
    token_id = s["minted"]["token_id"]
    events = audit(api, token_id=token_id)
    kinds = [(e["kind"], e.get("reason")) for e in events]
    assert kinds == [("mint", "ok"), ("verify", "ok"), ("verify", "resource_denied"),
                     ("verify", "ok"), ("revoke", None)]  # fmt: skip
    mint, allowed, denied, authz, revoke = events
    assert mint["caller"].startswith("acme/issuer via issuer")
    assert (mint["customer"], mint["user"], mint["agent"], mint["ttl"]) == ("acme", "alice",
                                                                            "planner", 600)  # fmt: skip
    assert mint["resources"] == ["crm/**"] and mint["key_id"] == s["minted"]["key_id"]
    assert mint["policy_version"].startswith("builtin-")
    assert allowed["chain"] == ["planner", "fetcher"] and len(allowed["delegation_ids"]) == 1
    assert (allowed["resource"], allowed["action"], allowed["purpose"]) == (
        "crm/contacts/42", "read", "sync",
    )  # fmt: skip
    assert allowed["audience"] == [GATEWAY] and allowed["request_id"] == "req-allowed"
    assert allowed["latency_us"] > 0 and allowed["allowed"] is True
    assert denied["request_id"] == "req-denied" and denied["allowed"] is False
    assert authz["resource"] == "crm/contacts/7" and authz["agent"] == "fetcher"
    assert revoke["op"] == "branch" and revoke["why"] == "task done"
    assert revoke["delegation_ids"] == allowed["delegation_ids"]
    assert "via planner>fetcher" in revoke["caller"]
    for e in events:
        assert e["id"] == f"{e['writer']}:{e['seq']}" and len(e["hash"]) == 64


def test_an_issuer_sees_its_own_customer_only(api: Api) -> None:
    """Without a customer filter an issuer gets its own events; asking for another is 403."""
    story(api)
    api.post("/v1/tokens", {**SCOPE, "customer": "globex"}, api.issuer("globex"))
    acme = audit(api, api.issuer("acme"))
    assert acme and {e.get("customer") for e in acme} == {"acme"}
    assert {e.get("customer") for e in audit(api)} >= {"acme", "globex", "agentcaps"}
    response = api.get("/v1/audit?customer=globex", api.issuer("acme"))
    assert_error(response, 403)


def page(api: Api, token: str, **params: Any) -> dict[str, Any]:
    response = api.client.get(
        "/v1/audit", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_issuers_pages_tell_nothing_of_other_customers(api: Api) -> None:
    """No scan count, no chain position, no entry id: opaque event ids and sealed cursors that page."""
    story(api)
    globex = api.issuer("globex")
    for _ in range(3):
        api.post("/v1/tokens", {**SCOPE, "customer": "globex"}, globex)
    acme = api.issuer("acme")
    whole = page(api, acme)
    assert whole["scanned"] is None and whole["events"]
    for event in whole["events"]:
        assert event["customer"] == "acme"
        assert {event[name] for name in ("writer", "seq", "prev", "hash", "entry")} == {None}
        assert event["id"].startswith("e") and ":" not in event["id"]
    assert len({e["id"] for e in whole["events"]}) == len(whole["events"])
    assert whole["after"].startswith("c1.")
    # Every cursor is as long as any other, whatever entry it seals.
    view = CustomerView(api.service.stores.keys, "acme")
    assert {
        len(view.cursor(entry) or "") for entry in ("1-0", "1764412801123-10", "9" * 20 + "-9")
    } == {len(whole["after"])}
    # The same events, one page at a time through the sealed cursors, newest first.
    seen, cursor = [], None
    while True:
        one = page(api, acme, limit=1, **({"before": cursor} if cursor else {}))
        seen = one["events"] + seen
        cursor = one["before"]
        if cursor is None:
            break
        assert cursor.startswith("c1.")
    # (Each read is recorded too: the first one-event page was that read's own.)
    assert [e["id"] for e in seen[:-1]] == [e["id"] for e in whole["events"]]
    # Following: only what is new, once.
    minted = api.post("/v1/tokens", SCOPE, acme).json()
    api.post("/v1/tokens", {**SCOPE, "customer": "globex"}, globex)
    newer = page(api, acme, after=whole["after"])
    assert {e["customer"] for e in newer["events"]} == {"acme"}
    assert not {e["id"] for e in newer["events"]} & {e["id"] for e in whole["events"]}
    assert [e["token_id"] for e in newer["events"] if e["kind"] == "mint"] == [minted["token_id"]]
    assert newer["after"].startswith("c1.") and newer["after"] != whole["after"]
    # An admin still sees the chain positions and the entries.
    admin = page(api, api.admin)
    assert admin["scanned"] > 0 and all(e["writer"] and e["entry"] for e in admin["events"])


def test_a_cursor_opens_only_for_the_customer_it_was_given_to(api: Api) -> None:
    """Altered, another customer's, a bare entry id for an issuer, a sealed one for an admin: 422."""
    story(api)
    acme, globex = api.issuer("acme"), api.issuer("globex")
    api.post("/v1/tokens", {**SCOPE, "customer": "globex"}, globex)
    theirs = page(api, globex)["after"]
    mine = page(api, acme)["after"]
    entry = page(api, api.admin)["after"]
    flipped = mine[:-2] + ("A" if mine[-2] != "A" else "B") + mine[-1]
    for token, cursor in ((acme, theirs), (acme, flipped), (acme, entry), (api.admin, mine)):
        for name in ("after", "before"):
            response = api.client.get(
                "/v1/audit", params={name: cursor}, headers={"Authorization": f"Bearer {token}"}
            )
            body = assert_error(response, 422, "invalid_request")
            assert cursor not in response.text, body


def test_audit_refuses_no_token_and_agent_tokens(api: Api) -> None:
    """No token → 401; an agent token is not a service token → 403."""
    assert_error(api.get("/v1/audit"), 401)
    assert_error(api.get("/v1/audit", api.agent_token()), 403)


def test_bad_query_parameters_are_422_naming_them(api: Api) -> None:
    """Unknown, repeated or malformed parameters are refused with the field named."""
    for query, field in (("since=yesterday", "since"), ("limit=0", "limit"), ("bogus=1", "bogus"),
                         ("token_id=xyz", "token_id"), ("limit=1&limit=2", "limit"),
                         ("before=1-0&after=1-0", "body"), ("since=nan", "since"),
                         ("before=99999999999999999999-0", "before"),
                         ("after=1-18446744073709551616", "after")):  # fmt: skip
        body = assert_error(api.get(f"/v1/audit?{query}", api.admin), 422)
        assert any(f["field"] == field for f in body["fields"]), (query, body)


def test_service_token_use_and_key_operations_are_recorded(api: Api) -> None:
    """Issuer creation, key create/rotate/revoke and the service's own authorisations are events."""
    created = api.post("/v1/issuers", {"customer": "initech", "ttl": 600}, api.admin)
    assert created.status_code == 201
    kid = api.post("/v1/keys", {"customer": "initech"}, api.admin).json()["key_id"]
    new = api.post(f"/v1/keys/{kid}/rotate", None, api.admin).json()["key_id"]
    api.post(f"/v1/keys/{new}/revoke", {"reason": "test"}, api.admin)
    agent = api.agent_token()
    assert_error(api.post("/v1/keys", {}, agent), 403)
    events = audit(api, customer="initech", limit=50)
    issuer = next(e for e in events if e["kind"] == "issuer")
    assert issuer["token_id"] == created.json()["token_id"] and "admin" in issuer["caller"]
    keys = [(e["op"], e["key_id"]) for e in events if e["kind"] == "key"]
    assert keys == [("create", kid), ("rotate", kid), ("revoke", new)]
    # A key revoked through /v1/keys is a revocation too, found by its owner.
    [revoked] = audit(api, customer="initech", kind="revoke")
    assert (revoked["op"], revoked["key_id"], revoked["why"]) == ("key", new, "test")
    # The refused attempt is on record: the agent token judged as a service token.
    [refused] = audit(api, kind="verify", token_id=agentcaps.inspect(agent)["token_id"])
    assert (refused["allowed"], refused["resource"], refused["audience"]) == (
        False, "agentcaps/admin/keys", ["agentcaps"],
    )  # fmt: skip


def test_a_key_a_mint_creates_is_recorded_once_before_that_mint(api: Api) -> None:
    """The first mint for a customer makes its key: a key event with the mint's request id."""
    issuer = api.issuer("globex")
    scope = {**SCOPE, "customer": "globex"}
    first = api.post("/v1/tokens", scope, issuer, **{"X-Request-Id": "req-first-mint"}).json()
    api.post("/v1/tokens", scope, issuer)
    events = [e for e in audit(api, customer="globex", limit=50) if e["kind"] != "verify"]
    assert [e["kind"] for e in events] == ["key", "mint", "mint"]
    created, mint = events[0], events[1]
    assert (created["op"], created["key_id"], created["detail"]) == (
        "create", first["key_id"], FIRST_USE_DETAIL,
    )  # fmt: skip
    assert created["request_id"] == mint["request_id"] == "req-first-mint"
    assert mint["key_id"] == first["key_id"]


def test_the_request_id_is_echoed_or_made(api: Api) -> None:
    """A well-formed X-Request-Id comes back as sent; a bad or token-like one is replaced."""
    assert api.get("/healthz", **{"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    for bad in ("agc_abc", "has space", "x" * 200):
        made = api.get("/healthz", **{"X-Request-Id": bad}).headers["x-request-id"]
        assert made != bad and len(made) == 16
    assert len(api.get("/healthz").headers["x-request-id"]) == 16


def test_made_request_ids_say_nothing_of_other_requests(api: Api) -> None:
    """Random, not counted: two ids a client is given never tell how many requests came between."""
    made = [int(api.get("/healthz").headers["x-request-id"], 16) for _ in range(50)]
    assert len(set(made)) == 50
    assert all(abs(b - a) > 2**20 for a, b in itertools.pairwise(made))


def test_metrics_scrape_cleanly_and_count(api: Api) -> None:
    """/metrics parses with Prometheus' own parser and counts verifications, mints, revocations."""
    story(api)
    api.service.audit.recorder.flush(5)
    response = api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("agentcaps_verifications_total", (("reason", "ok"),))] >= 2
    assert samples[("agentcaps_verifications_total", (("reason", "resource_denied"),))] == 1
    assert samples[("agentcaps_mints_total", (("outcome", "ok"),))] == 1
    assert samples[("agentcaps_revocations_total", (("kind", "branch"),))] == 1
    assert samples[("agentcaps_audit_events_pending", ())] == 0
    assert samples[("agentcaps_verification_seconds_count", ())] >= 3
    assert any(name == "agentcaps_http_requests_total" for name, _ in samples)


def test_readyz_reports_the_audit_backlog(api: Api) -> None:
    """/readyz details say how many audit events wait, without making the service unready."""
    checks = api.get("/readyz").json()["checks"]
    assert checks["audit"].startswith("ok")


def test_the_access_log_is_structured_and_carries_the_request_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line has method, route, status, duration and request id; JSON format shows them."""
    caplog.set_level(logging.INFO, logger="agentcaps.http.access")
    api.get("/healthz", **{"X-Request-Id": "trace-me"})
    [record] = [r for r in caplog.records if r.name == "agentcaps.http.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "trace-me" and line["status"] == 200
    assert (line["method"], line["route"], line["path"]) == ("GET", "/healthz", "/healthz")


# -- policies ------------------------------------------------------------------------


@pytest.fixture
def policed(memory_stores: Stores, clock: FakeClock, tmp_path: Path) -> Iterator[Api]:
    """The service with a mint and a gateway policy folder (reloads are explicit)."""
    folder = tmp_path / "policies"
    write(folder, "mint.cedar", MINT_POLICY)
    write(folder / "gateway", "gateway.cedar", GATEWAY_POLICY)
    settings = Settings(master_key=MASTER_KEY, audience=GATEWAY, policy_dir=str(folder),
                        policy_poll_interval=0)  # fmt: skip
    app = create_app(settings, memory_stores, clock)
    service: Service = app.state.service
    admin = mint_admin_token(service.service_minter, ttl=3600).token
    with TestClient(app) as client:
        api = Api(client, service, clock, admin)
        api.folder = folder  # type: ignore[attr-defined]
        yield api


def test_policy_decisions_and_reloads_are_recorded(policed: Api) -> None:
    """A denied mint names its policies; a gateway denial its version; a reload says what changed."""
    api = policed
    assert api.post("/v1/tokens", {**SCOPE, "actions": ["write"]}, api.issuer()).status_code == 403
    [denied] = [e for e in audit(api, kind="mint") if not e["allowed"]]
    assert denied["reason"] == "policy_denied" and denied["policies"] == ["no-writes"]
    assert denied["token_id"] is None
    token = api.agent_token(resources=["billing/**"], actions=["delete"])
    body = {"token": token, "resource": "billing/1", "action": "delete"}
    assert api.post("/v1/verify", body).json()["reason"] == "policy_denied"
    [gated] = [e for e in audit(api, kind="verify") if e.get("reason") == "policy_denied"]
    assert gated["policy_version"] == api.service.policies.gateway.version  # type: ignore[union-attr]
    assert gated["policies"] == ["no-deletes-under-billing"]
    write(api.folder, "mint.cedar", RELAXED)  # type: ignore[attr-defined]
    api.service.policies.reload()
    [reload] = audit(api, kind="policy_reload")
    assert reload["op"] == "mint" and reload["allowed"] is True
    assert reload["policy_version"] == api.service.policies.engine.version


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def test_the_asgi_middleware_records_decisions_with_request_ids(
    memory_stores: Stores, clock: FakeClock
) -> None:
    """A protected app's verifier with an audit sink records each decision with the request id."""
    trail = open_audit(memory_stores, clock=clock)
    try:
        verifier = memory_stores.verifier(clock=clock, audience="crm", audit=trail.recorder)
        app = Starlette(
            routes=[Route("/{path:path}", _ok)],
            middleware=[Middleware(AgentcapsMiddleware, verifier=verifier)],
        )
        token = memory_stores.minter(clock=clock).mint(**{**SCOPE, "audience": ["crm"]})  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {token}"}
        with TestClient(app) as client:
            allowed = client.get("/crm/42", headers={**auth, "X-Request-Id": "mw-1"})
            assert allowed.status_code == 200 and allowed.headers["x-request-id"] == "mw-1"
            denied = client.get("/hr/1", headers=auth)
            assert denied.status_code == 403
        made = denied.headers["x-request-id"]
        assert trail.recorder.flush(5) and trail.log is not None
        events = trail.log.query(AuditQuery(kind=AuditKind.VERIFY)).events
        assert [(e.resource, e.allowed, e.request_id, e.audience) for e in events] == [
            ("crm/42", True, "mw-1", ("crm",)),
            ("hr/1", False, made, ("crm",)),
        ]
    finally:
        trail.close()


def test_metrics_show_the_replicas_lag_and_size(clock: FakeClock) -> None:
    """In replica mode /metrics has the replica's lag (seconds) and its number of entries."""
    settings = Settings(master_key=MASTER_KEY, revocation_mode="replica")
    stores = agentcaps.connect("memory://", settings=settings, clock=clock)
    try:
        assert stores.revocations.wait_ready(10)  # type: ignore[union-attr]
        with TestClient(create_app(settings, stores, clock)) as client:
            text = client.get("/metrics").text
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert {"agentcaps_revocation_replica_lag_seconds",
                "agentcaps_revocation_replica_entries"} <= names  # fmt: skip
    finally:
        stores.close()
