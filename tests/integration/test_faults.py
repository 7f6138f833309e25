"""Faults on a real redis-server: outages, data loss and restarts, in both verification modes.

The contract: when revocation state cannot be known, verification denies with
`revocation_unavailable` (never an allow, never an exception), within the
staleness bound; it recovers by itself when Redis returns with its data; a
Redis that lost data fails closed until an operator recovers the store.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import agentcaps
from agentcaps import Reason, Revocation, RevocationKind, StoreUnavailable
from agentcaps.errors import RevocationStateLost
from agentcaps.stores.redis import Stores
from tests.conftest import FakeClock
from tests.integration.harness import (
    LAYOUT,
    RedisBackend,
    eventually,
    mint,
    reason,
    replica_threads,
)
from tests.servers import RedisServer

STALENESS = 0.5
SLACK = 1.5  # scheduling slack on a busy machine; the bound itself is the contract
RECOVERY = 10.0  # generous deadline for a restarted Redis to be used again


@pytest.fixture(params=["direct", "replica"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def revoke_token(stores: Stores, clock: FakeClock, token_id: str) -> None:
    stores.revocations.revoke(Revocation(RevocationKind.TOKEN, (token_id,), int(clock())))


class Scene:
    """An admin, a verifier in the mode under test, an allowed token and a revoked one."""

    def __init__(self, backend: RedisBackend, mode: str) -> None:
        self.backend = backend
        self.clock = backend.clock
        self.mode = mode
        self.admin = backend.open()
        self.verifier = backend.open(revocation_mode=mode, replica_staleness=STALENESS)
        self.good = mint(self.admin, self.clock).token
        bad = mint(self.admin, self.clock, user="mallory")
        self.bad = bad.token
        revoke_token(self.admin, self.clock, bad.token_id)
        eventually(lambda: self.decide(self.bad) is Reason.REVOKED, what="the revocation arrives")
        assert self.decide(self.good) is Reason.OK
        self.threads = replica_threads()

    def decide(self, token: str) -> Reason:
        return reason(self.verifier, self.clock, token)

    def poll_until_good_is(
        self, expected: Reason, timeout: float, *, bad_may_pass: bool = False
    ) -> float:
        """Verify both tokens until the good one gets `expected`; unless told, the bad one is never allowed.

        Returns the seconds it took.
        """
        started = time.monotonic()
        while True:
            if not bad_may_pass:
                assert self.decide(self.bad) is not Reason.OK, "a revoked token was allowed"
            if self.decide(self.good) is expected:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"not {expected} within {timeout} s"
            time.sleep(0.005)

    def stays_closed(self, seconds: float) -> None:
        """For `seconds`, every decision is revocation_unavailable."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert self.decide(self.good) is Reason.REVOCATION_UNAVAILABLE
            assert self.decide(self.bad) is Reason.REVOCATION_UNAVAILABLE
            time.sleep(0.01)

    def stays_open(self, seconds: float) -> None:
        """For `seconds`, the good token is allowed and the revoked one denied: no loss is reported."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert self.decide(self.good) is Reason.OK
            assert self.decide(self.bad) is Reason.REVOKED
            time.sleep(0.01)

    def lose_the_good_tokens_revoked_key(self) -> None:
        """Revoke the good token's key (another process), then flush: every check fails closed."""
        kid = agentcaps.inspect(self.good)["key_id"]
        assert isinstance(kid, str)
        self.admin.keys.revoke(kid)
        eventually(lambda: self.decide(self.good) is Reason.KEY_REVOKED, what="the key revocation")
        flushall(self.backend)
        self.poll_until_good_is(Reason.REVOCATION_UNAVAILABLE, STALENESS + SLACK)

    def healthy(self) -> None:
        """The replica's follower thread (if any) is the same and still alive."""
        assert replica_threads() == self.threads
        if self.mode == "replica":
            assert len(self.threads) == 1


def test_stopped_redis_denies_within_the_bound_and_recovers_by_itself(
    durable_backend: RedisBackend, mode: str
) -> None:
    """With Redis down, verification denies revocation_unavailable within the bound; once it is back, it allows again."""
    scene = Scene(durable_backend, mode)
    durable_backend.server.stop()
    if mode == "direct":
        assert scene.decide(scene.good) is Reason.REVOCATION_UNAVAILABLE  # the very next one
    else:
        assert scene.poll_until_good_is(Reason.REVOCATION_UNAVAILABLE, 10) <= STALENESS + SLACK
    scene.stays_closed(STALENESS / 2)
    with pytest.raises(StoreUnavailable):
        revoke_token(scene.admin, scene.clock, "ee" * 16)
    scene.healthy()

    durable_backend.server.start()
    scene.poll_until_good_is(Reason.OK, RECOVERY)
    assert scene.decide(scene.bad) is Reason.REVOKED
    scene.healthy()


