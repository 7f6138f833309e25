"""The replica verification mode: load at start, follow the event stream, reload after a gap, stop cleanly."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agentcaps import Reason, Revocation, RevocationKind
from agentcaps.revocation import RevocationIndex
from agentcaps.stores.redis import Stores
from tests.integration.harness import (
    LAYOUT,
    Backend,
    MemoryBackend,
    RedisBackend,
    eventually,
    mint,
    reason,
    replica_threads,
)

STALENESS = 1.0


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each replica test runs on a real redis-server and on memory://."""
    name = "redis_backend" if request.param == "redis" else "memory_backend"
    found: RedisBackend | MemoryBackend = request.getfixturevalue(name)
    return found


def admin_and_follower(backend: RedisBackend) -> tuple[Stores, Stores, Any]:
    """An admin's stores, a replica-mode verifier's, and the latter's revocation replica."""
    admin = backend.open()
    replica = backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    return admin, replica, replica.revocations


def counted_reloads(store: object, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one with each full reload of a replica store."""
    reloads: list[int] = []
    real = store._reload  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "_reload", lambda: reloads.append(1) or real())
    return reloads


def test_replica_loads_existing_revocations_before_it_is_ready(backend: Backend) -> None:
    """A replica that reports ready already denies every revocation made before it started."""
    clock = backend.clock
    admin = backend.open()
    tokens = [mint(admin, clock, user=f"user{i}") for i in range(20)]
    for token in tokens[:10]:
        admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (token.token_id,), int(clock())))
    replica = backend.open(
        revocation_mode="replica", replica_staleness=STALENESS
    )  # waits until ready
    assert [reason(replica, clock, t.token) for t in tokens] == [Reason.REVOKED] * 10 + [
        Reason.OK
    ] * 10


@pytest.mark.parametrize("more_after_trim", [False, True], ids=["quiet-after", "busy-after"])
def test_replica_reloads_after_missing_events_and_denies_them_all(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, more_after_trim: bool
) -> None:
    """Events trimmed from the stream before the replica read them are noticed, and a reload brings them in."""
    clock = backend.clock
    admin = backend.open()
    replica = backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    tokens = [mint(admin, clock, user=f"user{i}") for i in range(6)]
    spared = mint(admin, clock, user="spared")

    # Hold the follower inside its first event, so it misses what happens meanwhile.
    holding, release = threading.Event(), threading.Event()
    apply = RevocationIndex.apply

    def held_apply(index: RevocationIndex, field: bytes, value: bytes) -> None:
        holding.set()
        release.wait(10)
        apply(index, field, value)

    monkeypatch.setattr(RevocationIndex, "apply", held_apply)

    def revoke(token_id: str) -> None:
        admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (token_id,), int(clock())))

    revoke(tokens[0].token_id)
    assert holding.wait(10), "the follower never read the first event"
    for token in tokens[1:5]:
        revoke(token.token_id)
    backend.raw.xtrim(LAYOUT.rv_events, maxlen=0)
    if more_after_trim:
        revoke(tokens[5].token_id)
    monkeypatch.setattr(RevocationIndex, "apply", apply)
    release.set()

    revoked = tokens if more_after_trim else tokens[:5]
    eventually(
        lambda: all(reason(replica, clock, t.token) is Reason.REVOKED for t in revoked),
        timeout=STALENESS + 5,
        what="every revocation, missed ones included",
    )
    assert reason(replica, clock, spared.token) is Reason.OK


def test_replica_index_agrees_with_direct_checks_after_many_revocations(backend: Backend) -> None:
    """After a burst of revocations of every kind, replica and direct verifiers decide every token alike."""
    clock = backend.clock
    direct = backend.open()
    replica = backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    tokens = [
        mint(direct, clock, user=f"user{i % 7}", agent=f"agent{i % 5}").token for i in range(60)
    ]
    for i in range(3):
        direct.revocations.revoke(
            Revocation(RevocationKind.USER, ("acme", f"user{i}"), int(clock()))
        )
    direct.revocations.revoke(Revocation(RevocationKind.AGENT, ("agent4",), int(clock())))
    marker = mint(direct, clock, user="marker")
    direct.revocations.revoke(Revocation(RevocationKind.TOKEN, (marker.token_id,), int(clock())))
    eventually(
        lambda: reason(replica, clock, marker.token) is Reason.REVOKED, timeout=STALENESS + 5
    )
    expected = [reason(direct, clock, t) for t in tokens]
    assert Reason.OK in expected and Reason.REVOKED in expected
    assert [reason(replica, clock, t) for t in tokens] == expected


def test_closing_the_stores_stops_the_replica_thread(backend: Backend) -> None:
    """close() stops the follower thread promptly, and the closed replica fails closed."""
    before = set(replica_threads())
    stores = backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    token = mint(stores, backend.clock)
    assert len(set(replica_threads()) - before) == 1
    stores.close()
    assert set(replica_threads()) - before == set()
    assert reason(stores, backend.clock, token.token) is Reason.REVOCATION_UNAVAILABLE


def test_a_malformed_event_does_not_stop_the_replica(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """An event the replica cannot read is logged, the follower lives on and reloads, and revocations still count."""
    clock = backend.clock
    admin = backend.open()
    replica = backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    before = mint(admin, clock)
    after = mint(admin, clock, user="bob")
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (before.token_id,), int(clock())))
    eventually(
        lambda: reason(replica, clock, before.token) is Reason.REVOKED, timeout=STALENESS + 5
    )
    threads = replica_threads()

    backend.raw.xadd(LAYOUT.rv_events, {"seq": "not a number"})
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (after.token_id,), int(clock())))
    eventually(lambda: reason(replica, clock, after.token) is Reason.REVOKED, timeout=STALENESS + 5)
    assert reason(replica, clock, before.token) is Reason.REVOKED
    assert reason(replica, clock, mint(admin, clock, user="carol").token) is Reason.OK
    assert replica_threads() == threads
    assert "revocation replica failed" in caplog.text


def test_a_dropped_connection_resumes_without_a_reload(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed follower connection resumes from its last event: a reload of a large index would outlast the bound."""
    clock = redis_backend.clock
    admin, replica, store = admin_and_follower(redis_backend)
    reloads = counted_reloads(store, monkeypatch)
    before = mint(admin, clock, user="before")
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (before.token_id,), int(clock())))
    eventually(lambda: reason(replica, clock, before.token) is Reason.REVOKED, what="first")
    killed = redis_backend.raw.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    after = mint(admin, clock, user="after")
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (after.token_id,), int(clock())))
    eventually(lambda: reason(replica, clock, after.token) is Reason.REVOKED, what="after the kill")
    assert reason(replica, clock, before.token) is Reason.REVOKED
    assert reloads == []


