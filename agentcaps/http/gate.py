"""The gateway decision shared by forward-auth and the ASGI middleware.

Bearer token + method + request target (+ declared purpose and authenticated
actor) -> an allowing Decision, or the error that explains the refusal
(NotAuthenticated: 401, NotAllowed: 403, StoreUnavailable: 503).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Protocol, TypeVar
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool

from agentcaps.caveats import MAX_NAME_CHARS
from agentcaps.decision import Decision, Reason
from agentcaps.errors import NeedsIO, NotAllowed, NotAuthenticated, refusal
from agentcaps.http.rules import PathRefused, Rules

# Header values are ASCII; names may be any printable text. Values are
# percent-encoded UTF-8 with ',' and '%' always encoded, so a list joined
# with ',' splits back unambiguously.
_HEADER_SAFE = "-._~:@!$&'()*+;=/"

T = TypeVar("T")


def bearer_token(authorization: Sequence[str]) -> str | None:
    """The token of `Authorization: Bearer <token>`, None when there is no such header.

    Raises:
        NotAuthenticated: another scheme, an empty token, or several headers.
    """
    if not authorization:
        return None
    if len(authorization) > 1:
        raise NotAuthenticated("send one Authorization header, not several")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("use Authorization: Bearer <token>")
    return token


@lru_cache(maxsize=4096)
def header_value(name: str) -> str:
    """A name (customer, user, agent, purpose) as a header value: percent-encoded UTF-8."""
    # Cached: a gateway sees the same few names on request after request.
    return quote(name, safe=_HEADER_SAFE)


# What an upstream learns about an allowed request (who acts, for whom, why):
# each header, in the order identity_values gives them, and what it says.
IDENTITY_HEADERS = {
    "X-Agentcaps-Customer": "the customer (percent-encoded UTF-8)",
    "X-Agentcaps-User": "the user the agent acts for",
    "X-Agentcaps-Agent": "the last holder: who is acting",
    "X-Agentcaps-Chain": "the provenance chain, first holder first, comma-separated",
    "X-Agentcaps-Token-Id": "the token id (hex)",
    "X-Agentcaps-Purpose": "the declared purpose, else the token's purposes",
}


def identity_values(decision: Decision, purpose: str | None) -> tuple[str, ...]:
    """The values of IDENTITY_HEADERS for an allowed request, in that order."""
    purposes = (purpose,) if purpose is not None else decision.purposes
    return (
        header_value(decision.customer or ""),
        header_value(decision.user or ""),
        header_value(decision.agent or ""),
        ",".join([header_value(a) for a in decision.chain]),
        decision.token_id or "",
        ",".join([header_value(p) for p in purposes]),
    )


def identity_headers(decision: Decision, purpose: str | None) -> dict[str, str]:
    """IDENTITY_HEADERS and their values for an allowed request."""
    return dict(zip(IDENTITY_HEADERS, identity_values(decision, purpose), strict=True))


class RequestVerifier(Protocol):
    """What a Gate decides with: a Verifier, or one that also applies a gateway policy."""

    def verify(
        self,
        token: object,
        *,
        resource: str,
        action: str,
        purpose: str | None = None,
        actor: str | None = None,
        local_only: bool = False,
    ) -> Decision: ...


class Gate:
    """Decides gateway requests with one verifier and one set of route rules."""

    def __init__(self, verifier: RequestVerifier, rules: Rules | None = None) -> None:
        self._verifier = verifier
        self.rules = rules or Rules()

    def decide(
        self,
        *,
        authorization: Sequence[str],
        method: str,
        target: str,
        purposes: Sequence[str] = (),
        actors: Sequence[str] = (),
        refused: NotAllowed | None = None,
        local_only: bool = False,
    ) -> Decision:
        """The allowing decision for this request, else raise the refusal.

        `target` is the raw request target (path and query, undecoded).
        `purposes` and `actors` are the X-Agentcaps-Purpose and -Actor
        values as sent: an empty one counts as none, and more than one is
        refused (which the client meant, or the gateway added, is unknown).
        `refused`: the caller already found the request ambiguous. Either
        way the token is still judged, so that a bad token answers 401 and a
        good one the refusal. `local_only`: see Verifier.verify.

        Raises:
            NotAuthenticated, NotAllowed, StoreUnavailable; NeedsIO with `local_only`.
        """
        token = bearer_token(authorization)
        if token is None:
            raise NotAuthenticated(
                "this request needs a bearer token (Authorization: Bearer agc_…)"
            )
        purpose = actor = None
        try:
            purpose = _declared(purposes, "X-Agentcaps-Purpose", Reason.PURPOSE_DENIED)
            actor = _declared(actors, "X-Agentcaps-Actor", Reason.ACTOR_MISMATCH)
        except NotAllowed as exc:
            refused = refused or exc
        # Refused, a request is judged on no resource and no action: what
        # its client sent (the method too) is neither read nor recorded.
        resource, action = "", ""
        if refused is None:
            try:
                resource, action = self.rules.resolve(method, target)
            except PathRefused as exc:
                refused = exc
        # With a refused path the token is judged on "", which is no resource:
        # this never allows, and tells a bad token apart from a bad path.
        decision = self._verifier.verify(
            token,
            resource=resource,
            action=action,
            purpose=purpose,
            actor=actor,
            local_only=local_only,
        )
        if decision.allowed:
            return decision
        error = refusal(decision)
        if refused is not None and isinstance(error, NotAllowed):
            raise refused
        if isinstance(error, NotAllowed) and decision.reason is Reason.RESOURCE_DENIED:
            raise NotAllowed(
                f"the token does not allow {action} on {resource!r} (resource_denied)",
                decision.reason,
            )
        raise error


def _declared(values: Sequence[str], header: str, reason: Reason) -> str | None:
    """The one value of a header that declares something about the request; None if absent or empty.

    Raises:
        NotAllowed: the header is given more than once.
    """
    if len(values) > 1:
        raise NotAllowed(f"{header} is given more than once", reason)
    if values and len(values[0]) > MAX_NAME_CHARS:
        # No token names a purpose or an agent this long: refused before it is judged or recorded.
        raise NotAllowed(f"{header} is longer than {MAX_NAME_CHARS} characters", reason)
    return (values[0] or None) if values else None


async def without_blocking(decide: Callable[[bool], T]) -> T:
    """`decide(local_only=True)` right on the event loop; if it needs I/O, `decide(False)` in a thread.

    A replica-mode verification with a cached key is microseconds of CPU:
    handing it to a thread would cost more than it does. Anything that must
    ask Redis still runs off the loop.
    """
    try:
        return decide(True)
    except NeedsIO:
        return await run_in_threadpool(decide, False)
