"""ASGI middleware that protects any Starlette or FastAPI app with agentcaps decisions.

    app.add_middleware(AgentcapsMiddleware, verifier=stores.verifier(audience="crm"))

Every HTTP request must carry `Authorization: Bearer <token>` allowing the
request's resource and action, decided exactly as forward-auth decides them
(the path is the resource, the method gives the action, unless route rules
say otherwise; `X-Agentcaps-Purpose` and `X-Agentcaps-Actor` are honoured).
An allowed request reaches the app with the Decision on
`request.state.agentcaps`; any other gets the service's JSON error (401, 403
or 503) and never reaches the app. A WebSocket handshake is decided as the
GET it is; a refused one is closed before it is accepted (the client sees
403), with the reason code as the close reason. Give the verifier an audit sink
(`stores.verifier(audience="crm", audit=trail.recorder)`) and every decision
is recorded, with the request's id: the client's X-Request-Id when
well-formed, else a new one, echoed in the response.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from agentcaps.audit import REQUEST_ID
from agentcaps.errors import AgentCapsError
from agentcaps.http.errors import error_response
from agentcaps.http.gate import Gate, RequestVerifier, without_blocking
from agentcaps.http.logs import REQUEST_ID_HEADER, request_id_from
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
        # Lifespan (and any other scope without a request) passes; HTTP and
        # WebSocket requests are decided.
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        if REQUEST_ID.get() is None:  # else an outer middleware (the service's) named it
            request_id = request_id_from(headers.get("x-request-id"))
            reset = REQUEST_ID.set(request_id)
            try:
                await self._decide(scope, receive, _echoing(send, request_id), headers, raw_path)
            finally:
                REQUEST_ID.reset(reset)
            return
        await self._decide(scope, receive, send, headers, raw_path)

    async def _decide(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, raw_path: bytes
    ) -> None:
        try:
            # Verification may ask Redis: then it runs off the event loop.
            decision = await without_blocking(
                lambda local_only: self.gate.decide(
                    authorization=headers.getlist("authorization"),
                    method=scope.get("method", "GET"),  # a WebSocket handshake is a GET
                    target=raw_path.decode("latin-1"),
                    purposes=headers.getlist("x-agentcaps-purpose"),
                    actors=headers.getlist("x-agentcaps-actor"),
                    local_only=local_only,
                )
            )
        except AgentCapsError as exc:
            if scope["type"] == "websocket":
                reason = getattr(exc, "reason", None)
                close = WebSocketClose(1008, reason.value if reason is not None else "")
                await close(scope, receive, send)
                return
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = decision
        await self.app(scope, receive, send)


def _echoing(send: Send, request_id: str) -> Send:
    """`send`, adding X-Request-Id to the response."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
        await send(message)

    return wrapped