def test_a_hung_redis_denies_within_the_bound_and_recovers_by_itself(
    redis_backend: RedisBackend, mode: str
) -> None:
    """A Redis that accepts but does not answer (SIGSTOP) gives revocation_unavailable, promptly; SIGCONT brings back allows."""
    scene = Scene(redis_backend, mode)
    process = redis_backend.server.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        if mode == "direct":
            started = time.monotonic()
            assert scene.decide(scene.good) is Reason.REVOCATION_UNAVAILABLE
            timeout = scene.verifier.settings.redis_timeout
            assert time.monotonic() - started <= timeout + SLACK
        else:
            assert scene.poll_until_good_is(Reason.REVOCATION_UNAVAILABLE, 10) <= STALENESS + SLACK
        scene.stays_closed(STALENESS / 2)
        scene.healthy()
    finally:
        process.send_signal(signal.SIGCONT)
    scene.poll_until_good_is(Reason.OK, RECOVERY)
    assert scene.decide(scene.bad) is Reason.REVOKED
    scene.healthy()


def flushall(backend: RedisBackend) -> None:
    backend.raw.flushall()


def restart_empty(backend: RedisBackend) -> None:
    backend.server.restart()  # no persistence: it comes back empty


def sequence_back(backend: RedisBackend) -> None:
    # What a failover to a replica that missed the latest revocations looks like.
    assert int(backend.raw.hget(LAYOUT.rv_meta, "seq")) >= 2
    backend.raw.hset(LAYOUT.rv_meta, "seq", 1)


@pytest.mark.parametrize(
    ("lose", "revocation_lost"),
    [(flushall, True), (restart_empty, True), (sequence_back, False)],
    ids=["flushall", "restart-without-persistence", "sequence-went-back"],
)
def test_lost_revocation_state_fails_closed_until_an_operator_recovers(
    redis_backend: RedisBackend,
    mode: str,
    lose: Callable[[RedisBackend], None],
    revocation_lost: bool,
) -> None:
    """After a flush, an empty restart or a sequence going back, nothing is allowed until recover(); a revoked token never."""
    scene = Scene(redis_backend, mode)
    second = mint(scene.admin, scene.clock, user="eve")
    revoke_token(scene.admin, scene.clock, second.token_id)  # the sequence is now 2
    # The verifier learns of sequence 2 (a direct verifier by verifying anything).
    eventually(
        lambda: scene.decide(second.token) is Reason.REVOKED, what="the verifier sees sequence 2"
    )
    lose(redis_backend)

    assert scene.poll_until_good_is(Reason.REVOCATION_UNAVAILABLE, 10) <= STALENESS + SLACK
    with pytest.raises(RevocationStateLost):
        revoke_token(scene.admin, scene.clock, "bb" * 16)
    # A process that never knew the old state may write to the store again;
    # that must not make the loss look like "nothing revoked" to the others.
    newcomer = redis_backend.open()
    revoke_token(newcomer, scene.clock, "cc" * 16)
    scene.stays_closed(STALENESS + 0.2)
    scene.healthy()

    scene.admin.store.recover()
    # Recovery accepts the loss: what was lost stays lost, as documented. A
    # flush or an empty restart lost the root keys too, so the verifier
    # (which had them in memory) knows them no more: their tokens are
    # unknown_key there, as in a process started after the loss.
    expected = Reason.UNKNOWN_KEY if revocation_lost else Reason.OK
    scene.poll_until_good_is(expected, RECOVERY)
    assert scene.decide(scene.bad) is (Reason.UNKNOWN_KEY if revocation_lost else Reason.REVOKED)
    revoke_token(scene.admin, scene.clock, "dd" * 16)
    if revocation_lost:
        fresh = mint(scene.admin, scene.clock)  # a new key, on first use
        assert eventually(lambda: scene.decide(fresh.token) is Reason.OK, what="new tokens verify")
    scene.healthy()


def test_a_key_revoked_then_lost_is_never_allowed_across_the_recovery(
    redis_backend: RedisBackend, mode: str
) -> None:
    """The verifier had the key cached; another process revoked it; the data was lost; then recover.

    Recovery empties every process's key cache, but a decision may already
    hold the key it read from that cache: not one decision may allow with it.
    """
    scene = Scene(redis_backend, mode)
    scene.lose_the_good_tokens_revoked_key()
    scene.admin.store.recover()
    started = time.monotonic()
    while (got := scene.decide(scene.good)) is not Reason.UNKNOWN_KEY:
        assert got is not Reason.OK, "a token of a revoked and lost key was allowed"
        assert time.monotonic() - started < RECOVERY, got
        time.sleep(0.002)
    scene.healthy()


