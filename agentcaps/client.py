"""For agents and tools over HTTP: an httpx auth class, and a small client of the agentcaps service.

    auth = AgentcapsAuth(token)
    httpx.get("https://crm.example/contacts/42", auth=auth.narrow(resources=["crm/contacts/42"], ttl=30))

`narrow` attenuates offline (no key, no network): each call can carry a
token that allows only what that call needs, for seconds, so a leaked request
log or a compromised tool gets almost nothing.

This module imports httpx; `import agentcaps` does not import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Self
from urllib.parse import urlencode

import httpx

from agentcaps.config import redact_url
from agentcaps.errors import AgentCapsError
from agentcaps.mint import attenuate

Clock = Callable[[], float]


class AgentcapsAuth(httpx.Auth):
    """Sends `Authorization: Bearer <token>` (and a declared purpose) with each request.

    Args:
        token: the agent's token.
        purpose: sent as X-Agentcaps-Purpose when given.
        clock: unix time, for `narrow(ttl=…)`.
    """

    def __init__(self, token: str, *, purpose: str | None = None, clock: Clock = time.time) -> None:
        self._token = token
        self.purpose = purpose
        self._clock = clock

    @property
    def token(self) -> str:
        """The token this auth sends: a bearer credential, treat it as a secret."""
        return self._token

    def __repr__(self) -> str:
        # Never the token: reprs end up in logs and tracebacks.
        return f"AgentcapsAuth(purpose={self.purpose!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        if self.purpose is not None:
            request.headers["X-Agentcaps-Purpose"] = self.purpose
        yield request

    def narrow(
        self,
        *,
        resources: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        purposes: Sequence[str] | None = None,
        ttl: int | None = None,
        expires_at: int | None = None,
        delegate_to: str | None = None,
        audience: Sequence[str] | None = None,
        max_delegations: int | None = None,
        purpose: str | None = None,
    ) -> AgentcapsAuth:
        """A new auth whose token is this one attenuated offline (see `agentcaps.attenuate`).

        `purpose` (the declared purpose header) carries over unless given.

        Raises:
            InvalidArgument: a bad option, or none at all.
        """
        narrowed = attenuate(
            self._token,
            resources=resources,
            actions=actions,
            purposes=purposes,
            ttl=ttl,
            expires_at=expires_at,
            delegate_to=delegate_to,
            audience=audience,
            max_delegations=max_delegations,
            clock=self._clock,
        )
        return AgentcapsAuth(
            narrowed, purpose=purpose if purpose is not None else self.purpose, clock=self._clock
        )


class ServiceError(AgentCapsError):
    """The service refused a request (or could not be reached: `status` None)."""

    def __init__(self, status: int | None, error: str, detail: str) -> None:
        prefix = f"{status} {error}" if status is not None else error
        super().__init__(f"{prefix}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


class ServiceClient:
    """A client of the agentcaps service's JSON API (what `agentcaps … --url` uses).

    Args:
        url: the service's base URL, e.g. http://127.0.0.1:8080.
        token: the bearer credential (an admin or issuer token), if the calls need one.
        timeout: seconds per request.
        transport: an httpx transport (tests).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ServiceError(None, "bad_url", "the service URL starts with http:// or https://")
        self._url = url.rstrip("/")
        # What messages show of the URL: never a password in it.
        self._shown = redact_url(self._url)
        self._token = token
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __repr__(self) -> str:
        return f"ServiceClient(url={self._shown!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> Any:
        """Send one request; return the JSON answer of a 2xx, else raise ServiceError.

        `token` overrides the client's credential for this call.
        """
        credential = token or self._token
        if credential and not (credential.isascii() and credential.isprintable()):
            # A token file of two lines, a stray CR: no header could carry it.
            raise ServiceError(None, "bad_token", "the token is not one line of printable text")
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        try:
            response = self._http.request(method, self._url + path, json=body, headers=headers)
        except httpx.InvalidURL:
            raise ServiceError(None, "bad_url", f"not a URL httpx can use: {self._shown}") from None
        except httpx.HTTPError as exc:
            raise ServiceError(
                None,
                "unreachable",
                f"cannot reach the service at {self._shown} ({type(exc).__name__})",
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.is_success and answer is not None:
            return answer
        if isinstance(answer, dict):
            raise ServiceError(
                response.status_code,
                str(answer.get("error", "error")),
                str(answer.get("detail", "")),
            )
        raise ServiceError(
            response.status_code, "error", response.reason_phrase or "no JSON answer"
        )

    def mint(self, **fields: Any) -> dict[str, Any]:
        """POST /v1/tokens: mint an agent token (needs an issuer or admin token)."""
        return dict(self.request("POST", "/v1/tokens", _present(fields)))

    def verify(self, token: str, **fields: Any) -> dict[str, Any]:
        """POST /v1/verify: the decision, allowed or not."""
        return dict(self.request("POST", "/v1/verify", {"token": token, **_present(fields)}))

    def revoke(self, *, token: str | None = None, **fields: Any) -> dict[str, Any]:
        """POST /v1/revocations. `revoke(token=T)` with no credential: T revokes itself."""
        body = _present({"token": token, **fields})
        return dict(self.request("POST", "/v1/revocations", body, token=self._token or token))

    def audit(self, **params: Any) -> dict[str, Any]:
        """GET /v1/audit: a page of audit events (needs an admin or issuer token)."""
        query = urlencode(_present(params))
        return dict(self.request("GET", "/v1/audit" + (f"?{query}" if query else "")))


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
