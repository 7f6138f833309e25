"""Revocation entries, the index that judges tokens against them, and revocation_for."""

from __future__ import annotations

import pytest

import agentcaps
from agentcaps.decision import Reason
from agentcaps.errors import InvalidArgument, RevocationStateLost
from agentcaps.revocation import (
    Revocation,
    RevocationIndex,
    RevocationKind,
    TokenFacts,
    fields_for,
    revocation_for,
)
from agentcaps.stores.redis import Layout

TID = bytes(range(16))
D1, D2 = bytes([1]) * 16, bytes([2]) * 16
FACTS = TokenFacts("k1", TID, 1000, "acme", "alice", (D1, D2), ("planner", "fetcher", "tool"))


def entry(kind: RevocationKind, *subject: str, at: int = 1000, until: int = 5000) -> Revocation:
    return Revocation(kind, subject, at, until)


def index_of(*revocations: Revocation) -> RevocationIndex:
    return RevocationIndex.of((r.field(), r.value()) for r in revocations)


def test_empty_index_revokes_nothing():
    """With no entries, no token is revoked."""
    assert RevocationIndex().check(FACTS) is None


@pytest.mark.parametrize(
    ("revocation", "reason"),
    [
        (entry(RevocationKind.KEY, "k1"), Reason.KEY_REVOKED),
        (entry(RevocationKind.TOKEN, TID.hex()), Reason.REVOKED),
        (entry(RevocationKind.DELEGATION, D1.hex()), Reason.REVOKED),
        (entry(RevocationKind.DELEGATION, D2.hex()), Reason.REVOKED),
        (entry(RevocationKind.CUSTOMER, "acme"), Reason.REVOKED),
        (entry(RevocationKind.USER, "acme", "alice"), Reason.REVOKED),
        (entry(RevocationKind.AGENT, "planner"), Reason.REVOKED),
        (entry(RevocationKind.AGENT, "tool"), Reason.REVOKED),
    ],
)
def test_each_kind_of_entry_revokes_the_tokens_it_touches(revocation, reason):
    """Key, token, delegation, customer, user and agent entries each deny a token they touch."""
    assert index_of(revocation).check(FACTS) is reason


@pytest.mark.parametrize(
    "revocation",
    [
        entry(RevocationKind.KEY, "k2"),
        entry(RevocationKind.TOKEN, bytes(16).hex()),
        entry(RevocationKind.DELEGATION, (bytes([3]) * 16).hex()),
        entry(RevocationKind.CUSTOMER, "globex"),
        entry(RevocationKind.USER, "acme", "bob"),
        entry(RevocationKind.USER, "globex", "alice"),
        entry(RevocationKind.AGENT, "mallory"),
    ],
)
def test_entries_for_other_subjects_revoke_nothing(revocation):
    """An entry for another key, token, branch, customer, user or agent leaves the token alone."""
    assert index_of(revocation).check(FACTS) is None


def test_issued_before_entries_spare_tokens_issued_after_them():
    """Customer, user and agent entries deny tokens issued at or before them, not after."""
    for kind, subject in [
        (RevocationKind.CUSTOMER, ("acme",)),
        (RevocationKind.USER, ("acme", "alice")),
        (RevocationKind.AGENT, ("fetcher",)),
    ]:
        assert index_of(entry(kind, *subject, at=999)).check(FACTS) is None
        assert index_of(entry(kind, *subject, at=1000)).check(FACTS) is Reason.REVOKED


def test_a_later_revocation_of_the_same_subject_wins():
    """Applying an older entry after a newer one keeps the newer revocation time."""
    index = index_of(entry(RevocationKind.USER, "acme", "alice", at=2000))
    older = entry(RevocationKind.USER, "acme", "alice", at=500)
    index.apply(older.field(), older.value())
    assert index.check(FACTS) is Reason.REVOKED


def test_prune_forgets_only_expired_entries():
    """prune() drops entries whose expiry (to the minute) has passed and keeps the rest."""
    index = index_of(
        entry(RevocationKind.TOKEN, TID.hex(), until=100),
        entry(RevocationKind.AGENT, "tool", until=100),
        entry(RevocationKind.DELEGATION, D1.hex(), until=10_000),
    )
    # Expiries are kept to the next whole minute: at 100 nothing has expired yet.
    assert index.prune(100) == 0
    assert index.prune(120) == 2
    assert len(index) == 1
    assert index.check(FACTS) is Reason.REVOKED  # the delegation entry remains


def test_replace_swaps_the_whole_set():
    """replace() installs exactly the given entries."""
    index = index_of(entry(RevocationKind.TOKEN, TID.hex()))
    agent = entry(RevocationKind.AGENT, "planner", at=1000)
    index.replace({agent.field(): (1000, 5000)})
    assert len(index) == 1
    assert index.check(FACTS) is Reason.REVOKED


