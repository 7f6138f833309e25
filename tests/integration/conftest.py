"""Backends the integration contracts run on: a real redis-server and memory://."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FakeClock, RedisServer
from tests.integration.harness import MemoryBackend, RedisBackend


@pytest.fixture
def redis_backend(redis_server: RedisServer, clock: FakeClock) -> Iterator[RedisBackend]:
    """A real redis-server without persistence."""
    backend = RedisBackend(clock, redis_server)
    yield backend
    backend.close()


@pytest.fixture
def durable_backend(durable_redis_server: RedisServer, clock: FakeClock) -> Iterator[RedisBackend]:
    """A real redis-server with AOF on (`appendfsync always`): its data survives a restart."""
    backend = RedisBackend(clock, durable_redis_server)
    yield backend
    backend.close()


@pytest.fixture
def memory_backend(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryBackend]:
    """memory://, the embedded default, shared by every Stores the test opens."""
    backend = MemoryBackend(clock, monkeypatch)
    yield backend
    backend.close()
