"""Liveness and readiness: is the process up, and can it decide safely right now."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.errors import StoreUnavailable
from agentcaps.http.endpoint import Endpoint, respond
from agentcaps.http.errors import NotReady
from agentcaps.http.models import Health, NotReadyResponse, Readiness
from agentcaps.http.service import Service, service_of
from agentcaps.stores.redis import ReplicaRevocationStore


async def healthz(request: Request) -> Response:
    return respond(Health(status="ok"))


def readiness(service: Service) -> tuple[bool, dict[str, str]]:
    """Whether verification can be trusted now, and each check's finding."""
    stores = service.stores
    checks: dict[str, str] = {}
    ready = True
    if stores.ping():
        checks["redis"] = "ok"
    else:
        checks["redis"] = "unreachable: verifications fail closed (revocation_unavailable)"
        ready = False
    try:
        # Now, not at the next verification: in direct mode nothing else
        # would look at the store's epoch while no request comes.
        stores.store.learn_epoch()
    except StoreUnavailable:
        pass  # a loss is recorded in the watch; an outage is the redis check's
    lost = stores.store.watch.lost
    if lost is None:
        checks["revocation_state"] = "ok"
    else:
        checks["revocation_state"] = lost
        ready = False
    revocations = stores.revocations
    if isinstance(revocations, ReplicaRevocationStore):
        lag, bound = revocations.lag(), service.settings.replica_staleness
        if lag <= bound:
            checks["replica"] = f"ok: confirmed current {lag:.2f} s ago (bound {bound:g} s)"
        else:
            confirmed = (
                "never confirmed" if lag == float("inf") else f"last confirmed {lag:.1f} s ago"
            )
            checks["replica"] = f"stale: {confirmed} (bound {bound:g} s)"
            ready = False
    # The audit trail never stops the service either: events wait (counted) in
    # memory or the spool until Redis takes them again.
    checks["audit"] = audit_check(service)
    # A policy set that failed to reload does not stop the service (the
    # previous set keeps deciding); it is reported here for operators.
    for kind, status in service.policies.status().items():
        if kind == "ok" or status is None:
            continue
        if status["ok"]:
            checks[f"{kind}_policy"] = f"ok: version {status['version']}"
        else:
            checks[f"{kind}_policy"] = (
                f"reload failed, still running version {status['version']}: {status['last_error']}"
            )
    return ready, checks


def audit_check(service: Service) -> str:
    """The audit trail's state for /readyz: events pending, and whether the log takes them."""
    recorder = service.audit.recorder
    if not recorder.enabled:
        return "ok: off (AGENTCAPS_AUDIT=off): no events are kept"
    status = recorder.status()
    restarts = status.get("writer_restarts")
    replaced = f"; the writer process was replaced {restarts} time(s)" if restarts else ""
    if status["log_available"] or not status["pending"]:
        return f"ok: {status['pending']} pending{replaced}"
    held = (
        f", {status['held']} held in memory only (the spool cannot be written: "
        "they are lost if the process stops)"
        if status["held"]
        else ""
    )
    return (
        f"spooling: the audit log refuses events; {status['pending']} pending, "
        f"{status['spooled']} of them spooled{held}; they are sent when it is back{replaced}"
    )


async def readyz(request: Request) -> Response:
    ready, checks = await run_in_threadpool(readiness, service_of(request))
    if not ready:
        failing = "; ".join(
            f"{name}: {text}" for name, text in checks.items() if not text.startswith("ok")
        )
        raise NotReady(failing, checks=checks)
    return respond(Readiness(ready=True, checks=checks))


ENDPOINTS = (
    Endpoint(("GET",), "/healthz", healthz, "Alive", responses={200: Health}),
    Endpoint(
        ("GET",),
        "/readyz",
        readyz,
        "Ready to decide: Redis answers, the revocation replica is current, no state was lost",
        responses={200: Readiness, 503: NotReadyResponse},
        description="503 with the failing checks while verification would fail closed.",
    ),
)
