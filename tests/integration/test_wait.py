"""Revocations and Redis replicas: acknowledged only once WAIT says the replicas have them."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agentcaps import Revocation, RevocationKind, StoreUnavailable
from agentcaps.audit import decode
from agentcaps.stores.audit import open_audit
from agentcaps.stores.redis import UNCONFIRMED, Stores
from tests.conftest import RedisServer, real_stores
from tests.integration.harness import LAYOUT, eventually


@pytest.fixture
def replica(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server replicating `redis_server`, in sync before the test starts."""
    directory = tmp_path / "replica"
    directory.mkdir()
    with redis.Redis.from_url(redis_server.url, socket_timeout=5) as primary:
        primary.config_set("repl-diskless-sync-delay", 0)  # sync at once, not after 5 s
    server = RedisServer(directory, extra=("--replicaof", "127.0.0.1", str(redis_server.port)))
    server.start()
    try:
        with redis.Redis.from_url(redis_server.url, socket_timeout=5) as primary:
            # In sync means it confirms a write: a replica that has not yet
            # acknowledged its first sync gets no stream (nor GETACK) until it does.
            primary.set("warm-up", 1)
            eventually(lambda: primary.wait(1, 1000) == 1, what="the replica is in sync")
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@pytest.fixture
def replica_raw(replica: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(replica.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def open_stores(redis_server: RedisServer) -> Iterator[list[Stores]]:
    opened: list[Stores] = []
    yield opened
    for stores in opened:
        stores.close()


def revocation(name: str) -> Revocation:
    return Revocation(RevocationKind.AGENT, (name,), int(time.time()))


def test_revoke_returns_only_once_the_replica_has_the_revocation(
    redis_server: RedisServer,
    replica: RedisServer,
    replica_raw: redis.Redis,
    open_stores: list[Stores],
) -> None:
    """With a replica connected, the entry is on the replica as soon as revoke() returns."""
    stores = real_stores(redis_server)
    open_stores.append(stores)
    for i in range(20):
        stored = stores.revocations.revoke(revocation(f"agent{i}"))
        assert replica_raw.hget(LAYOUT.rv, stored.field()) == stored.value()


def test_revoke_waits_for_a_paused_replica_to_confirm(
    redis_server: RedisServer,
    replica: RedisServer,
    replica_raw: redis.Redis,
    open_stores: list[Stores],
) -> None:
    """A revocation made while the replica is paused returns only after the replica resumes and has it."""
    stores = real_stores(redis_server)  # WAIT waits up to 1 s
    open_stores.append(stores)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    resumed = threading.Event()

    def resume() -> None:
        time.sleep(0.3)
        resumed.set()
        replica.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    resumer = threading.Thread(target=resume)
    resumer.start()
    try:
        stored = stores.revocations.revoke(revocation("fetcher"))
        assert resumed.is_set(), "revoke() returned before the replica could confirm"
        assert replica_raw.hget(LAYOUT.rv, stored.field()) == stored.value()
    finally:
        resumer.join()


def test_a_revocation_a_connected_replica_does_not_confirm_is_not_acknowledged(
    redis_server: RedisServer, replica: RedisServer, open_stores: list[Stores]
) -> None:
    """When a connected replica cannot confirm in time, revoke() raises StoreUnavailable."""
    stores = real_stores(redis_server)
    open_stores.append(stores)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match="confirmed by 0 of 1"):
            stores.revocations.revoke(revocation("fetcher"))
    finally:
        replica.process.send_signal(signal.SIGCONT)
    stores.revocations.revoke(revocation("mailer"))


def test_a_revocation_in_force_but_not_confirmed_is_still_recorded(
    redis_server: RedisServer, replica: RedisServer, open_stores: list[Stores]
) -> None:
    """The call fails (not acknowledged), yet the revocation is in force on the primary: the audit trail has it."""
    too_many = real_stores(redis_server, wait_replicas=2, audit_writer="thread")
    open_stores.append(too_many)
    trail = open_audit(too_many)
    try:
        with pytest.raises(StoreUnavailable, match="confirmed by 1 of 2"):
            too_many.revocations.revoke(revocation("fetcher"))
        assert trail.recorder.flush(10) and trail.log is not None
        [recorded] = [decode(e.body) for e in trail.log.scan()]
        assert recorded.op == "agent" and recorded.agent == "fetcher"
        assert recorded.detail is not None and "not confirmed by its replicas" in recorded.detail
    finally:
        trail.close()


def test_demanding_more_replicas_than_exist_is_not_acknowledged(
    redis_server: RedisServer, replica: RedisServer, open_stores: list[Stores]
) -> None:
    """With wait_replicas above the replicas there are, revoke() raises StoreUnavailable; at the real count it succeeds."""
    too_many = real_stores(redis_server, wait_replicas=2)
    enough = real_stores(redis_server, wait_replicas=1)
    open_stores.extend([too_many, enough])
    with pytest.raises(StoreUnavailable, match="confirmed by 1 of 2"):
        too_many.revocations.revoke(revocation("fetcher"))
    enough.revocations.revoke(revocation("fetcher"))


def test_key_revocations_wait_for_replicas_too(
    redis_server: RedisServer,
    replica: RedisServer,
    replica_raw: redis.Redis,
    open_stores: list[Stores],
) -> None:
    """Revoking a root key is acknowledged only once the replica has the key's new state and its entry."""
    stores = real_stores(redis_server)
    too_many = real_stores(redis_server, wait_replicas=2)
    open_stores.extend([stores, too_many])
    key = stores.keys.signing_key("acme")
    revoked = stores.keys.revoke(key.kid)
    assert replica_raw.hget(LAYOUT.key(key.kid), "state") == revoked.state.value.encode()
    assert replica_raw.hexists(LAYOUT.rv, b"k" + key.kid.encode())
    globex = stores.keys.signing_key("globex")
    with pytest.raises(StoreUnavailable, match="revocation written to the primary"):
        too_many.keys.revoke(globex.kid)


def test_key_creation_and_rotation_wait_for_replicas_too(
    redis_server: RedisServer,
    replica: RedisServer,
    replica_raw: redis.Redis,
    open_stores: list[Stores],
) -> None:
    """A new key (on first use, created, rotated) is acknowledged only once the replica has it and the active pointer."""
    stores = real_stores(redis_server)
    too_many = real_stores(redis_server, wait_replicas=2)
    open_stores.extend([stores, too_many])
    first = stores.keys.signing_key("acme")
    created = stores.keys.create("acme")
    rotated = stores.keys.rotate(created.kid)
    for key in (first, created, rotated):
        assert replica_raw.hexists(LAYOUT.key(key.kid), "blob")
    # A failover now would keep the rotation: the replica has the new active
    # key, and the keys it replaced are verify-only there.
    assert replica_raw.hget(LAYOUT.keys_active, "acme") == rotated.kid.encode()
    for old in (first, created):
        assert replica_raw.hget(LAYOUT.key(old.kid), "state") == b"verify-only"
    with pytest.raises(
        StoreUnavailable, match="root key written to the primary but confirmed by 1 of 2"
    ):
        too_many.keys.create("globex")
    made: list[tuple[str, str]] = []
    too_many.keys.on_unrecorded_key(lambda key, why: made.append((key.kid, why)))
    with pytest.raises(StoreUnavailable, match="confirmed by 1 of 2"):
        too_many.keys.signing_key("initech")
    # The key is active on the primary all the same, and the next mint signs
    # with it: the failed call had it recorded (the audit trail listens).
    [(kid, why)] = made
    assert why == UNCONFIRMED
    assert too_many.keys.signing_key("initech").kid == kid and len(made) == 1
