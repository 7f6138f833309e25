"""agentcaps on a real Redis Sentinel group (primary, replica, three sentinels), started by deploy/redis/start-local-sentinel.sh.

The key and revocation store contracts run unchanged through the sentinels;
then a failover: the primary is killed, verification fails closed while no
primary is known and recovers by itself once Sentinel promotes the replica,
which has every acknowledged revocation (WAIT made sure of it).
"""

# The session's Cluster and Sentinel fixtures are imported from tests/integration/topologies.py;
# a test naming one as an argument is not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

import agentcaps
from agentcaps import ConfigError, Reason, Revocation, RevocationKind, StoreUnavailable
from agentcaps.config import Settings
from agentcaps.stores.redis import Stores, parse_store_url
from tests.conftest import MASTER_KEY, FakeClock
from tests.integration.harness import LAYOUT, Backend, eventually, mint, reason
from tests.integration.test_key_store import KeyStoreContract
from tests.integration.test_revocation_store import RevocationStoreContract
from tests.integration.topologies import (  # noqa: F401 - fixtures
    SentinelBackend,
    end_to_end,
    running,
    sentinel_backend,
    sentinel_group,
)
from tests.servers import LocalSentinelGroup

STALENESS = 1.0
SLACK = 5.0  # scheduling slack on a busy 2-core machine; the bound itself is the contract
FAILOVER = 40.0  # generous deadline for Sentinel to promote the replica (a few seconds here)
REJOIN = 60.0  # generous deadline for the old primary to come back as a replica


class TestKeyStoreOnSentinel(KeyStoreContract):
    """The KeyStore contract through Redis Sentinel."""

    @pytest.fixture
    def backend(self, sentinel_backend: SentinelBackend) -> Backend:
        return sentinel_backend


class TestRevocationStoreOnSentinel(RevocationStoreContract):
    """The RevocationStore contract through Redis Sentinel, in both verification modes."""

    @pytest.fixture
    def backend(self, sentinel_backend: SentinelBackend) -> Backend:
        return sentinel_backend


def test_end_to_end_revocation_through_sentinel(sentinel_backend: SentinelBackend) -> None:
    """A token minted with the CLI through Sentinel is allowed, then revoked with the CLI and denied by every verifier process."""
    end_to_end(sentinel_backend.group.url, staleness=STALENESS, slack=SLACK)


def test_a_revocation_is_on_the_replica_when_revoke_returns(
    sentinel_backend: SentinelBackend,
) -> None:
    """Through Sentinel, revoke() WAITs for the replica: it has each revocation once revoke() returns."""
    stores = sentinel_backend.open()
    group = sentinel_backend.group
    replica = redis.Redis(port=group.current_replica(), socket_timeout=5)
    try:
        for i in range(10):
            stored = stores.revocations.revoke(
                Revocation(RevocationKind.AGENT, (f"agent{i}",), int(sentinel_backend.clock()))
            )
            assert replica.hget(LAYOUT.rv, stored.field()) == stored.value()
    finally:
        replica.close()


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    """redis+sentinel:// lists sentinels (default port 26379), then the service and database; passwords stay out of repr."""
    address = parse_store_url(
        "redis+sentinel://app:s3cret@s1:26380,[::1],s3/agentcaps/2?sentinel_password=hunter2"
    )
    assert address.topology == "sentinel"
    assert address.hosts == (("s1", 26380), ("::1", 26379), ("s3", 26379))
    assert (address.service, address.db) == ("agentcaps", 2)
    assert (address.username, address.password, address.sentinel_password) == (
        "app",
        "s3cret",
        "hunter2",
    )
    assert "s3cret" not in repr(address) and "hunter2" not in repr(address)
    assert parse_store_url("redis+sentinel://s1/agentcaps").db == 0
    for bad in (
        "redis+sentinel://s1",  # no service
        "redis+sentinel://s1/agentcaps/zero",
        "redis+sentinel://s1:notaport/agentcaps",
        "redis+sentinel://s1/agentcaps?ssl=true",
    ):
        with pytest.raises(ConfigError):
            parse_store_url(bad)


def test_the_stores_repr_hides_both_passwords_of_a_sentinel_url() -> None:
    """repr(stores) names the sentinels and service but hides the data nodes' and the sentinels' passwords."""
    stores = agentcaps.connect(
        "redis+sentinel://:s3cret@127.0.0.1:1/agentcaps?sentinel_password=hunter2",
        settings=Settings(master_key=MASTER_KEY),
    )
    try:
        shown = repr(stores)
    finally:
        stores.close()
    assert "s3cret" not in shown and "hunter2" not in shown
    assert "127.0.0.1:1/agentcaps" in shown


