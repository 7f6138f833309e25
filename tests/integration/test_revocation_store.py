"""The RevocationStore contract, run on a real redis-server and on memory://, in both verification modes.

`direct` asks Redis on every verification, so a revocation shows on the very
next one; `replica` follows the event stream, so the tests poll, bounded by
the replica's staleness plus slack. Outcomes must be the same.
"""

from __future__ import annotations

import time

import pytest

from agentcaps import (
    InvalidArgument,
    Reason,
    Revocation,
    RevocationKind,
    StoreUnavailable,
    attenuate,
)
from agentcaps.mint import Minter
from agentcaps.stores.redis import Stores
from tests.conftest import FakeClock
from tests.integration.harness import (
    LAYOUT,
    SCOPE,
    Backend,
    MemoryBackend,
    RedisBackend,
    eventually,
    mint,
    reason,
    verify,
)

STALENESS = 1.0
SLACK = 5.0  # generous: only "eventually within the bound" is part of the contract


def revoke(
    stores: Stores, clock: FakeClock, kind: RevocationKind, *subject: str, **extra: object
) -> Revocation:
    """Revoke `subject` now (by the test clock) through the stores' revocation store."""
    return stores.revocations.revoke(Revocation(kind, subject, int(clock()), **extra))  # type: ignore[arg-type]