def test_no_thread_decides_with_a_stale_key_while_another_takes_in_the_recovery(
    redis_backend: RedisBackend,
) -> None:
    """The thread that notices the recovery empties the key cache before any thread sees the new epoch.

    A pause before the cache is emptied (a slow thread) must not open a window
    in which another thread, its key read from the old cache, passes the
    now empty revocation check.
    """
    import threading

    scene = Scene(redis_backend, "direct")
    scene.lose_the_good_tokens_revoked_key()
    # White box: the pause goes before the key store's own callback.
    scene.verifier.revocations.watch._on_recovery.insert(0, lambda: time.sleep(0.3))
    scene.admin.store.recover()
    first = threading.Thread(target=scene.decide, args=(scene.good,))
    first.start()
    time.sleep(0.05)  # that thread is inside the pause now
    seen = set()
    until = time.monotonic() + 0.6
    while time.monotonic() < until:
        seen.add(scene.decide(scene.good))
    first.join()
    assert Reason.OK not in seen, seen
    assert scene.decide(scene.good) is Reason.UNKNOWN_KEY


def test_a_restore_carrying_an_older_recovery_epoch_still_fails_closed(
    redis_backend: RedisBackend, mode: str
) -> None:
    """A store rolled back to an earlier operator recovery is a loss, not a recovery to accept."""
    scene = Scene(redis_backend, mode)
    scene.admin.store.recover()  # an earlier incident, long resolved
    old = redis_backend.raw.hgetall(LAYOUT.rv_meta)
    scene.clock.advance(60)
    latest = scene.admin.store.recover().encode()  # a later one
    eventually(
        lambda: (
            scene.decide(scene.good) is Reason.OK and scene.verifier.store.watch.epoch == latest
        ),
        what="the verifier follows the later recovery epoch",
    )

    # Redis comes back from a backup taken between the two recoveries.
    redis_backend.raw.hset(LAYOUT.rv_meta, mapping=old)
    scene.poll_until_good_is(Reason.REVOCATION_UNAVAILABLE, STALENESS + SLACK)
    scene.stays_closed(STALENESS + 0.2)

    scene.clock.advance(60)
    scene.admin.store.recover()
    scene.poll_until_good_is(Reason.OK, RECOVERY)
    scene.healthy()


def test_a_revocation_survives_a_kill_and_restart_with_aof(
    durable_backend: RedisBackend, mode: str
) -> None:
    """A revocation acknowledged before kill -9 is still enforced, by old and fresh verifiers, after Redis restarts."""
    scene = Scene(durable_backend, mode)
    durable_backend.server.stop()  # SIGKILL: only what was fsynced survives
    durable_backend.server.start()
    fresh = durable_backend.open(revocation_mode=mode, replica_staleness=STALENESS)
    assert reason(fresh, scene.clock, scene.bad) is Reason.REVOKED
    assert reason(fresh, scene.clock, scene.good) is Reason.OK
    scene.poll_until_good_is(Reason.OK, RECOVERY)
    assert scene.decide(scene.bad) is Reason.REVOKED


def test_a_verifier_that_only_read_a_key_sees_a_loss_and_fails_closed(
    redis_backend: RedisBackend,
) -> None:
    """Holding a key means knowing the epoch it came from: after a flush, a revoked token is never ok."""
    clock = redis_backend.clock
    admin = redis_backend.open()
    minted = mint(admin, clock)
    revoke_token(admin, clock, minted.token_id)
    gateway = redis_backend.open(revocation_mode="direct")
    # Denied before revocations are asked: the gateway has read the key, nothing else.
    denied = gateway.verifier(clock=clock).verify(minted.token, resource="hr/1", action="read")
    assert denied.reason is Reason.RESOURCE_DENIED
    redis_backend.raw.flushall()
    assert reason(gateway, clock, minted.token) is Reason.REVOCATION_UNAVAILABLE
    # And it did not start a fresh epoch that would hide the loss from others.
    assert redis_backend.raw.hget(LAYOUT.rv_meta, "epoch") is None