def test_fields_for_lists_every_field_that_could_touch_the_token():
    """Direct mode asks Redis for exactly the fields entries of this token would have."""
    touching = [
        entry(RevocationKind.KEY, "k1"),
        entry(RevocationKind.TOKEN, TID.hex()),
        entry(RevocationKind.DELEGATION, D1.hex()),
        entry(RevocationKind.DELEGATION, D2.hex()),
        entry(RevocationKind.BRANCH, TID.hex(), D1.hex()),
        entry(RevocationKind.BRANCH, TID.hex(), D1.hex(), D2.hex()),
        entry(RevocationKind.CUSTOMER, "acme"),
        entry(RevocationKind.USER, "acme", "alice"),
        entry(RevocationKind.AGENT, "planner"),
        entry(RevocationKind.AGENT, "fetcher"),
        entry(RevocationKind.AGENT, "tool"),
        entry(RevocationKind.CUSTOMER_AGENT, "acme", "planner"),
        entry(RevocationKind.CUSTOMER_AGENT, "acme", "fetcher"),
        entry(RevocationKind.CUSTOMER_AGENT, "acme", "tool"),
    ]
    assert sorted(fields_for(FACTS)) == sorted(r.field() for r in touching)


def test_entries_round_trip_through_their_stored_form():
    """A revocation rebuilt from its field and value equals the original."""
    for revocation in [
        Revocation(RevocationKind.USER, ("acme", "alice"), 10, 20, "left the company", "admin"),
        Revocation(RevocationKind.DELEGATION, (D1.hex(),), 10, 20),
        Revocation(RevocationKind.BRANCH, (TID.hex(), D1.hex(), D2.hex()), 10, 20),
    ]:
        assert Revocation.from_entry(revocation.field(), revocation.value()) == revocation


@pytest.mark.parametrize(
    ("kind", "subject"),
    [
        (RevocationKind.TOKEN, ("not hex",)),
        (RevocationKind.TOKEN, ("ABCDEF" * 5 + "AB",)),  # upper case
        (RevocationKind.DELEGATION, ("00" * 15,)),  # 15 bytes
        (RevocationKind.USER, ("acme",)),
        (RevocationKind.AGENT, ("",)),
    ],
)
def test_malformed_subjects_are_refused(kind, subject):
    """Ids are 32 lowercase hex characters; a user revocation names customer and user."""
    with pytest.raises(InvalidArgument):
        Revocation(kind, subject, 1)


# --- revocation_for --------------------------------------------------------------


@pytest.fixture
def minted(memory_stores, clock):
    return memory_stores.minter(clock=clock).issue(
        customer="acme",
        user="alice",
        agent="planner",
        resources=["crm/**"],
        actions=["read"],
        purposes=["sync"],
        ttl=600,
    )


def test_revocation_for_an_undelegated_token_is_its_token_id(minted, clock):
    """A token with no delegation is revoked by its token id, kept for the lifetime cap."""
    narrowed = agentcaps.attenuate(minted.token, ttl=30, clock=clock)
    revocation = revocation_for(
        agentcaps.decode_unverified(narrowed), revoked_at=int(clock()), max_lifetime=3600
    )
    assert revocation.kind is RevocationKind.TOKEN
    assert revocation.subject == (minted.token_id,)
    # Not the narrowed copy's 30 s: the original lives longer.
    assert revocation.expires_at == minted.issued_at + 3600


def test_revocation_for_a_delegated_token_is_its_last_branch(minted, clock):
    """A delegated token is revoked as its branch of its token's tree, kept while that branch can live."""
    first = agentcaps.attenuate(minted.token, delegate_to="fetcher", ttl=300, clock=clock)
    second = agentcaps.attenuate(first, delegate_to="tool", clock=clock)
    shorter = agentcaps.attenuate(second, ttl=5, clock=clock)  # after the delegate caveat
    claims = agentcaps.decode_unverified(shorter).claims()
    revocation = revocation_for(
        agentcaps.decode_unverified(shorter), revoked_at=int(clock()), max_lifetime=3600
    )
    assert revocation.kind is RevocationKind.BRANCH
    assert revocation.subject == (minted.token_id, *(d.hex() for d in claims.delegation_ids))
    # The branch lives as long as its earliest expiry up to its delegate caveat
    # (300 s), not the 5 s that one copy of it added afterwards.
    assert revocation.expires_at == int(clock()) + 300


def test_a_reading_of_an_earlier_server_processed_late_is_not_a_loss(memory_stores):
    """Two threads: one moved this process to server B; the other's older reading (server A) arrives after.

    The older reading's sequence is still checked, but it is not a move back
    to A, nor one from B to some later server that started from nowhere.
    """
    store = memory_stores.store
    store.ensure_epoch()
    layout = Layout()
    client = memory_stores.client
    client.rpush(layout.rv_runs, b"A:0", b"B:5")
    client.hset(layout.rv_meta, mapping={"seq": 6, "run": "B"})
    epoch = client.hget(layout.rv_meta, "epoch")
    watch = store.watch
    watch.run, watch.run_seq, watch.seq = b"A", 5, 5
    store.observe(epoch, None, 6, 5, b"B")  # this thread moves to B: it started from 5, all there
    assert (watch.run, watch.lost) == (b"B", None)
    store.observe(epoch, None, 5, 5, b"A")  # the other thread's older reading
    assert (watch.run, watch.lost) == (b"B", None)
    # A later server that started below what was on B is still a loss.
    client.rpush(layout.rv_runs, b"C:2")
    with pytest.raises(RevocationStateLost):
        store.observe(epoch, None, 7, 6, b"C")
