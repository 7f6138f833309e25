"""What a Verifier may remember (the signature cache) and when it decides without I/O (local_only)."""

from __future__ import annotations

import pytest

import agentcaps
from agentcaps import signature
from agentcaps.decision import Reason
from agentcaps.errors import NeedsIO
from agentcaps.revocation import Revocation, RevocationIndex, RevocationKind
from tests.conftest import SCOPE

REQUEST = {"resource": "crm/contacts/42", "action": "read"}


@pytest.fixture
def chains(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the signature chains the verifier computes."""
    calls: list[int] = []
    real = signature.chain

    def counting(*args: object, **kwargs: object) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(signature, "chain", counting)
    return calls


def test_signature_cache_spares_the_chain_of_a_token_seen_before(memory_stores, clock, chains):
    """With a signature cache, the second verification of a token runs no HMAC chain."""
    verifier = memory_stores.verifier(clock=clock, signature_cache_size=16)
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    chains.clear()  # minting ran one
    assert verifier.verify(token, **REQUEST).allowed
    assert verifier.verify(token, **REQUEST).allowed
    assert len(chains) == 1


def test_without_a_signature_cache_every_call_runs_the_chain(memory_stores, clock, chains):
    """The default verifier recomputes the chain on every call."""
    verifier = memory_stores.verifier(clock=clock)
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    chains.clear()  # minting ran one
    for _ in range(3):
        assert verifier.verify(token, **REQUEST).allowed
    assert len(chains) == 3


def test_a_cached_signature_never_excuses_the_other_checks(memory_stores, clock):
    """A token in the signature cache is still denied once expired, revoked, or its key revoked."""
    verifier = memory_stores.verifier(clock=clock, signature_cache_size=16)
    minter = memory_stores.minter(clock=clock)
    expiring = minter.issue(**{**SCOPE, "ttl": 10})
    revoked = minter.issue(**SCOPE)
    other_customer = minter.issue(**{**SCOPE, "customer": "globex"})
    for minted in (expiring, revoked, other_customer):
        assert verifier.verify(minted.token, **REQUEST).allowed
    assert verifier.verify(expiring.token, resource="crm/x", action="delete").reason is (
        Reason.ACTION_DENIED
    )
    memory_stores.revocations.revoke(
        Revocation(RevocationKind.TOKEN, (revoked.token_id,), int(clock()))
    )
    memory_stores.keys.revoke(other_customer.key_id)
    clock.advance(11)
    assert verifier.verify(expiring.token, **REQUEST).reason is Reason.EXPIRED
    assert verifier.verify(revoked.token, **REQUEST).reason is Reason.REVOKED
    assert verifier.verify(other_customer.token, **REQUEST).reason is Reason.KEY_REVOKED


def test_a_copied_signature_on_other_caveats_misses_the_cache(memory_stores, clock):
    """Only the exact token string hits: the same signature on a wider token is bad_signature."""
    verifier = memory_stores.verifier(clock=clock, signature_cache_size=16)
    narrow = agentcaps.attenuate(
        memory_stores.minter(clock=clock).mint(**SCOPE), actions=["read"], clock=clock
    )
    assert verifier.verify(narrow, **REQUEST).allowed
    raw = agentcaps.decode_unverified(narrow).raw
    # Drop the narrowing caveat, keep the signature that covered it.
    forged = agentcaps.wire.encode_token(raw._replace(cids=raw.cids[:-1]))
    assert verifier.verify(forged, resource="crm/x", action="write").reason is (
        Reason.BAD_SIGNATURE
    )


def test_local_only_refuses_when_revocations_are_in_redis(memory_stores, clock):
    """A direct-mode verifier raises NeedsIO for local_only: every check asks Redis."""
    verifier = memory_stores.verifier(clock=clock)
    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    with pytest.raises(NeedsIO):
        verifier.verify(token, local_only=True, **REQUEST)


def test_local_only_decides_with_a_local_index_and_a_cached_key(memory_stores, clock):
    """With a local revocation index and the key cached, local_only decides like verify."""
    index = RevocationIndex()
    verifier = agentcaps.Verifier(memory_stores.keys, index, clock=clock)
    minted = memory_stores.minter(clock=clock).issue(**SCOPE)  # caches the key
    assert verifier.verify(minted.token, local_only=True, **REQUEST).allowed
    revocation = memory_stores.store.stamp(
        Revocation(RevocationKind.TOKEN, (minted.token_id,), int(clock()))
    )
    index.apply(revocation.field(), revocation.value())
    assert verifier.verify(minted.token, local_only=True, **REQUEST).reason is Reason.REVOKED


def test_local_only_refuses_a_key_it_would_have_to_read(memory_stores, clock):
    """A key not yet in this process's cache means NeedsIO, and nothing is recorded."""

    class Sink:
        def __init__(self) -> None:
            self.events = 0

        def verified(self, *args: object) -> None:
            self.events += 1

    token = memory_stores.minter(clock=clock).mint(**SCOPE)
    memory_stores.keys._cache.clear()  # as in another process that never saw this key
    sink = Sink()
    verifier = agentcaps.Verifier(memory_stores.keys, RevocationIndex(), clock=clock, audit=sink)
    with pytest.raises(NeedsIO):
        verifier.verify(token, local_only=True, **REQUEST)
    assert sink.events == 0
    assert verifier.verify(token, **REQUEST).allowed  # the blocking path reads the key
    assert verifier.verify(token, local_only=True, **REQUEST).allowed
    assert sink.events == 2


def test_a_str_subclass_posing_as_a_cached_token_is_malformed(memory_stores, clock):
    """Only exactly str is a token: a subclass cannot bring its own equality into the caches."""
    verifier = memory_stores.verifier(clock=clock, signature_cache_size=16)
    genuine = memory_stores.minter(clock=clock).mint(**SCOPE)
    assert verifier.verify(genuine, **REQUEST).allowed  # now in both caches

    class Impostor(str):
        """Claims to be the genuine token to any dict it is looked up in."""

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(genuine)

    class Unhashable(str):
        __hash__ = None  # type: ignore[assignment]

    forged = genuine[:-4] + ("BBBB" if genuine.endswith("AAAA") else "AAAA")
    assert verifier.verify(Impostor(forged), **REQUEST).reason is Reason.MALFORMED
    assert verifier.verify(Unhashable(genuine), **REQUEST).reason is Reason.MALFORMED


def test_a_key_read_across_a_recovery_is_not_cached(memory_stores, clock, monkeypatch):
    """A key read before a recovery emptied the cache, and kept after it, would outlive the loss."""
    keys = memory_stores.keys
    kid = memory_stores.minter(clock=clock).issue(**SCOPE).key_id
    keys._forget()  # start from an empty cache
    loads = []
    real = keys._load

    def load_while_a_recovery_comes(wanted):
        loads.append(wanted)
        key = real(wanted)
        keys._forget()  # a recovery, while this read was in flight
        return key

    monkeypatch.setattr(keys, "_load", load_while_a_recovery_comes)
    assert keys.get(kid) is not None
    monkeypatch.setattr(keys, "_load", lambda wanted: loads.append(wanted) or real(wanted))
    assert keys.get(kid) is not None
    assert loads == [kid, kid]  # read again: the first read was not kept
    assert keys.get(kid) is not None and loads == [kid, kid]  # now it is