def test_an_entry_this_version_cannot_read_fails_closed_in_direct_mode(
    redis_backend: RedisBackend,
) -> None:
    """Foreign or corrupt data where an entry should be: revocation_unavailable, not an exception."""
    clock = redis_backend.clock
    stores = redis_backend.open(revocation_mode="direct")
    minted = mint(stores, clock)
    assert reason(stores, clock, minted.token) is Reason.OK
    field = Revocation(RevocationKind.USER, ("acme", "alice"), 1).field()
    for value in (b"\x95\x01\x02\x03\x04\x05", b"not msgpack at all \xc1", b"\x01"):
        redis_backend.raw.hset(LAYOUT.rv, field, value)
        assert reason(stores, clock, minted.token) is Reason.REVOCATION_UNAVAILABLE, value


def test_a_restart_from_an_older_snapshot_is_seen_after_later_writes_too(
    redis_backend: RedisBackend, mode: str
) -> None:
    """Redis comes back from a snapshot older than a revocation, and another process writes at once.

    That write takes the sequence back up to where the verifier knew it,
    so the sequence alone no longer shows the loss; the record of the
    server's restarts does. The revoked token is never allowed.
    """
    scene = Scene(redis_backend, mode)
    redis_backend.raw.save()  # the snapshot Redis will come back from
    victim = mint(scene.admin, scene.clock, user="victor")
    revoke_token(scene.admin, scene.clock, victim.token_id)
    eventually(lambda: scene.decide(victim.token) is Reason.REVOKED, what="the verifier sees it")

    redis_backend.server.restart()  # killed: it loads the older snapshot
    newcomer = redis_backend.open()  # a process that never knew the later state
    revoke_token(newcomer, scene.clock, "cc" * 16)

    def victim_refused() -> bool:
        decision = scene.decide(victim.token)
        assert decision is not Reason.OK, "a revoked token was allowed after the restart"
        return decision is Reason.REVOCATION_UNAVAILABLE

    eventually(victim_refused, timeout=STALENESS + SLACK, what="the loss is seen")
    scene.stays_closed(STALENESS + 0.2)
    scene.admin.store.recover()
    scene.poll_until_good_is(Reason.OK, RECOVERY, bad_may_pass=True)


def test_a_clean_restart_is_not_a_loss(durable_backend: RedisBackend, mode: str) -> None:
    """A restart that keeps every write (AOF), then new writes by the old writer and a new one: all go on."""
    scene = Scene(durable_backend, mode)
    durable_backend.server.restart()
    # The writer that knew the server before writes first: its own write,
    # on the new server, must not look like a start from below it.
    revoke_token(scene.admin, scene.clock, "cc" * 16)
    revoke_token(durable_backend.open(), scene.clock, "dd" * 16)
    scene.poll_until_good_is(Reason.OK, RECOVERY)
    assert scene.decide(scene.bad) is Reason.REVOKED
    assert reason(scene.admin, scene.clock, scene.good) is Reason.OK
    revoke_token(scene.admin, scene.clock, "ee" * 16)
    scene.stays_open(STALENESS + 0.5)
    assert len(durable_backend.raw.lrange(LAYOUT.rv_runs, 0, -1)) == 2


def test_a_dataset_loaded_into_the_running_server_is_seen_after_later_writes(
    redis_backend: RedisBackend, mode: str, tmp_path: Path
) -> None:
    """An older copy replicated into the same running Redis (its run id unchanged), then writes: seen."""
    scene = Scene(redis_backend, mode)
    (tmp_path / "backup").mkdir()
    backup = RedisServer(tmp_path / "backup")
    backup.start()
    try:
        with redis.Redis.from_url(backup.url, socket_timeout=5) as copy:
            copy.replicaof("127.0.0.1", redis_backend.server.port)
            eventually(lambda: copy.hget(LAYOUT.rv_meta, "seq") is not None, what="the copy syncs")
            copy.replicaof("no", "one")
            victim = mint(scene.admin, scene.clock, user="victor")
            revoke_token(scene.admin, scene.clock, victim.token_id)
            eventually(lambda: scene.decide(victim.token) is Reason.REVOKED, what="seen revoked")
            redis_backend.raw.replicaof("127.0.0.1", backup.port)  # the older copy comes back
            eventually(
                lambda: (
                    not redis_backend.raw.hexists(LAYOUT.rv, b"t" + bytes.fromhex(victim.token_id))
                ),
                what="the older copy is loaded",
            )
            redis_backend.raw.replicaof("no", "one")
    finally:
        backup.stop()
    newcomer = redis_backend.open()
    for n in range(3):
        revoke_token(newcomer, scene.clock, f"{n:02d}" * 16)

    def victim_refused() -> bool:
        decision = scene.decide(victim.token)
        assert decision is not Reason.OK, "a revoked token was allowed after the reload"
        return decision is Reason.REVOCATION_UNAVAILABLE

    eventually(victim_refused, timeout=STALENESS + SLACK, what="the loss is seen")
