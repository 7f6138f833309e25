"""`agentcaps doctor`: what it says about real Redis servers, and how it judges each setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from agentcaps.config import redact_url
from agentcaps.stores.doctor import (
    Status,
    check_epoch,
    check_persistence,
    check_replication,
    check_version,
)
from agentcaps.stores.redis import Layout
from tests.conftest import RedisServer, real_stores


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


def test_replication_and_version_judgements() -> None:
    """Replicas are noted with WAIT; a replica role warns; Redis older than 6.2 fails."""
    primary = check_replication({"role": "master", "connected_slaves": 2})
    assert primary.status is Status.OK and "WAIT" in primary.finding
    replica = check_replication({"role": "slave", "master_host": "db1", "master_port": 6379})
    assert replica.status is Status.WARN and "db1:6379" in replica.finding
    assert check_version({"redis_version": "6.0.16"}).status is Status.FAIL
    assert check_version({"redis_version": "6.2.0"}).status is Status.OK
    assert check_epoch({}, has_keys=False).status is Status.OK


def test_redact_hides_only_the_password() -> None:
    """URLs are printed with the password replaced and everything else kept."""
    assert redact_url("redis://u:pw@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
