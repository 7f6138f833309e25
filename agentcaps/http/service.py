"""What the service's routes share: stores, minters, verifiers, the authority over its own routes.

One `Service` per app, built by `create_app` and reached from a request as
`service_of(request)`. Route handlers are thin: they read the body, ask the
Service's parts, and answer; the work that may touch Redis runs in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from agentcaps.audit import AuditEvent, policy_reload_event
from agentcaps.config import Settings
from agentcaps.http.gate import Gate, bearer_token
from agentcaps.http.metrics import Metrics
from agentcaps.http.rules import Rules
from agentcaps.mint import Minter
from agentcaps.policy import PolicedVerifier, Policies, ReloadResult
from agentcaps.recorder import BaseRecorder
from agentcaps.service_tokens import SERVICE_AUDIENCE, ServiceAuthority
from agentcaps.stores.audit import AuditTrail, open_audit
from agentcaps.stores.redis import Stores

Clock = Callable[[], float]


@dataclass
class Service:
    """The parts of one running service.

    `minter` mints agent tokens (the deployment's max ttl); `service_minter`
    mints admin and issuer tokens, which may live up to the verifiers' max
    lifetime. `authority` guards the service's own routes (audience
    `agentcaps`, platform keys only); `gateway` is the verifier of the verify
    and forward-auth routes (the deployment's audience, AGENTCAPS_AUDIENCE),
    with the gateway policy applied after a token's own caveats; `policies`
    are the mint and gateway policies, reloaded on SIGHUP and file change.
    `audit` records every decision and change (both verifiers hand it their
    decisions); `metrics` counts them for /metrics.
    """

    settings: Settings
    stores: Stores
    clock: Clock
    minter: Minter
    service_minter: Minter
    authority: ServiceAuthority
    gateway: PolicedVerifier
    gate: Gate
    policies: Policies
    audit: AuditTrail
    metrics: Metrics

    def record(self, event: AuditEvent) -> None:
        """Record an audit event (queued: returns at once)."""
        self.audit.recorder.record(event)

    @classmethod
    def build(
        cls,
        settings: Settings,
        stores: Stores,
        *,
        clock: Clock = time.time,
        rules: Rules,
        policies: Policies,
        audit: AuditTrail | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Service:
        """The parts, on `stores`; `audit` defaults to the deployment's trail (open_audit)."""
        if audit is None:
            audit = open_audit(stores, clock=clock, settings=settings)
        recorder = audit.recorder
        cache = settings.signature_cache_size
        gateway = PolicedVerifier(
            stores.verifier(clock=clock, audience=settings.audience, signature_cache_size=cache),
            policies.gateway,
            clock,
            audit=recorder,
        )
        service_verifier = stores.verifier(
            clock=clock, audience=SERVICE_AUDIENCE, audit=recorder, signature_cache_size=cache
        )
        for store in policies.stores:
            store.subscribe(_reload_listener(recorder, store.kind.value, clock))
        return cls(
            settings=settings,
            stores=stores,
            clock=clock,
            minter=stores.minter(clock=clock, max_ttl=settings.max_ttl, sleep=sleep),
            service_minter=stores.minter(clock=clock, max_ttl=settings.max_lifetime, sleep=sleep),
            authority=ServiceAuthority(stores.keys, service_verifier),
            gateway=gateway,
            gate=Gate(gateway, rules),
            policies=policies,
            audit=audit,
            metrics=Metrics(stores, recorder),
        )


def _reload_listener(
    recorder: BaseRecorder, policy: str, clock: Clock
) -> Callable[[ReloadResult], None]:
    """Records each reload of one policy store (swapped in, or failed)."""

    def listener(result: ReloadResult) -> None:
        if recorder.closed:
            return
        recorder.record(
            policy_reload_event(
                clock(),
                policy,
                swapped=result.swapped,
                version=result.version,
                previous_version=result.previous_version,
                error=result.error,
            )
        )

    return listener


def service_of(request: Request) -> Service:
    """The Service of the app serving `request`."""
    service: Service = request.app.state.service
    return service


def bearer(request: Request) -> str | None:
    """The request's bearer token, if any (NotAuthenticated for a malformed Authorization)."""
    return bearer_token(request.headers.getlist("authorization"))