class RevocationStoreContract:
    """What every RevocationStore does, whichever way the verifier learns of revocations."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError

    @pytest.fixture(params=["direct", "replica"])
    def mode(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def stores(self, backend: Backend, mode: str) -> Stores:
        return backend.open(revocation_mode=mode, replica_staleness=STALENESS)

    # -- helpers -----------------------------------------------------------

    def expect(self, backend: Backend, stores: Stores, token: str, expected: Reason) -> None:
        """The token's reason is `expected`: at once in direct mode, within the bound in replica mode."""
        if stores.settings.revocation_mode == "direct":
            assert reason(stores, backend.clock, token) is expected
        else:
            eventually(
                lambda: reason(stores, backend.clock, token) is expected,
                timeout=STALENESS + SLACK,
                what=f"reason {expected}",
            )

    # -- what each kind of revocation touches --------------------------------

    def test_revoking_a_token_id_denies_it_and_every_attenuation(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A token id revocation denies that token and everything attenuated from it, nothing else."""
        clock = backend.clock
        root = mint(stores, clock)
        narrowed = attenuate(root.token, resources=["crm/contacts/*"], clock=clock)
        delegated = attenuate(root.token, delegate_to="fetcher", clock=clock)
        below = attenuate(delegated, delegate_to="tool", ttl=60, clock=clock)
        sibling = mint(stores, clock)
        revoke(stores, clock, RevocationKind.TOKEN, root.token_id)
        for token in (root.token, narrowed, delegated, below):
            self.expect(backend, stores, token, Reason.REVOKED)
        assert reason(stores, clock, sibling.token) is Reason.OK

    def test_revoking_a_delegation_denies_that_branch_and_below_but_not_parent_or_siblings(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A delegation id revocation denies its branch and descendants; the parent and sibling branches stay allowed."""
        clock = backend.clock
        parent = mint(stores, clock).token
        branch = attenuate(parent, delegate_to="fetcher", clock=clock)
        sibling = attenuate(parent, delegate_to="mailer", clock=clock)
        child = attenuate(branch, delegate_to="tool", clock=clock)
        narrowed = attenuate(branch, actions=["read"], clock=clock)
        sibling_child = attenuate(sibling, delegate_to="tool", clock=clock)
        (branch_id,) = verify(stores, clock, branch).delegation_ids
        revoke(stores, clock, RevocationKind.DELEGATION, branch_id)
        for token in (branch, child, narrowed):
            self.expect(backend, stores, token, Reason.REVOKED)
        for token in (parent, sibling, sibling_child):
            assert reason(stores, clock, token) is Reason.OK

    def test_revoking_a_root_key_denies_its_tokens_key_revoked_and_spares_other_keys(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A key revocation denies every token of that key (key_revoked); another customer's key stays allowed."""
        clock = backend.clock
        acme = mint(stores, clock)
        acme_child = attenuate(acme.token, delegate_to="fetcher", clock=clock)
        globex = mint(stores, clock, customer="globex")
        assert reason(stores, clock, acme_child) is Reason.OK  # the verifier caches the key
        stores.keys.revoke(acme.key_id)
        for token in (acme.token, acme_child):
            self.expect(backend, stores, token, Reason.KEY_REVOKED)
        assert reason(stores, clock, globex.token) is Reason.OK
        assert [r.kind for r in stores.revocations.list()] == [RevocationKind.KEY]

    def test_a_key_revocation_must_go_through_the_key_store(
        self, backend: Backend, stores: Stores
    ) -> None:
        """The revocation store refuses a key revocation: only keys.revoke also marks the key."""
        with pytest.raises(InvalidArgument):
            revoke(stores, backend.clock, RevocationKind.KEY, "k0000000000000000")

    def test_revoking_a_customer_denies_its_tokens_until_then_and_allows_later_ones(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A customer revocation denies every token issued for it until that second; later ones and other customers pass."""
        clock = backend.clock
        alice = mint(stores, clock)
        bob = mint(stores, clock, user="bob", agent="mailer")
        globex = mint(stores, clock, customer="globex")
        revoke(stores, clock, RevocationKind.CUSTOMER, "acme")
        for token in (alice.token, bob.token):  # issued in the revocation's second, before it
            self.expect(backend, stores, token, Reason.REVOKED)
        # A token minted now waits for the next second: not born revoked.
        at = int(clock())
        same_second = mint(stores, clock)
        assert same_second.issued_at == at + 1 == int(clock())
        assert reason(stores, clock, same_second.token) is Reason.OK
        assert reason(stores, clock, globex.token) is Reason.OK
        clock.advance(1)
        assert reason(stores, clock, mint(stores, clock).token) is Reason.OK

    def test_revoking_a_user_denies_tokens_issued_before_and_allows_ones_minted_after(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A user revocation denies that user's tokens issued at or before it; later tokens, other users and customers pass."""
        clock = backend.clock
        before = mint(stores, clock)
        before_child = attenuate(before.token, delegate_to="fetcher", clock=clock)
        bob = mint(stores, clock, user="bob")
        other_alice = mint(stores, clock, customer="globex")
        clock.advance(5)
        revoke(stores, clock, RevocationKind.USER, "acme", "alice")
        for token in (before.token, before_child):
            self.expect(backend, stores, token, Reason.REVOKED)
        at = int(clock())
        same_second = mint(stores, clock)
        assert same_second.issued_at == at + 1 == int(clock())
        assert reason(stores, clock, same_second.token) is Reason.OK
        for token in (bob.token, other_alice.token):
            assert reason(stores, clock, token) is Reason.OK
        clock.advance(1)
        after = mint(stores, clock)
        assert reason(stores, clock, after.token) is Reason.OK
        assert (
            reason(stores, clock, attenuate(after.token, delegate_to="fetcher", clock=clock))
            is Reason.OK
        )

    def test_of_two_user_revocations_the_later_stays_whatever_order_they_land_in(
        self, backend: Backend, stores: Stores
    ) -> None:
        """An earlier revocation written last (issuers' clocks differ) never moves the user's back in time."""
        clock = backend.clock
        at = int(clock())
        token = mint(stores, clock)
        clock.advance(3)
        after_first = mint(stores, clock)
        user = ("acme", "alice")
        stores.revocations.revoke(Revocation(RevocationKind.USER, user, at + 5))
        stores.revocations.revoke(Revocation(RevocationKind.USER, user, at + 1))
        for minted in (token, after_first):
            self.expect(backend, stores, minted.token, Reason.REVOKED)
        later = backend.open(revocation_mode=stores.settings.revocation_mode,
                             replica_staleness=STALENESS)  # fmt: skip
        assert reason(later, clock, after_first.token) is Reason.REVOKED
        assert [r.revoked_at for r in stores.revocations.list()] == [at + 5]

    def test_revoking_an_agent_denies_every_token_naming_it_as_a_holder(
        self, backend: Backend, stores: Stores
    ) -> None:
        """An agent revocation denies tokens minted for it or delegated through it; other chains pass."""
        clock = backend.clock
        planner = mint(stores, clock).token
        own = mint(stores, clock, agent="fetcher").token
        through = attenuate(planner, delegate_to="fetcher", clock=clock)
        beyond = attenuate(through, delegate_to="tool", clock=clock)
        elsewhere = attenuate(planner, delegate_to="mailer", clock=clock)
        revoke(stores, clock, RevocationKind.AGENT, "fetcher")
        for token in (own, through, beyond):
            self.expect(backend, stores, token, Reason.REVOKED)
        for token in (planner, elsewhere):
            assert reason(stores, clock, token) is Reason.OK
        clock.advance(1)
        assert reason(stores, clock, mint(stores, clock, agent="fetcher").token) is Reason.OK

    def test_revoking_an_agent_of_one_customer_spares_other_customers_agents_of_that_name(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A customer's agent revocation denies that customer's tokens naming it; globex's agent of the same name passes."""
        clock = backend.clock
        acme = mint(stores, clock, agent="assistant").token
        through = attenuate(mint(stores, clock).token, delegate_to="assistant", clock=clock)
        globex = mint(stores, clock, customer="globex", agent="assistant").token
        other = mint(stores, clock, agent="mailer").token
        revoke(stores, clock, RevocationKind.CUSTOMER_AGENT, "acme", "assistant")
        for token in (acme, through):
            self.expect(backend, stores, token, Reason.REVOKED)
        for token in (globex, other):
            assert reason(stores, clock, token) is Reason.OK
        clock.advance(1)
        assert reason(stores, clock, mint(stores, clock, agent="assistant").token) is Reason.OK
        (listed,) = [
            r for r in stores.revocations.list() if r.kind is RevocationKind.CUSTOMER_AGENT
        ]
        assert listed.to_dict()["customer"] == "acme" and listed.to_dict()["agent"] == "assistant"

    def test_a_revocation_written_elsewhere_reaches_this_verifier(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A revocation made through another connection (an admin process) denies here too."""
        clock = backend.clock
        token = mint(stores, clock)
        admin = backend.open()
        admin.revocations.revoke(Revocation(RevocationKind.TOKEN, (token.token_id,), int(clock())))
        self.expect(backend, stores, token.token, Reason.REVOKED)

    # -- acknowledgement, expiry, listing -------------------------------------

    def test_a_revocation_is_in_redis_when_revoke_returns(
        self, backend: Backend, stores: Stores
    ) -> None:
        """revoke() returns only once Redis holds the entry; when Redis does not answer it raises StoreUnavailable."""
        clock = backend.clock
        stored = revoke(stores, clock, RevocationKind.AGENT, "fetcher", reason="loops", by="ops")
        assert backend.raw.hget(LAYOUT.rv, b"afetcher") == stored.value()
        assert backend.raw.zscore(LAYOUT.rv_expiry, b"afetcher") == stored.expires_at
        with backend.outage(), pytest.raises(StoreUnavailable):
            revoke(stores, clock, RevocationKind.AGENT, "mailer")

    def test_entries_expire_after_the_longest_token_life_plus_two_leeways(
        self, backend: Backend, mode: str
    ) -> None:
        """An entry is kept max_lifetime + 2 × leeway after it is made, and that long after the token it revokes.

        One leeway is what verifiers honour past expiry; the other covers the
        skew between the clock that prunes entries and a verifier's.
        """
        stores = backend.open(revocation_mode=mode, max_lifetime=3600, leeway=5)
        clock = backend.clock
        now = int(clock())
        user = revoke(stores, clock, RevocationKind.USER, "acme", "alice")
        assert user.expires_at == now + 3600 + 10
        token = mint(stores, clock, ttl=60)
        known = revoke(
            stores, clock, RevocationKind.TOKEN, token.token_id, expires_at=token.expires_at
        )
        assert known.expires_at == token.expires_at + 10
        far = revoke(stores, clock, RevocationKind.TOKEN, "ab" * 16, expires_at=now + 10 * 3600)
        assert (
            far.expires_at == far.revoked_at + 3600 + 10
        )  # the mint waited out the user revocation
        for entry in (user, known, far):
            assert backend.raw.zscore(LAYOUT.rv_expiry, entry.field()) == entry.expires_at

    def test_expired_entries_are_not_listed_and_are_pruned_on_later_writes(
        self, backend: Backend, mode: str
    ) -> None:
        """Once expired, an entry leaves list() at once and Redis at the next revocation."""
        stores = backend.open(revocation_mode=mode, max_lifetime=100)
        clock = backend.clock
        old = revoke(stores, clock, RevocationKind.AGENT, "fetcher")
        clock.advance(50)
        young = revoke(stores, clock, RevocationKind.AGENT, "mailer")
        clock.advance(50)
        assert stores.revocations.list() == [young]
        assert backend.raw.hexists(LAYOUT.rv, old.field())
        newest = revoke(stores, clock, RevocationKind.AGENT, "tool")
        assert not backend.raw.hexists(LAYOUT.rv, old.field())
        assert backend.raw.zscore(LAYOUT.rv_expiry, old.field()) is None
        assert stores.revocations.list() == [newest, young]

    def test_a_key_revocation_outlives_every_other_entry(self, backend: Backend, mode: str) -> None:
        """A revoked key stays revoked, long after other entries are pruned, for a verifier that cached it.

        Such a verifier keeps the key in memory as it was read (active): only
        the entry tells it otherwise. A leaked key must not verify again once
        the longest token life has passed.
        """
        gateway = backend.open(revocation_mode=mode, max_lifetime=100)
        admin = backend.open(max_lifetime=100)
        clock = backend.clock
        minted = mint(admin, clock, ttl=60)
        assert reason(gateway, clock, minted.token) is Reason.OK  # the gateway caches the key
        leaked = gateway.keys.get(minted.key_id)
        assert leaked is not None
        admin.keys.revoke(minted.key_id)
        self.expect(backend, gateway, minted.token, Reason.KEY_REVOKED)
        clock.advance(10_000)
        revoke(admin, clock, RevocationKind.AGENT, "tool")  # prunes what has expired
        (entry,) = [r for r in admin.revocations.list() if r.kind is RevocationKind.KEY]
        assert entry.to_dict()["expires_at"] is None

        class Leaked:
            def signing_key(self, customer: str | None) -> object:
                return leaked

        forged = Minter(Leaked(), clock=clock).mint(  # type: ignore[arg-type]
            customer="acme", user="alice", agent="planner", ttl=60, **SCOPE
        )
        if mode == "replica":
            time.sleep(STALENESS + 1)  # long enough for the replica to apply the prune
        assert reason(gateway, clock, forged) is Reason.KEY_REVOKED

    def test_list_shows_every_live_revocation_newest_first(
        self, backend: Backend, stores: Stores
    ) -> None:
        """list() returns each live revocation as stored (kind, subject, times, reason, by), newest first."""
        clock = backend.clock
        token = mint(stores, clock)
        made = []
        for kind, subject in [
            (RevocationKind.TOKEN, (token.token_id,)),
            (RevocationKind.DELEGATION, ("cd" * 16,)),
            (RevocationKind.CUSTOMER, ("globex",)),
            (RevocationKind.USER, ("acme", "bob")),
            (RevocationKind.AGENT, ("fetcher",)),
        ]:
            made.append(revoke(stores, clock, kind, *subject, reason=f"{kind} gone", by="admin"))
            clock.advance(1)
        stores.keys.revoke(token.key_id, reason="rotated out", by="admin")
        listed = stores.revocations.list()
        assert listed[1:] == made[::-1]
        assert listed[0].kind is RevocationKind.KEY and listed[0].subject == (token.key_id,)
        assert listed[0].to_dict()["key_id"] == token.key_id and listed[0].reason == "rotated out"
        assert backend.open().revocations.list() == listed


class TestRevocationStoreOnRedis(RevocationStoreContract):
    """The RevocationStore contract on a real redis-server."""

    @pytest.fixture
    def backend(self, redis_backend: RedisBackend) -> Backend:
        return redis_backend


class TestRevocationStoreOnMemory(RevocationStoreContract):
    """The RevocationStore contract on memory://, the embedded default."""

    @pytest.fixture
    def backend(self, memory_backend: MemoryBackend) -> Backend:
        return memory_backend
