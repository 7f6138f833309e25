"""`create_app`: the agentcaps service as one Starlette app (run it with uvicorn).

uvicorn --factory agentcaps.http.app:create_app      # or: agentcaps serve
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware

import agentcaps
from agentcaps.config import Settings
from agentcaps.errors import NothingPersistsWarning
from agentcaps.http import audit, forward_auth, health, keys, metrics, openapi, revocations, tokens
from agentcaps.http.access import AccessMiddleware
from agentcaps.http.endpoint import Endpoint
from agentcaps.http.errors import EXCEPTION_HANDLERS
from agentcaps.http.rules import Rules
from agentcaps.http.service import Service
from agentcaps.policy import Policies
from agentcaps.stores.audit import AuditTrail
from agentcaps.stores.redis import Stores

Clock = Callable[[], float]
log = logging.getLogger("agentcaps.http")

ENDPOINTS: tuple[Endpoint, ...] = (
    *forward_auth.ENDPOINTS,  # first: the route that answers most requests is matched first
    *tokens.ENDPOINTS,
    *revocations.ENDPOINTS,
    *keys.ENDPOINTS,
    *audit.ENDPOINTS,
    *health.ENDPOINTS,
    metrics.ENDPOINT,
    openapi.ENDPOINT,
)


def _version() -> str:
    try:
        return version("agentcaps")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def open_stores(settings: Settings, *, clock: Clock = time.time) -> Stores:
    """The deployment's stores, checked: a wrong master key or a lost store refuses to start.

    Raises:
        ConfigError: a bad URL, no master key for a real Redis, or the wrong one.
        StoreUnavailable: Redis does not answer.
    """
    with warnings.catch_warnings():
        # The CLI says it louder; a library user gets the NothingPersistsWarning of connect.
        warnings.simplefilter("ignore", NothingPersistsWarning)
        stores = agentcaps.connect(settings=settings, clock=clock)
    try:
        stores.keys.check_master_key()
        stores.store.ensure_epoch()
    except BaseException:
        stores.close()
        raise
    return stores


def create_app(
    settings: Settings | None = None,
    stores: Stores | None = None,
    clock: Clock = time.time,
    *,
    rules: Rules | None = None,
    policies: Policies | None = None,
    audit_trail: AuditTrail | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Starlette:
    """The agentcaps service.

    Args:
        settings: the deployment's settings (default: `stores.settings`, else
            read from the environment).
        stores: the stores to serve (default: opened from `settings`, checked,
            and closed when the app shuts down).
        clock: unix time, for minting, verification and revocation times.
        rules: forward-auth route rules (default: AGENTCAPS_ROUTES, else the
            path is the resource).
        policies: the mint and gateway policies (default: from `settings`;
            reloaded on SIGHUP, and when their files change if
            `settings.policy_poll_interval` is not 0).
        audit_trail: where audit events go (default: the deployment's trail,
            as AGENTCAPS_AUDIT says, flushed and closed when the app shuts
            down; a trail given here is the caller's to close).
        sleep: waits (a mint waits out a revocation made the same second);
            with a test clock, one that moves it.

    Raises:
        ConfigError, StoreUnavailable: the stores cannot be opened safely.
        PolicyError: the policies do not load.
    """
    if settings is None:
        settings = stores.settings if stores is not None else Settings.from_env()
    if policies is None:
        policies = Policies.from_settings(settings)
    owned = stores is None
    if stores is None:
        stores = open_stores(settings, clock=clock)
    if rules is None:
        rules = Rules.load(settings.routes_file) if settings.routes_file else Rules()
    service = Service.build(
        settings, stores, clock=clock, rules=rules, policies=policies, audit=audit_trail,
        sleep=sleep,
    )  # fmt: skip
    document = openapi.build(ENDPOINTS, version=_version())
    routes = [e.route() for e in ENDPOINTS]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = (
            policies.watch(settings.policy_poll_interval) if settings.policy_poll_interval else None
        )
        try:
            policies.install_sighup()
        except ValueError:  # not the main thread (e.g. a test client): file changes still reload
            log.info("SIGHUP does not reload policies here: not running in the main thread")
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            if audit_trail is None:
                # Every event recorded so far reaches Redis, or else the spool.
                await run_in_threadpool(service.audit.close)
            if owned:
                service.stores.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                AccessMiddleware,
                observe=service.metrics.request,
                access_log=settings.access_log,
            )
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.openapi = document
    return app
