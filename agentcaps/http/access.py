"""What every request to the service passes through, outermost: refusals, headers, one log line.

- A token in a query string is refused (400) before any route reads it: URLs
  end up in proxies' and browsers' logs and histories.
- Every request has a request id: the client's X-Request-Id when well-formed,
  else a new one. It is echoed in the response, set for the audit events the
  request causes (`agentcaps.audit.REQUEST_ID`) and in its log lines.
- Every response says `Cache-Control: no-store`.
- One access line per request, with the path but never the query string, and
  anything in the path that looks like a token masked; its fields (method,
  path, route, status, duration, request id) are structured for the JSON
  log format. (uvicorn's own access log is off: it would print query strings.)
- The last line of defence: an exception no handler took becomes a JSON 500
  whose log line names its class and place, never its message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcaps.audit import REQUEST_ID
from agentcaps.http.errors import TokenInQuery, error_response, log_internal
from agentcaps.http.logs import REQUEST_ID_HEADER, request_id_from
from agentcaps.wire import mask_tokens

# Counts one answered request: (method, route template, status, seconds).
RequestObserver = Callable[[str, str, int, float], None]

log = logging.getLogger("agentcaps.http.access")

_TOKEN_PARAMS = frozenset({"token", "access_token", "bearer", "authorization"})


def token_in_query(query: bytes) -> bool:
    """True when a query string carries what looks like a token, or a token parameter."""
    if not query:
        return False
    text = query.decode("latin-1")
    if "agc_" in unquote_plus(text):
        return True
    names = (name.lower() for name, _ in parse_qsl(text, keep_blank_values=True))
    return any(name in _TOKEN_PARAMS for name in names)


def log_text(text: str) -> str:
    """`text` for a log line: token-shaped parts masked, control characters escaped."""
    masked = mask_tokens(text)
    return masked if masked.isprintable() else masked.encode("unicode_escape").decode("ascii")


class AccessMiddleware:
    """Refuses tokens in query strings, gives each request an id, sets no-store, logs each request.

    Args:
        app: the app.
        observe: called once per answered request (metrics), with the route's
            path template (or "unmatched").
        access_log: `all` requests, only `errors` (status 400 and up), or `off`.
    """

    def __init__(
        self, app: ASGIApp, *, observe: RequestObserver | None = None, access_log: str = "all"
    ) -> None:
        self.app = app
        self.observe = observe
        # The lowest status that gets a line (above any status: none).
        self._log_from = {"all": 0, "errors": 400, "off": 1000}[access_log]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        request_id = request_id_from(_header(scope, b"x-request-id"))
        reset = REQUEST_ID.set(request_id)

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _with_ours(message.get("headers", ()), request_id)
            await send(message)

        try:
            if token_in_query(scope.get("query_string", b"")):
                refusal = TokenInQuery(
                    "never put a token in a URL: send it as Authorization: Bearer, or in the body"
                )
                await error_response(refusal)(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback out
            log_internal(exc)
            if status == 0:
                await error_response(exc)(scope, receive, send_with_headers)
            else:  # the response had started: nothing sensible can follow
                status = 500
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if status >= self._log_from:
                _log_request(scope, status, seconds, route, request_id)
            if self.observe is not None:
                self.observe(scope["method"], route, status, seconds)
            REQUEST_ID.reset(reset)


def _log_request(scope: Scope, status: int, seconds: float, route: str, request_id: str) -> None:
    """One access line: the path without its query, token-shaped parts masked."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    path = log_text(scope["path"])
    log.info(
        '%s - "%s %s" %d %.1fms',
        where,
        scope["method"],
        path,
        status,
        seconds * 1000,
        extra={
            "fields": {
                "event": "request",
                "client": where,
                "method": scope["method"],
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            },
            "request_id": request_id,
        },
    )


def _with_ours(
    headers: Iterable[tuple[bytes, bytes]], request_id: str
) -> list[tuple[bytes, bytes]]:
    """A response's headers with our X-Request-Id, and Cache-Control: no-store unless it has one."""
    out = [(name, value) for name, value in headers if name.lower() != _REQUEST_ID]
    if not any(name.lower() == b"cache-control" for name, _ in out):
        out.append(_NO_STORE)
    out.append((_REQUEST_ID, request_id.encode("latin-1")))
    return out


_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("latin-1")
_NO_STORE = (b"cache-control", b"no-store")


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (latin-1), if there is one."""
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None
