"""Shared fixtures: a controllable clock, embedded stores, and real redis-server processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentcaps
from agentcaps.config import Settings
from agentcaps.stores.redis import Stores
from tests.servers import RedisServer, ServerMissing

__all__ = ["MASTER_KEY", "SCOPE", "FakeClock", "RedisServer", "real_stores"]

MASTER_KEY = bytes(range(32))


class FakeClock:
    """A clock tests move by hand: `clock()` is unix time, `clock.advance(s)` moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_stores(clock: FakeClock) -> Iterator[Stores]:
    """The embedded default (memory://), direct mode, on the test clock."""
    stores = agentcaps.connect("memory://", settings=Settings(master_key=MASTER_KEY), clock=clock)
    yield stores
    stores.close()


# A mint request that the usual request below is allowed under.
SCOPE: dict[str, object] = {
    "customer": "acme",
    "user": "alice",
    "agent": "planner",
    "resources": ["crm/**"],
    "actions": ["read", "write"],
    "purposes": ["sync"],
    "ttl": 600,
}


@pytest.fixture
def minter(memory_stores: Stores, clock: FakeClock) -> agentcaps.Minter:
    """A Minter on the embedded stores and the test clock."""
    return memory_stores.minter(clock=clock)


@pytest.fixture
def verifier(memory_stores: Stores, clock: FakeClock) -> agentcaps.Verifier:
    """A Verifier on the embedded stores and the test clock (no audience)."""
    return memory_stores.verifier(clock=clock)


def new_redis_server(directory: Path, **options: object) -> RedisServer:
    """A RedisServer, or a skip where redis-server is missing (a failure under CI)."""
    try:
        return RedisServer(directory, **options)  # type: ignore[arg-type]
    except ServerMissing as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run installs it from Debian's packages")
        pytest.skip(str(exc))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server (no persistence) for one test."""
    server = new_redis_server(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server with AOF on and `appendfsync always`."""
    server = new_redis_server(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


def real_stores(server: RedisServer, clock: FakeClock | None = None, **settings: object) -> Stores:
    """Stores on a real server, with the test master key."""
    options: dict[str, object] = {"master_key": MASTER_KEY, "redis_url": server.url}
    options.update(settings)
    kwargs = {"clock": clock} if clock is not None else {}
    return agentcaps.connect(server.url, settings=Settings(**options), **kwargs)  # type: ignore[arg-type]