def test_no_sentinel_answering_fails_closed(clock: FakeClock, memory_stores: Stores) -> None:
    """With no sentinel to ask, connect() still works; writes raise StoreUnavailable and verification is revocation_unavailable."""
    token = mint(memory_stores, clock).token
    stores = agentcaps.connect(
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/agentcaps",
        settings=Settings(master_key=MASTER_KEY),
        clock=clock,
    )
    try:
        assert not stores.ping()
        with pytest.raises(StoreUnavailable):
            stores.keys.signing_key("acme")
        assert reason(stores, clock, token) is Reason.REVOCATION_UNAVAILABLE
    finally:
        stores.close()


def test_failover_fails_closed_in_the_gap_then_recovers_with_every_acknowledged_revocation(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Primary killed: both modes deny revocation_unavailable until Sentinel promotes the replica, then allow again, the revocation still enforced."""
    with running(LocalSentinelGroup, tmp_path / "group") as group:
        backend = SentinelBackend(clock, group)
        try:
            failover(backend, group, clock)
        finally:
            backend.close()


def failover(backend: SentinelBackend, group: LocalSentinelGroup, clock: FakeClock) -> None:
    admin = backend.open()
    verifiers: dict[str, Stores] = {
        "direct": backend.open(),
        "replica": backend.open(revocation_mode="replica", replica_staleness=STALENESS),
    }
    good = mint(admin, clock).token
    bad = mint(admin, clock, user="mallory")
    stored = admin.revocations.revoke(
        Revocation(RevocationKind.TOKEN, (bad.token_id,), int(clock()))
    )
    # Acknowledged, so the replica already has it (WAIT).
    with redis.Redis(port=group.replica, socket_timeout=5) as replica:
        assert replica.hget(LAYOUT.rv, stored.field()) == stored.value()

    def decide(token: str) -> dict[str, Reason]:
        return {mode: reason(stores, clock, token) for mode, stores in verifiers.items()}

    def first_seen(expected: Reason, timeout: float) -> dict[str, float]:
        """Verify both tokens in both modes until each mode has given the good one `expected` once.

        Returns the seconds each mode took; the revoked token is never allowed meanwhile.
        """
        started = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < len(verifiers):
            assert Reason.OK not in decide(bad.token).values(), "a revoked token was allowed"
            for mode, got in decide(good).items():
                if got is expected:
                    seen.setdefault(mode, time.monotonic() - started)
            assert time.monotonic() - started < timeout, f"{expected} only in {seen}"
            time.sleep(0.01)
        return seen

    eventually(lambda: set(decide(bad.token).values()) == {Reason.REVOKED}, what="revoked")
    assert set(decide(good).values()) == {Reason.OK}

    old_primary, promoted = group.primary, group.replica
    group.kill(old_primary)
    # No primary answers: every mode fails closed, direct at once, replica within its bound.
    closed = first_seen(Reason.REVOCATION_UNAVAILABLE, FAILOVER)
    assert closed["direct"] <= SLACK and closed["replica"] <= STALENESS + SLACK, closed
    # Sentinel promotes the replica; every verifier finds it by itself.
    recovered = first_seen(Reason.OK, FAILOVER)
    assert group.current_primary() == promoted, f"recovered after {recovered} s"
    eventually(lambda: set(decide(good).values()) == {Reason.OK}, timeout=SLACK, what="both allow")
    assert set(decide(bad.token).values()) == {Reason.REVOKED}
    fresh = backend.open()
    assert reason(fresh, clock, bad.token) is Reason.REVOKED
    assert reason(fresh, clock, good) is Reason.OK
    # The promoted primary has no replica left, and min-replicas-to-write 1
    # (deploy/redis/sentinel-redis.conf): a new revocation is refused, not
    # acknowledged on a single copy.
    later = mint(admin, clock, user="eve")
    with pytest.raises(StoreUnavailable, match="min-replicas-to-write"):
        admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (later.token_id,), int(clock())))
    # The old primary comes back; Sentinel makes it a replica, and revocations
    # are acknowledged again.
    group.restart(old_primary)

    def revoked_later() -> bool:
        try:
            admin.revocations.revoke(
                Revocation(RevocationKind.TOKEN, (later.token_id,), int(clock()))
            )
        except StoreUnavailable:
            time.sleep(0.1)
            return False
        return True

    eventually(revoked_later, timeout=REJOIN, what="revocations acknowledged again")
    eventually(
        lambda: set(decide(later.token).values()) == {Reason.REVOKED},
        timeout=STALENESS + SLACK,
        what="the new revocation reaches both verifiers",
    )
    assert set(decide(bad.token).values()) == {Reason.REVOKED}
    # The writer that knew the old primary wrote on the new one: nobody takes
    # that for a start from an older state, now or at a later read.
    until = time.monotonic() + STALENESS + 0.5
    while time.monotonic() < until:
        assert set(decide(good).values()) == {Reason.OK}
        time.sleep(0.02)
    assert reason(admin, clock, good) is Reason.OK
