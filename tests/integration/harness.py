"""What the integration tests share: backends to run a contract on, polling, and token shorthands."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fakeredis
import pytest
import redis

import agentcaps
from agentcaps.config import Settings
from agentcaps.decision import Decision, Reason
from agentcaps.stores.redis import Layout, Stores
from tests.conftest import MASTER_KEY, FakeClock, RedisServer, real_stores

T = TypeVar("T")

LAYOUT = Layout()
SCOPE: dict[str, Any] = {"resources": ["crm/**"], "actions": ["read"], "purposes": ["sync"]}
REQUEST = {"resource": "crm/contacts/42", "action": "read"}
REPLICA_THREAD = "agentcaps-revocation-replica"


def eventually(check: Callable[[], T], *, timeout: float = 10.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        time.sleep(0.005)


def replica_threads() -> list[threading.Thread]:
    """The live revocation replica follower threads of this process."""
    return [t for t in threading.enumerate() if t.name == REPLICA_THREAD and t.is_alive()]


class Backend:
    """Where a contract runs: `open()` gives Stores on the same data every time.

    `clock` is the clock every Stores it opens runs on; `raw` reads the stored
    data directly, past the library; inside `outage()` the store does not answer.
    """

    name = "?"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._opened: list[Stores] = []

    def _connect(self, settings: Settings) -> Stores:
        raise NotImplementedError

    @property
    def raw(self) -> redis.Redis:
        raise NotImplementedError

    def outage(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def open(self, **settings: Any) -> Stores:
        """New Stores on this backend's data; closed when the test ends."""
        stores = self._connect(Settings(**{"master_key": MASTER_KEY, **settings}))
        self._opened.append(stores)
        if stores.settings.revocation_mode == "replica":
            assert stores.revocations.wait_ready(10), "the replica never loaded"  # type: ignore[union-attr]
        return stores

    def close(self) -> None:
        for stores in reversed(self._opened):
            stores.close()
        self._opened.clear()


class RedisBackend(Backend):
    """A real redis-server."""

    name = "redis"

    def __init__(self, clock: FakeClock, server: RedisServer) -> None:
        super().__init__(clock)
        self.server = server
        self._raw = redis.Redis.from_url(server.url, socket_timeout=5)

    def _connect(self, settings: Settings) -> Stores:
        return real_stores(self.server, self.clock, **_fields(settings))

    @property
    def raw(self) -> redis.Redis:
        return self._raw

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def close(self) -> None:
        super().close()
        self._raw.close()


class MemoryBackend(Backend):
    """memory://, every Stores of the test sharing one in-process fakeredis server."""

    name = "memory"

    def __init__(self, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(clock)
        self.server = fakeredis.FakeServer()
        # connect() makes a fresh FakeServer per call; share ours instead, so
        # that several Stores see the same data as they would on a real Redis.
        monkeypatch.setattr(fakeredis, "FakeServer", lambda *a, **k: self.server)
        self._raw = fakeredis.FakeRedis(server=self.server)

    def _connect(self, settings: Settings) -> Stores:
        return agentcaps.connect("memory://", settings=settings, clock=self.clock)

    @property
    def raw(self) -> redis.Redis:
        return self._raw

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.server.connected = False
        try:
            yield
        finally:
            self.server.connected = True

    def close(self) -> None:
        super().close()
        self._raw.close()


def _fields(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def mint(stores: Stores, clock: FakeClock, **options: Any) -> agentcaps.MintedToken:
    """A token for acme/alice's planner (options override), minted on `stores`."""
    claims: dict[str, Any] = {"customer": "acme", "user": "alice", "agent": "planner", "ttl": 600}
    claims.update(SCOPE)
    claims.update(options)
    return stores.minter(clock=clock, sleep=clock.advance).issue(**claims)


def verify(stores: Stores, clock: FakeClock, token: str, **request: Any) -> Decision:
    """The decision of a verifier on `stores` for the standard request."""
    return stores.verifier(clock=clock).verify(token, **{**REQUEST, **request})


def reason(stores: Stores, clock: FakeClock, token: str) -> Reason:
    """Just the reason."""
    return verify(stores, clock, token).reason
