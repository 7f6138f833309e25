"""AgentcapsMiddleware protecting another Starlette app."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

import agentcaps
from agentcaps.decision import Decision
from agentcaps.http.middleware import AgentcapsMiddleware
from agentcaps.stores.redis import Stores
from tests.conftest import SCOPE, FakeClock
from tests.http.conftest import assert_error, bearer

seen: list[str] = []


async def contact(request: Request) -> JSONResponse:
    decision: Decision = request.state.agentcaps
    seen.append(request.url.path)
    return JSONResponse(
        {"agent": decision.agent, "user": decision.user, "id": request.path_params["id"]}
    )


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@pytest.fixture
def app(memory_stores: Stores, clock: FakeClock) -> Iterator[TestClient]:
    """A small CRM app behind the middleware, with audience `crm`."""
    seen.clear()
    verifier = memory_stores.verifier(clock=clock, audience="crm")
    crm = Starlette(
        routes=[
            Route("/crm/contacts/{id}", contact, methods=["GET", "DELETE"]),
            Route("/healthz", health),
        ],
        middleware=[Middleware(AgentcapsMiddleware, verifier=verifier, public={"/healthz"})],
    )
    with TestClient(crm) as client:
        yield client


def test_an_allowed_request_reaches_the_app_with_the_decision(
    app: TestClient, memory_stores: Stores, clock: FakeClock
) -> None:
    """The app sees request.state.agentcaps: the decision with its provenance."""
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    child = agentcaps.attenuate(token, delegate_to="fetcher", clock=clock)
    response = app.get("/crm/contacts/42", headers=bearer(child))
    assert response.status_code == 200
    assert response.json() == {"agent": "fetcher", "user": "alice", "id": "42"}


def test_denied_requests_never_reach_the_app(
    app: TestClient, memory_stores: Stores, clock: FakeClock
) -> None:
    """No token → 401; wrong action or audience → 403; the handler never runs."""
    minter = memory_stores.minter(clock=clock)
    read_only = minter.mint(**{**SCOPE, "actions": ["read"]})
    other_audience = minter.mint(**{**SCOPE, "audience": ["billing"]})
    assert_error(app.get("/crm/contacts/1"), 401)
    assert_error(app.delete("/crm/contacts/1", headers=bearer(read_only)), 403)
    assert_error(app.get("/crm/contacts/1", headers=bearer(other_audience)), 403)
    assert_error(app.get("/crm/contacts/..%2F1", headers=bearer(read_only)), 403)
    fetcher = agentcaps.attenuate(read_only, delegate_to="fetcher", clock=clock)
    two_actors = [*bearer(fetcher).items(), *[("X-Agentcaps-Actor", "fetcher")] * 2]
    assert_error(app.get("/crm/contacts/1", headers=two_actors), 403)
    assert seen == []


def test_public_paths_need_no_token(app: TestClient) -> None:
    """Paths listed as public pass through untouched."""
    assert app.get("/healthz").json() == {"ok": True}


def _websocket_app(memory_stores: Stores, clock: FakeClock) -> Starlette:
    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()
        decision: Decision = websocket.state.agentcaps
        await websocket.send_json({"agent": decision.agent})
        await websocket.close()

    verifier = memory_stores.verifier(clock=clock, audience="crm")
    return Starlette(
        routes=[WebSocketRoute("/crm/feed", feed)],
        middleware=[Middleware(AgentcapsMiddleware, verifier=verifier)],
    )


def test_a_websocket_handshake_is_decided_like_a_get(
    memory_stores: Stores, clock: FakeClock
) -> None:
    """No token or the wrong one: the socket is closed before it opens; an allowing token gets through."""
    minter = memory_stores.minter(clock=clock)
    with TestClient(_websocket_app(memory_stores, clock)) as client:
        for headers in ({}, bearer(minter.mint(**{**SCOPE, "resources": ["mail/**"]}))):
            with (
                pytest.raises(WebSocketDisconnect) as closed,
                client.websocket_connect("/crm/feed", headers=headers),
            ):
                pass
            assert closed.value.code == 1008
        with client.websocket_connect("/crm/feed", headers=bearer(minter.mint(**SCOPE))) as ws:
            assert ws.receive_json() == {"agent": "planner"}


def test_a_path_with_a_hash_is_refused_not_cut_short(
    memory_stores: Stores, clock: FakeClock
) -> None:
    """uvicorn's h11 keeps a '#' in the path; the decision must not be made on the part before it."""
    token = memory_stores.minter(clock=clock).mint(**{**SCOPE, "resources": ["crm/public/**"]})
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])

    middleware = AgentcapsMiddleware(app, verifier=memory_stores.verifier(clock=clock))
    path = "/crm/public/x#/../../private/x"
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"authorization", f"Bearer {token}".encode())]}  # fmt: skip
    asyncio.run(middleware(scope, receive, send))
    assert reached == [] and sent[0]["status"] == 403
