"""Prometheus metrics, served at GET /metrics in the text exposition format.

Counters of what the service decided are fed by the audit recorder's writer
thread, off the request path: verifications by reason and their latency,
mints by outcome, policy denials, revocations, key operations. Gauges are
read when scraped: audit events pending, the revocation replica's lag and
size. Each app has its own registry, and each process its own numbers: with
`agentcaps serve --workers N` a scrape sees the worker that answered it
(docs/audit.md says how to scrape several).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from agentcaps.audit import AuditKind
from agentcaps.decision import Reason
from agentcaps.http.endpoint import Endpoint
from agentcaps.recorder import BaseRecorder, Observed
from agentcaps.revocation import RevocationKind
from agentcaps.stores.redis import ReplicaRevocationStore, Stores

# Verification latency, seconds: from a warm in-process check to a slow Redis round trip.
LATENCY_BUCKETS = (
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5,
)  # fmt: skip
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_REQUEST_CHILDREN = 1024


# The recorder's counters as metrics: (family, name, help, key in its status).
_AUDIT_STATUS: tuple[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, str], ...] = (
    (GaugeMetricFamily, "agentcaps_audit_events_pending",
     "Audit events recorded but not yet in the audit log (queued or spooled)", "pending"),
    (GaugeMetricFamily, "agentcaps_audit_events_spooled",
     "Audit events waiting in the local spool file for the audit log", "spooled"),
    (GaugeMetricFamily, "agentcaps_audit_events_held",
     "Audit events waiting in memory only: the spool could not be written", "held"),
    (CounterMetricFamily, "agentcaps_audit_events_written",
     "Audit events the audit log took", "written"),
    (CounterMetricFamily, "agentcaps_audit_write_failures",
     "Batches of audit events the audit log refused (they went to the spool)", "failures"),
    (CounterMetricFamily, "agentcaps_audit_events_dropped",
     "Audit events lost: neither the log nor a spool could hold them", "dropped"),
    (CounterMetricFamily, "agentcaps_audit_mirror_errors",
     "Audit events a JSON-lines mirror failed to write", "mirror_errors"),
)  # fmt: skip


class _State(Collector):
    """Gauges read at scrape time: the audit backlog and the revocation replica."""

    def __init__(self, stores: Stores, recorder: BaseRecorder) -> None:
        self._stores = stores
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        status = self._recorder.status()
        for family, name, text, key in _AUDIT_STATUS:
            yield family(name, text, value=status[key])
        if "writer_restarts" in status:  # a writer process (AGENTCAPS_AUDIT_WRITER=process)
            yield CounterMetricFamily(
                "agentcaps_audit_writer_restarts",
                "Audit writer processes that ended (died, or were killed as hung) and were replaced",
                value=status["writer_restarts"],
            )
        revocations = self._stores.revocations
        if isinstance(revocations, ReplicaRevocationStore):
            lag = revocations.lag()
            yield GaugeMetricFamily(
                "agentcaps_revocation_replica_lag_seconds",
                "Seconds since the revocation replica was last confirmed current",
                value=lag if lag != float("inf") else float("nan"),
            )
            yield GaugeMetricFamily(
                "agentcaps_revocation_replica_entries",
                "Revocation entries held by the local replica",
                value=len(revocations.index),
            )


class Metrics:
    """The service's metrics, in a registry of its own; feed it with `observe` and `request`."""

    def __init__(self, stores: Stores, recorder: BaseRecorder) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.verifications = Counter(
            "agentcaps_verifications", "Verifications decided, by reason", ["reason"], registry=r
        )
        self.verification_seconds = Histogram(
            "agentcaps_verification_seconds",
            "Time to decide a verification (signature, caveats, revocation, gateway policy)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mints = Counter(
            "agentcaps_mints", "Mints asked for, by outcome (ok, policy_denied)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.policy_denials = Counter(
            "agentcaps_policy_denials", "Requests a policy denied, by policy (mint, gateway)",
            ["policy"], registry=r,
        )  # fmt: skip
        self.revocations = Counter(
            "agentcaps_revocations", "Revocations recorded, by kind", ["kind"], registry=r
        )
        self.key_operations = Counter(
            "agentcaps_key_operations", "Root key operations, by operation", ["op"], registry=r
        )
        self.issuers = Counter("agentcaps_issuers_created", "Issuer tokens created", registry=r)
        self.policy_reloads = Counter(
            "agentcaps_policy_reloads", "Policy reloads, by policy and outcome",
            ["policy", "outcome"], registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "agentcaps_http_requests", "HTTP requests answered, by route and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "agentcaps_http_request_seconds", "Time to answer an HTTP request, by route",
            ["route"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # Every reason shows, at 0, before the first verification.
        for reason in Reason:
            self.verifications.labels(reason.value)
        for kind in RevocationKind:
            self.revocations.labels(kind.value)
        r.register(_State(stores, recorder))
        recorder.observe(self.observe)

    def observe(self, batch: list[Observed]) -> None:
        """The recorder's observer: count a batch of events (in the writer thread)."""
        reasons: dict[str, int] = {}
        observe_latency = self.verification_seconds.observe
        for kind, reason, allowed, seconds, op in batch:
            if kind == "verify":
                reasons[reason or "unknown"] = reasons.get(reason or "unknown", 0) + 1
                if seconds is not None:
                    observe_latency(seconds)
            elif kind == AuditKind.MINT:
                outcome = "ok" if allowed else (reason or "denied")
                self.mints.labels(outcome).inc()
                if outcome == "policy_denied":
                    self.policy_denials.labels("mint").inc()
            elif kind == AuditKind.REVOKE:
                self.revocations.labels(op or "unknown").inc()
            elif kind == AuditKind.KEY:
                self.key_operations.labels(op or "unknown").inc()
            elif kind == AuditKind.ISSUER:
                self.issuers.inc()
            elif kind == AuditKind.POLICY_RELOAD:
                self.policy_reloads.labels(op or "unknown", "ok" if allowed else "failed").inc()
        for reason, count in reasons.items():
            self.verifications.labels(reason).inc(count)
            if reason == Reason.POLICY_DENIED:
                self.policy_denials.labels("gateway").inc(count)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request (the access middleware calls this)."""
        key = (method if method in _METHODS else "OTHER", route, status)
        children = self._request_children.get(key)
        if children is None:
            # labels() takes a lock and checks its arguments: once per key,
            # of which there are few (routes are templates).
            children = (
                self.http_requests.labels(key[0], route, str(status)),
                self.http_seconds.labels(route),
            )
            if len(self._request_children) < _MAX_REQUEST_CHILDREN:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


async def serve(request: Request) -> Response:
    metrics: Metrics = request.app.state.service.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


ENDPOINT = Endpoint(
    ("GET",),
    "/metrics",
    serve,
    "Prometheus metrics (text exposition format)",
    description="Verifications by reason and their latency, mints, policy denials, "
    "revocations, key operations, HTTP requests, audit events pending, the revocation "
    "replica's lag and size. Per process: with several workers, each scrape sees one.",
)
