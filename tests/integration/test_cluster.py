"""agentcaps on a real Redis Cluster (three masters, a replica each), started by deploy/redis/start-local-cluster.sh.

The key and revocation store contracts run unchanged; then the things a
Cluster could break: one slot for everything, WAIT on the slot's own master,
a verifier process following the stream, and an outage of that master.
"""

# The session's Cluster and Sentinel fixtures are imported from tests/integration/topologies.py;
# a test naming one as an argument is not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster, key_slot

from agentcaps import ConfigError, Reason, Revocation, RevocationKind, StoreUnavailable
from agentcaps.stores.redis import Layout, open_client, parse_store_url
from tests.conftest import MASTER_KEY
from tests.integration.harness import LAYOUT, Backend, eventually, mint, reason
from tests.integration.test_key_store import KeyStoreContract
from tests.integration.test_revocation_store import RevocationStoreContract
from tests.integration.topologies import (  # noqa: F401 - fixtures
    ClusterBackend,
    cluster_backend,
    end_to_end,
    redis_cluster,
)
from tests.servers import LocalCluster

STALENESS = 1.0
SLACK = 5.0


class TestKeyStoreOnCluster(KeyStoreContract):
    """The KeyStore contract on a Redis Cluster."""

    @pytest.fixture
    def backend(self, cluster_backend: ClusterBackend) -> Backend:
        return cluster_backend


class TestRevocationStoreOnCluster(RevocationStoreContract):
    """The RevocationStore contract on a Redis Cluster, in both verification modes."""

    @pytest.fixture
    def backend(self, cluster_backend: ClusterBackend) -> Backend:
        return cluster_backend


def test_every_key_lives_in_one_slot_on_one_master(cluster_backend: ClusterBackend) -> None:
    """Keys, revocations, the epoch and the event stream all land in the {ac} slot, on its master alone."""
    stores = cluster_backend.open()
    stores.keys.create("acme")
    stores.revocations.revoke(
        Revocation(RevocationKind.AGENT, ("fetcher",), int(cluster_backend.clock()))
    )
    raw: RedisCluster = cluster_backend.raw  # type: ignore[assignment]
    names = list(raw.scan_iter())
    assert len(names) >= 6
    assert {key_slot(n) for n in names} == {key_slot(Layout().rv.encode())}
    home = cluster_backend.home_port()
    for node in raw.get_primaries():
        held = raw.get_redis_connection(node).dbsize()
        assert (held > 0) == (node.port == home), f"{node.name} holds {held} keys"


def test_a_revocation_is_on_the_slot_masters_replica_when_revoke_returns(
    cluster_backend: ClusterBackend,
) -> None:
    """WAIT goes to the master of agentcaps' slot: its replica has each revocation as soon as revoke() returns."""
    stores = cluster_backend.open()
    raw: RedisCluster = cluster_backend.raw  # type: ignore[assignment]
    master = raw.get_redis_connection(raw.get_node_from_key(LAYOUT.rv))
    replica = master.info("replication")["slave0"]
    replica_client = redis.Redis(host=replica["ip"], port=replica["port"], socket_timeout=5)
    replica_client.execute_command("READONLY")  # a cluster replica serves reads only when asked
    try:
        for i in range(10):
            stored = stores.revocations.revoke(
                Revocation(RevocationKind.AGENT, (f"agent{i}",), int(cluster_backend.clock()))
            )
            assert replica_client.hget(LAYOUT.rv, stored.field()) == stored.value()
    finally:
        replica_client.close()


def test_a_paused_slot_master_fails_closed_and_recovers(cluster_backend: ClusterBackend) -> None:
    """While the master of agentcaps' slot does not answer, both modes deny revocation_unavailable; then they allow again."""
    clock = cluster_backend.clock
    admin = cluster_backend.open()
    direct = cluster_backend.open()
    replica = cluster_backend.open(revocation_mode="replica", replica_staleness=STALENESS)
    good = mint(admin, clock).token
    with cluster_backend.outage():
        for verifier in (direct, replica):
            eventually(
                lambda v=verifier: reason(v, clock, good) is Reason.REVOCATION_UNAVAILABLE,
                timeout=STALENESS + SLACK,
                what="fail closed",
            )
        with pytest.raises(StoreUnavailable):
            admin.revocations.revoke(Revocation(RevocationKind.AGENT, ("x",), int(clock())))
    for verifier in (direct, replica):
        eventually(
            lambda v=verifier: reason(v, clock, good) is Reason.OK, timeout=30, what="recovery"
        )


def test_an_unreachable_cluster_is_store_unavailable(redis_cluster: LocalCluster) -> None:
    """A cluster URL whose nodes do not answer gives StoreUnavailable from connect(), not a Redis error."""
    import agentcaps
    from agentcaps.config import Settings

    with pytest.raises(StoreUnavailable):
        agentcaps.connect(
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            settings=Settings(master_key=MASTER_KEY),
        )
    client, close = open_client(parse_store_url(redis_cluster.url), 0.25)
    close()
    assert isinstance(client, RedisCluster)


def test_end_to_end_revocation_on_a_cluster(cluster_backend: ClusterBackend) -> None:
    """A token minted with the CLI on a cluster is allowed, then revoked with the CLI and denied by every verifier process."""
    end_to_end(cluster_backend.cluster.url, staleness=STALENESS, slack=SLACK)


def test_a_cluster_url_names_its_nodes_and_keeps_its_password_out_of_repr() -> None:
    """redis+cluster:// lists seed nodes (default port 6379); its password is parsed but never shown."""
    address = parse_store_url("redis+cluster://app:hunter2@10.0.0.1:7000,10.0.0.2:7001")
    assert address.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (address.username, address.password) == ("app", "hunter2")
    assert "hunter2" not in repr(address)
    assert parse_store_url("redis+cluster://node-0,[::1]:7000/").hosts == (
        ("node-0", 6379),
        ("::1", 7000),
    )
    for bad in ("redis+cluster://", "redis+cluster://h:7000/3", "redis+cluster://h?x=1"):
        with pytest.raises(ConfigError):
            parse_store_url(bad)
