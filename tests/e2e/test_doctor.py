"""`agentcaps doctor`: what it says about real Redis servers, Sentinel groups and Clusters, and how it judges each setting."""

# The session's Cluster and Sentinel fixtures are imported from tests/integration/topologies.py;
# a test naming one as an argument is not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from agentcaps.config import redact_url
from agentcaps.stores.doctor import (
    Status,
    check_epoch,
    check_min_replicas,
    check_persistence,
    check_replication,
    check_version,
    good_replicas,
)
from agentcaps.stores.redis import Layout
from tests.conftest import RedisServer, real_stores
from tests.integration.topologies import redis_cluster, sentinel_group  # noqa: F401 - fixtures
from tests.servers import LocalCluster, LocalSentinelGroup


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    return subprocess.run(
        [sys.executable, "-m", "agentcaps", "doctor", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=30,
    )


def line(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The report line of check `name`."""
    (found,) = [ln for ln in result.stdout.splitlines() if ln.split()[1:2] == [name]]
    return found


def started(tmp_path: Path, **options: object) -> RedisServer:
    server = RedisServer(tmp_path, **options)  # type: ignore[arg-type]
    server.start()
    return server


def test_doctor_fails_a_server_without_persistence(redis_server: RedisServer) -> None:
    """No AOF and no RDB is a FAIL line that says to set appendonly yes; exit 1."""
    result = doctor(redis_server.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    persistence = line(result, "persistence")
    assert persistence.split()[0] == "FAIL" and "appendonly yes" in persistence
    assert line(result, "version").split()[0] == "ok" and "7." in line(result, "version")
    assert line(result, "eviction").split()[0] == "ok"
    assert "failed" in result.stdout.splitlines()[-1]


def test_doctor_fails_one_server_whose_min_replicas_refuse_every_write(tmp_path: Path) -> None:
    """A lone primary with min-replicas-to-write 1 refuses every revocation: FAIL, exit 1."""
    server = started(tmp_path, appendonly=True)
    try:
        redis.Redis.from_url(server.url).config_set("min-replicas-to-write", 1)
        result = doctor(AGENTCAPS_REDIS_URL=server.url)
        assert result.returncode == 1, result.stdout
        refusing = line(result, "min-replicas")
        assert refusing.split()[0] == "FAIL" and "refuses every write" in refusing
    finally:
        server.stop()


def test_doctor_passes_aof_always_with_noeviction(tmp_path: Path) -> None:
    """AOF with appendfsync always and noeviction passes every check; exit 0."""
    server = started(tmp_path, appendonly=True)
    try:
        result = doctor(AGENTCAPS_REDIS_URL=server.url)
        assert result.returncode == 0, result.stdout
        assert all(ln.split()[0] == "ok" for ln in result.stdout.splitlines()[1:-1])
        assert "appendfsync always" in line(result, "persistence")
        assert result.stdout.splitlines()[-1] == "all checks passed"

        stores = real_stores(server)
        stores.keys.create("acme")
        stores.close()
        epoch = line(doctor(server.url), "epoch")
        assert epoch.split()[0] == "ok" and "sequence" in epoch
    finally:
        server.stop()


def test_doctor_fails_an_evicting_memory_policy(tmp_path: Path) -> None:
    """Any maxmemory-policy but noeviction is a FAIL: revocations could be evicted."""
    server = started(tmp_path, appendonly=True, extra=("--maxmemory-policy", "allkeys-lru"))
    try:
        result = doctor(server.url)
    finally:
        server.stop()
    assert result.returncode == 1
    eviction = line(result, "eviction")
    assert eviction.split()[0] == "FAIL" and "allkeys-lru" in eviction and "noeviction" in eviction


def test_doctor_warns_on_rdb_snapshots_only(tmp_path: Path) -> None:
    """RDB without AOF is a warning (exit 0) naming the loss since the last snapshot."""
    server = started(tmp_path, extra=("--save", "3600 1"))
    try:
        result = doctor(server.url)
    finally:
        server.stop()
    assert result.returncode == 0
    persistence = line(result, "persistence")
    assert persistence.split()[0] == "warn" and "snapshot" in persistence
    assert "warning" in result.stdout.splitlines()[-1]


def test_doctor_fails_when_keys_exist_but_the_epoch_is_gone(redis_server: RedisServer) -> None:
    """Root keys without a revocation epoch mean lost data: FAIL, pointing at recover."""
    stores = real_stores(redis_server)
    stores.keys.create("acme")
    stores.close()
    client = redis.Redis.from_url(redis_server.url)
    client.delete(Layout().rv_meta)
    client.close()
    epoch = line(doctor(redis_server.url), "epoch")
    assert epoch.split()[0] == "FAIL" and "revocations recover" in epoch


def test_doctor_reports_an_unreachable_server_in_one_fail_line() -> None:
    """A Redis that does not answer is a single FAIL line without the URL's password; exit 1."""
    result = doctor("redis://admin:hunter2@127.0.0.1:9/0")
    assert result.returncode == 1 and result.stderr == ""
    assert line(result, "connection").startswith("  FAIL") and "hunter2" not in result.stdout


def test_doctor_on_memory_says_it_is_meant_for_a_real_redis() -> None:
    """With no Redis configured, doctor explains memory:// is not one to check; exit 1."""
    result = doctor()
    assert result.returncode == 1
    assert "real Redis" in line(result, "store")


def test_persistence_judgement_explains_each_fsync_policy() -> None:
    """everysec passes with its one-second risk; `no` warns; CONFIG disabled falls back to INFO."""
    everysec = check_persistence({"appendonly": "yes", "appendfsync": "everysec", "save": ""}, {})
    assert everysec.status is Status.OK and "one second" in everysec.finding
    never = check_persistence({"appendonly": "yes", "appendfsync": "no", "save": ""}, {})
    assert never.status is Status.WARN
    managed = check_persistence(None, {"aof_enabled": 1})
    assert managed.status is Status.WARN and "appendfsync" in managed.finding
    # INFO sets rdb_last_save_time at start, snapshots or not: no sign of RDB.
    blind = check_persistence(None, {"aof_enabled": 0, "rdb_last_save_time": 1_800_000_000})
    assert blind.status is Status.WARN and "cannot be read" in blind.finding


def test_replication_and_version_judgements() -> None:
    """Replicas are noted with WAIT; a replica role warns; Redis older than 6.2 fails."""
    primary = check_replication({"role": "master", "connected_slaves": 2})
    assert primary.status is Status.OK and "WAIT" in primary.finding
    replica = check_replication({"role": "slave", "master_host": "db1", "master_port": 6379})
    assert replica.status is Status.WARN and "db1:6379" in replica.finding
    # AGENTCAPS_WAIT_REPLICAS against the replicas actually connected.
    alone = {"role": "master", "connected_slaves": 0}
    assert check_replication(alone, wait_replicas=1).status is Status.FAIL
    assert check_replication(primary_info := {"role": "master", "connected_slaves": 1},
                             wait_replicas=0).status is Status.WARN  # fmt: skip
    assert "1 of them" in check_replication(primary_info, wait_replicas=1).finding
    assert check_version({"redis_version": "6.0.16"}).status is Status.FAIL
    assert check_version({"redis_version": "6.2.0"}).status is Status.OK
    assert check_epoch({}, has_keys=False).status is Status.OK


def test_redact_hides_only_the_password() -> None:
    """URLs are printed with the password replaced and everything else kept."""
    assert redact_url("redis://u:pw@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


# -- Sentinel and Cluster ---------------------------------------------------------


def test_doctor_passes_the_local_cluster_and_names_agentcaps_slot(
    redis_cluster: LocalCluster,
) -> None:
    """On a healthy cluster: every slot served, the {ac} slot's master durable, no master evicting; exit 0."""
    result = doctor(redis_cluster.url)
    assert result.returncode == 0, result.stdout
    assert line(result, "cluster").split()[0] == "ok" and "16384" in line(result, "cluster")
    slot = line(result, "slot")
    assert slot.split()[0] == "ok" and "{ac}" in slot and "1 replica" in slot
    persistence = line(result, "persistence")
    assert persistence.split()[0] == "ok" and "appendfsync always" in persistence
    assert "all 3 masters" in line(result, "eviction")
    assert line(result, "replication").split()[0] == "ok"
    # One replica per master with min-replicas-to-write 1: safe, but a lost replica stops writes.
    assert line(result, "min-replicas").split()[0] == "warn"
    assert line(result, "epoch").split()[0] == "ok"


def test_doctor_fails_a_cluster_where_any_master_may_evict(redis_cluster: LocalCluster) -> None:
    """A master other than agentcaps' with an evicting policy still fails: the slot can move there."""
    raw = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", redis_cluster.ports[0])])
    home = raw.get_node_from_key(Layout().rv)
    other = next(n for n in raw.get_primaries() if n.name != home.name)
    client = raw.get_redis_connection(other)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = doctor(redis_cluster.url)
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        raw.close()
    assert result.returncode == 1
    eviction = line(result, "eviction")
    assert eviction.split()[0] == "FAIL" and other.name in eviction and "allkeys-lru" in eviction


def test_doctor_fails_an_unreachable_cluster() -> None:
    """Cluster seeds that do not answer are one FAIL connection line; exit 1."""
    result = doctor("redis+cluster://:hunter2@127.0.0.1:1,127.0.0.1:2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert line(result, "connection").split()[0] == "FAIL"
    assert "hunter2" not in result.stdout


def test_doctor_passes_the_local_sentinel_group(sentinel_group: LocalSentinelGroup) -> None:
    """Through the sentinels: quorum reachable, the primary found and durable, its replica durable too; exit 0."""
    result = doctor(sentinel_group.url)
    assert result.returncode == 0, result.stdout
    sentinels = line(result, "sentinels")
    assert sentinels.split()[0] == "ok" and "3 of 3" in sentinels and "quorum 2" in sentinels
    primary = line(result, "primary")
    assert primary.split()[0] == "ok" and f":{sentinel_group.current_primary()}" in primary
    assert line(result, "persistence").split()[0] == "ok"
    assert line(result, "eviction").split()[0] == "ok"
    replicas = line(result, "replicas")
    assert replicas.split()[0] == "ok" and f":{sentinel_group.current_replica()}" in replicas
    assert line(result, "min-replicas").split()[0] == "warn"  # one replica: losing it stops writes
    assert "WAIT" in line(result, "replication")


def test_doctor_warns_when_the_primary_acknowledges_without_replicas(
    sentinel_group: LocalSentinelGroup,
) -> None:
    """min-replicas-to-write 0 warns, advising 1 (or AGENTCAPS_WAIT_REPLICAS)."""
    with redis.Redis(port=sentinel_group.current_primary()) as primary:
        primary.config_set("min-replicas-to-write", 0)
        try:
            result = doctor(sentinel_group.url)
        finally:
            primary.config_set("min-replicas-to-write", 1)
    advice = line(result, "min-replicas")
    assert advice.split()[0] == "warn" and "min-replicas-to-write 1" in advice


def test_doctor_fails_a_replica_that_could_be_promoted_without_persistence(
    sentinel_group: LocalSentinelGroup,
) -> None:
    """A replica without AOF fails the replicas check: after a failover, revocations would not survive a restart."""
    port = sentinel_group.current_replica()
    with redis.Redis(port=port) as replica:
        replica.config_set("appendonly", "no")
        replica.config_set("save", "")
        try:
            result = doctor(sentinel_group.url)
        finally:
            replica.config_set("appendonly", "yes")
            replica.config_set("save", "3600 1 300 100")
    assert result.returncode == 1
    replicas = line(result, "replicas")
    assert replicas.split()[0] == "FAIL" and f":{port}" in replicas


def test_doctor_fails_when_no_sentinel_answers_or_none_knows_the_service(
    sentinel_group: LocalSentinelGroup,
) -> None:
    """No sentinel answering, or none monitoring the URL's service, is a FAIL sentinels line; exit 1."""
    silent = doctor("redis+sentinel://127.0.0.1:1,127.0.0.1:2/agentcaps")
    assert silent.returncode == 1 and "Traceback" not in silent.stderr
    assert line(silent, "sentinels").split()[0] == "FAIL"
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinel_group.sentinels)
    unknown = doctor(f"redis+sentinel://{hosts}/not-monitored")
    assert unknown.returncode == 1
    named = line(unknown, "sentinels")
    assert named.split()[0] == "FAIL" and "not-monitored" in named


def test_min_replicas_judgements() -> None:
    """0 warns; as many as there are replicas warns (one loss stops writes); fewer passes; no CONFIG warns.

    More than there are replicas fails: Redis refuses every write now.
    """
    refusing = check_min_replicas({"min-replicas-to-write": "1"}, 0)
    assert refusing.status is Status.FAIL and "refuses every write" in refusing.finding
    # Redis counts the replicas within the max lag; a max lag of 0 switches the setting off.
    assert good_replicas({"connected_slaves": 1, "min_slaves_good_slaves": 0}, 1) == 0
    assert good_replicas({"connected_slaves": 1}, 1) == 1
    off = check_min_replicas({"min-replicas-to-write": "1", "min-replicas-max-lag": "0"}, 0)
    assert off.status is Status.WARN and "switched off by min-replicas-max-lag 0" in off.finding
    assert check_min_replicas({"min-replicas-to-write": "0"}, 2).status is Status.WARN
    assert check_min_replicas({"min-replicas-to-write": "1"}, 1).status is Status.WARN
    assert check_min_replicas({"min-replicas-to-write": "1"}, 2).status is Status.OK
    assert check_min_replicas(None, 2).status is Status.WARN
