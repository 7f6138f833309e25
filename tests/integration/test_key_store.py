"""The KeyStore contract, run on a real redis-server and on memory://."""

from __future__ import annotations

import json

import pytest

from agentcaps import ConfigError, InvalidArgument, KeyState, Reason, attenuate
from agentcaps.errors import StoreUnavailable, UnknownKey
from agentcaps.stores.redis import Stores
from tests.conftest import MASTER_KEY
from tests.integration.harness import (
    LAYOUT,
    REQUEST,
    SCOPE,
    Backend,
    MemoryBackend,
    RedisBackend,
    mint,
    reason,
)

OTHER_MASTER_KEY = bytes(range(100, 132))


class KeyStoreContract:
    """What every KeyStore does; subclasses choose the backend."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def stores(self, backend: Backend) -> Stores:
        return backend.open()

    def test_signing_key_is_created_on_first_use_and_then_reused(
        self, backend: Backend, stores: Stores
    ) -> None:
        """The first signing_key call creates the owner's active key; later calls, anywhere, reuse it."""
        assert stores.keys.list() == []
        first = stores.keys.signing_key("acme")
        assert (first.customer, first.state) == ("acme", KeyState.ACTIVE)
        assert stores.keys.signing_key("acme").kid == first.kid
        assert backend.open().keys.signing_key("acme").kid == first.kid
        platform = stores.keys.signing_key(None)
        assert platform.customer is None and platform.kid != first.kid
        assert sorted(k.kid for k in stores.keys.list()) == sorted([first.kid, platform.kid])

    def test_get_returns_the_stored_key_and_none_for_an_unknown_id(
        self, backend: Backend, stores: Stores
    ) -> None:
        """get() returns a key another connection stored, secret included, and None for an unknown id."""
        key = stores.keys.create("acme")
        other = backend.open()
        assert other.keys.get(key.kid) == key
        assert other.keys.get("k0000000000000000") is None

    def test_create_makes_a_new_active_key_and_demotes_the_previous_one(
        self, stores: Stores
    ) -> None:
        """create() gives the owner a new active key; the one before becomes verify-only."""
        old = stores.keys.create("acme")
        new = stores.keys.create("acme")
        assert new.kid != old.kid and new.state is KeyState.ACTIVE
        assert stores.keys.fresh(old.kid).state is KeyState.VERIFY_ONLY
        assert stores.keys.signing_key("acme").kid == new.kid

    def test_list_shows_every_key_newest_first(self, backend: Backend, stores: Stores) -> None:
        """list() returns every key of every owner, newest first."""
        kids = []
        for owner in ("acme", "globex", None):
            kids.append(stores.keys.create(owner).kid)
            backend.clock.advance(1)
        assert [k.kid for k in stores.keys.list()] == kids[::-1]

    def test_rotation_mints_with_the_new_key_and_old_tokens_still_verify(
        self, backend: Backend, stores: Stores
    ) -> None:
        """After rotate(), new tokens carry the new key id; tokens of the old key still verify, everywhere."""
        clock = backend.clock
        elsewhere = backend.open()
        old_token = mint(stores, clock)
        assert reason(elsewhere, clock, old_token.token) is Reason.OK  # caches the old key
        new_key = stores.keys.rotate(old_token.key_id)
        assert new_key.kid != old_token.key_id and new_key.state is KeyState.ACTIVE
        assert stores.keys.fresh(old_token.key_id).state is KeyState.VERIFY_ONLY
        new_token = mint(stores, clock)
        assert new_token.key_id == new_key.kid
        child = attenuate(old_token.token, actions=["read"], clock=clock)
        for verifier in (stores, elsewhere):
            assert reason(verifier, clock, old_token.token) is Reason.OK
            assert reason(verifier, clock, child) is Reason.OK
            assert reason(verifier, clock, new_token.token) is Reason.OK

    def test_rotate_refuses_unknown_and_revoked_keys(self, stores: Stores) -> None:
        """rotate() raises UnknownKey for an unknown id and InvalidArgument for a revoked key."""
        with pytest.raises(UnknownKey):
            stores.keys.rotate("k0000000000000000")
        key = stores.keys.create("acme")
        stores.keys.revoke(key.kid)
        with pytest.raises(InvalidArgument):
            stores.keys.rotate(key.kid)

    def test_revoking_a_key_denies_every_token_it_signed_and_spares_other_customers(
        self, backend: Backend, stores: Stores
    ) -> None:
        """Every token a revoked key signed is key_revoked, for verifiers old and new; another customer's stay allowed."""
        clock = backend.clock
        cached = backend.open()
        root = mint(stores, clock)
        signed = [
            root.token,
            mint(stores, clock, user="bob", agent="mailer").token,
            attenuate(root.token, resources=["crm/contacts/*"], clock=clock),
            attenuate(root.token, delegate_to="fetcher", clock=clock),
        ]
        other = mint(stores, clock, customer="globex").token
        for token in [*signed, other]:
            assert reason(cached, clock, token) is Reason.OK  # caches both keys as active

        revoked = stores.keys.revoke(root.key_id, reason="leaked")
        assert revoked.state is KeyState.REVOKED

        fresh = backend.open()
        for verifier in (stores, cached, fresh):
            for token in signed:
                assert reason(verifier, clock, token) is Reason.KEY_REVOKED
            assert reason(verifier, clock, other) is Reason.OK
        replacement = mint(stores, clock)
        assert replacement.key_id != root.key_id
        assert reason(cached, clock, replacement.token) is Reason.OK

    def test_revoking_a_verify_only_key_denies_its_tokens(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A key already rotated out can still be revoked; its tokens become key_revoked, the new key's stay allowed."""
        clock = backend.clock
        old_token = mint(stores, clock)
        stores.keys.rotate(old_token.key_id)
        new_token = mint(stores, clock)
        stores.keys.revoke(old_token.key_id)
        assert reason(stores, clock, old_token.token) is Reason.KEY_REVOKED
        assert reason(stores, clock, new_token.token) is Reason.OK
        assert stores.keys.signing_key("acme").kid == new_token.key_id

    def test_revoking_an_unknown_key_raises_unknown_key(self, stores: Stores) -> None:
        """revoke() of an id no key has raises UnknownKey and records nothing."""
        with pytest.raises(UnknownKey):
            stores.keys.revoke("k0000000000000000")
        assert stores.revocations.list() == []

    def test_another_master_key_is_refused_with_config_error(
        self, backend: Backend, stores: Stores
    ) -> None:
        """A process with a different master key cannot check, read or mint with this store's keys; its verifier fails closed."""
        key = stores.keys.signing_key("acme")
        token = stores.minter().mint(customer="acme", user="u", agent="a", ttl=60, **SCOPE)
        impostor = backend.open(master_key=OTHER_MASTER_KEY)
        with pytest.raises(ConfigError):
            impostor.keys.check_master_key()
        with pytest.raises(StoreUnavailable):
            impostor.keys.get(key.kid)
        decision = impostor.verifier().verify(token, **REQUEST)
        assert decision.reason is Reason.REVOCATION_UNAVAILABLE
        with pytest.raises(ConfigError):
            impostor.keys.signing_key("globex")
        assert backend.open().keys.get(key.kid) == key

    def test_secrets_never_appear_in_repr_or_to_dict(self, stores: Stores) -> None:
        """Neither a root key's secret nor the master key shows in repr, str or to_dict."""
        key = stores.keys.signing_key("acme")
        views = [
            repr(key),
            str(key),
            json.dumps(key.to_dict()),
            repr(stores.keys.list()),
            repr(stores.settings),
            repr(stores),
        ]
        for secret in (key.secret, key.derived, MASTER_KEY):
            for view in views:
                assert secret.hex() not in view and repr(secret) not in view
        assert set(key.to_dict()) == {"key_id", "customer", "state", "created_at"}

    def test_root_keys_are_encrypted_at_rest(self, backend: Backend, stores: Stores) -> None:
        """Nothing stored holds a root key's secret or the master key in the clear."""
        keys = [
            stores.keys.signing_key("acme"),
            stores.keys.create("acme"),
            stores.keys.create(None),
        ]
        record = backend.raw.hgetall(LAYOUT.key(keys[0].kid))
        assert record[b"state"] == b"verify-only" and len(record[b"blob"]) == 12 + 32 + 16
        stored = b""
        for name in backend.raw.scan_iter():
            kind = backend.raw.type(name)
            if kind == b"hash":
                stored += b"".join(k + v for k, v in backend.raw.hgetall(name).items())
            elif kind == b"string":
                stored += backend.raw.get(name) or b""
            elif kind == b"zset":
                stored += b"".join(backend.raw.zrange(name, 0, -1))
        assert stored
        for secret in [MASTER_KEY, *(k.secret for k in keys), *(k.derived for k in keys)]:
            assert secret not in stored


class TestKeyStoreOnRedis(KeyStoreContract):
    """The KeyStore contract on a real redis-server."""

    @pytest.fixture
    def backend(self, redis_backend: RedisBackend) -> Backend:
        return redis_backend


class TestKeyStoreOnMemory(KeyStoreContract):
    """The KeyStore contract on memory://, the embedded default."""

    @pytest.fixture
    def backend(self, memory_backend: MemoryBackend) -> Backend:
        return memory_backend