def test_a_follower_away_through_a_loss_and_a_recovery_reloads(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower that never read during a flush takes in the recovery epoch directly: it must reload."""
    clock = redis_backend.clock
    admin, replica, store = admin_and_follower(redis_backend)
    paused, resume = threading.Event(), threading.Event()
    real_follow = store._follow_once  # type: ignore[union-attr]

    def away() -> None:
        paused.set()
        resume.wait(10)
        real_follow()

    reloads = counted_reloads(store, monkeypatch)
    monkeypatch.setattr(store, "_follow_once", away)
    assert paused.wait(5)
    redis_backend.raw.flushall()
    admin.store.recover()
    after = mint(admin, clock, user="after")
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (after.token_id,), int(clock())))
    monkeypatch.setattr(store, "_follow_once", real_follow)
    resume.set()
    eventually(lambda: reloads != [], what="a reload after the recovery epoch")
    eventually(lambda: reason(replica, clock, after.token) is Reason.REVOKED, what="the new one")


def test_a_recovery_while_the_follower_reloads_makes_it_read_again(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that read the entries of a store replaced meanwhile keeps nothing of it, and reads again."""
    clock = redis_backend.clock
    admin, replica, store = admin_and_follower(redis_backend)
    inner = replica.store
    real_entries = inner.entries

    recovered = threading.Event()

    def entries_then_a_recovery(now: int) -> object:
        read = real_entries(now)
        monkeypatch.setattr(inner, "entries", real_entries)  # once
        redis_backend.raw.flushall()
        admin.store.recover()
        recovered.set()
        return read

    monkeypatch.setattr(inner, "entries", entries_then_a_recovery)
    reloads = counted_reloads(store, monkeypatch)
    store._reload_needed = True  # type: ignore[union-attr]
    assert recovered.wait(10)
    after = mint(admin, clock, user="after")  # a new key, after the recovery
    admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (after.token_id,), int(clock())))
    eventually(lambda: reason(replica, clock, after.token) is Reason.REVOKED, what="the new state")
    # Read again from the recovered store, not resumed from the old one's position.
    eventually(lambda: len(reloads) >= 2, what="a second reload")


def test_a_reload_that_fails_is_still_needed(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis error in the middle of a reload leaves the reload to do, never a resume from the old position."""
    from agentcaps import StoreUnavailable

    replica = redis_backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    store, inner = replica.revocations, replica.store
    real_entries = inner.entries
    failures = [StoreUnavailable("a timeout in the middle of the entries")]

    def flaky(now: int) -> object:
        if failures:
            raise failures.pop()
        return real_entries(now)

    monkeypatch.setattr(inner, "entries", flaky)
    reloads = counted_reloads(store, monkeypatch)
    store._reload_needed = True  # type: ignore[union-attr]
    eventually(lambda: len(reloads) >= 2, what="the reload, again after the failure")
    eventually(lambda: not store._reload_needed, what="a reload that completed")  # type: ignore[union-attr]
