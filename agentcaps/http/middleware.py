"""ASGI middleware that protects any Starlette or FastAPI app with agentcaps decisions.

    app.add_middleware(AgentcapsMiddleware, verifier=stores.verifier(audience="crm"))

Every HTTP request must carry `Authorization: Bearer <token>` allowing the
request's resource and action, decided exactly as forward-auth decides them
(the path is the resource, the method gives the action, unless route rules
say otherwise; `X-Agentcaps-Purpose` and `X-Agentcaps-Actor` are honoured).
An allowed request reaches the app with the Decision on
`request.state.agentcaps`; any other gets the service's JSON error (401, 403
or 503) and never reaches the app.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from agentcaps.errors import AgentCapsError
from agentcaps.http.errors import error_response
from agentcaps.http.gate import Gate, RequestVerifier
from agentcaps.http.rules import Rules

STATE_KEY = "agentcaps"


class AgentcapsMiddleware:
    """Lets through only requests a token allows; puts the Decision on `request.state.agentcaps`.

    Args:
        app: the ASGI app to protect.
        verifier: decides; give it the app's audience name.
        rules: route rules (default: the path is the resource, the method the action).
        public: exact paths that need no token (e.g. "/healthz").
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: RequestVerifier,
        rules: Rules | None = None,
        public: Collection[str] = (),
    ) -> None:
        self.app = app
        self.gate = Gate(verifier, rules)
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        try:
            # Verification may ask Redis: keep it off the event loop.
            decision = await run_in_threadpool(
                self.gate.decide,
                authorization=headers.getlist("authorization"),
                method=scope["method"],
                target=raw_path.decode("latin-1"),
                purpose=headers.get("x-agentcaps-purpose"),
                actor=headers.get("x-agentcaps-actor"),
            )
        except AgentCapsError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = decision
        await self.app(scope, receive, send)
