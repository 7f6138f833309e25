"""Errors of the HTTP layer, and the one place where every error becomes a status code.

Every error response is JSON `{"error": code, "detail": text}` (plus named
extras, such as the fields a 422 found wrong), carries `Cache-Control:
no-store`, and never a traceback. `error_response` is used by the app's
exception handlers and by the ASGI middleware that protects other apps, so
both speak alike.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any, ClassVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agentcaps.decision import Reason
from agentcaps.errors import (
    AgentCapsError,
    ConfigError,
    InvalidArgument,
    InvalidToken,
    NotAllowed,
    NotAuthenticated,
    RevocationStateLost,
    StoreUnavailable,
    UnknownKey,
)
from agentcaps.policy.errors import PolicyDenied
from agentcaps.wire import mask_tokens

log = logging.getLogger("agentcaps.http")

REALM = "agentcaps"


class HttpError(AgentCapsError):
    """A request the HTTP layer refuses before the library sees it; carries its own status."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.extra = extra


class BadRequest(HttpError):
    """The request is not one the service can read (e.g. no original request for forward-auth)."""


class MalformedJson(HttpError):
    """The body is not JSON (or not UTF-8, or has duplicate keys, NaN or lone surrogates)."""

    code = "malformed_json"


class TokenInQuery(HttpError):
    """A token in a query string: URLs end up in logs, so the service refuses to read one."""

    code = "token_in_query"


class BodyTooLarge(HttpError):
    """The body is over the limit (64 KiB); nothing past the limit was read."""

    status = 413
    code = "too_large"


class UnsupportedMediaType(HttpError):
    """The body is not declared as JSON."""

    status = 415
    code = "unsupported_media_type"


class InvalidBody(HttpError):
    """The JSON does not fit the route's schema; `fields` names each field found wrong."""

    status = 422
    code = "invalid_request"


class NotReady(HttpError):
    """The service cannot decide safely right now (readiness); `checks` says why."""

    status = 503
    code = "not_ready"


# The library's errors, by class; the most specific class in an exception's MRO wins.
_LIBRARY: Mapping[type[Exception], tuple[int, str]] = {
    PolicyDenied: (403, "policy_denied"),
    NotAuthenticated: (401, "unauthenticated"),
    NotAllowed: (403, "forbidden"),
    InvalidToken: (422, "invalid_token"),
    InvalidArgument: (422, "invalid_argument"),
    UnknownKey: (404, "unknown_key"),
    RevocationStateLost: (503, "revocation_state_lost"),
    StoreUnavailable: (503, "unavailable"),
    ConfigError: (503, "misconfigured"),
    AgentCapsError: (400, "bad_request"),
}

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def _status_of(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.code
    for cls in type(exc).__mro__:
        if cls in _LIBRARY:
            return _LIBRARY[cls]
    if isinstance(exc, HTTPException):
        return exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error")
    return 500, "internal"


def error_response(exc: Exception) -> Response:
    """The JSON response for `exc`: status, `{"error", "detail"}` and the headers it calls for."""
    status, code = _status_of(exc)
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    body: dict[str, object] = {"error": code}
    if status == 500:
        # The message of an unexpected error may hold anything: say nothing of it.
        body["detail"] = "internal error; it has been logged"
    elif isinstance(exc, HTTPException):
        body["detail"] = str(exc.detail)
        headers.update(exc.headers or {})
    else:
        body["detail"] = str(exc)
    if isinstance(exc, HttpError):
        body.update(exc.extra)
    # Whatever an error quotes of the request (a path, a field's name) may be
    # a token pasted in the wrong place: it is never answered back.
    body = _masked(body)
    reason = getattr(exc, "reason", None)
    if isinstance(exc, StoreUnavailable):
        reason = Reason.REVOCATION_UNAVAILABLE
        headers["Retry-After"] = "1"
    if isinstance(reason, Reason):
        headers["X-Agentcaps-Reason"] = reason.value
        body["reason"] = reason.value
    if isinstance(exc, NotAuthenticated):
        challenge = f'Bearer realm="{REALM}"'
        if exc.reason is not None:
            challenge += f', error="invalid_token", error_description="{exc.reason.value}"'
        headers["WWW-Authenticate"] = challenge
    return JSONResponse(body, status_code=status, headers=headers)


def _masked(value: Any) -> Any:
    if type(value) is str:
        return mask_tokens(value)
    if type(value) is dict:
        return {k: _masked(v) for k, v in value.items()}
    if type(value) is list:
        return [_masked(v) for v in value]
    return value


def log_internal(exc: BaseException) -> None:
    """Log an unexpected error: its class and where it happened, never its message.

    Messages can carry request data, and request data can be a token.
    """
    where = "".join(traceback.format_tb(exc.__traceback__))
    log.error("internal error (%s)\n%s", type(exc).__name__, where)


async def handle(request: Request, exc: Exception) -> Response:
    """The app's exception handler, for every exception class."""
    if _status_of(exc)[0] == 500:
        log_internal(exc)
    return error_response(exc)


EXCEPTION_HANDLERS = {Exception: handle, HTTPException: handle, AgentCapsError: handle}
