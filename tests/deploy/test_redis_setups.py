"""deploy/redis/ is real: the durable server's config passes `agentcaps doctor`, and deploy/README.md starts Sentinel and Cluster exactly as the tests do.

The Sentinel and Cluster configurations themselves run in
tests/integration/test_sentinel.py and test_cluster.py (started by the very
scripts the README names) and in tests/e2e/test_doctor.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from agentcaps.stores.doctor import Status, diagnose
from tests.servers import ROOT, LocalCluster, LocalSentinelGroup, free_port

README = (ROOT / "deploy" / "README.md").read_text()
# The directories and ports deploy/README.md uses; the tests use free ones.
CLUSTER = ("/tmp/agentcaps-cluster", [7000, 7001, 7002, 7003, 7004, 7005])
SENTINEL = ("/tmp/agentcaps-sentinel", [6380, 6381, 26380, 26381, 26382])


def readme_lines() -> set[str]:
    return {line.strip() for line in README.splitlines()}


def test_the_readme_starts_the_cluster_with_the_tests_command() -> None:
    """deploy/README.md's cluster commands are LocalCluster's: the same script, arguments and URL."""
    directory, ports = CLUSTER
    lines = readme_lines()
    assert LocalCluster.command(directory, ports) in lines
    assert f"export AGENTCAPS_REDIS_URL={LocalCluster.url_for(ports)}" in lines
    assert f"deploy/redis/stop-local.sh {directory}" in lines


def test_the_readme_starts_the_sentinel_group_with_the_tests_command() -> None:
    """deploy/README.md's Sentinel commands are LocalSentinelGroup's: the same timings, script, arguments, URL, kill and restart."""
    directory, ports = SENTINEL
    lines = readme_lines()
    command = LocalSentinelGroup.command(directory, ports)
    assert command.startswith("DOWN_AFTER_MS=1000 FAILOVER_TIMEOUT_MS=5000 ")
    assert command in lines
    assert f"export AGENTCAPS_REDIS_URL={LocalSentinelGroup.url_for(ports)}" in lines
    primary = f"{directory}/{ports[0]}"
    assert any(line.startswith(f'kill -9 "$(cat {primary}/redis.pid)"') for line in lines)
    assert any(line.startswith(f"sh {primary}/start") for line in lines)
    assert f"deploy/redis/stop-local.sh {directory}" in lines


def test_the_durable_single_server_config_passes_doctor(tmp_path: Path) -> None:
    """redis-server with deploy/redis/redis.conf (only port, address and directory overridden) passes every doctor check."""
    binary = shutil.which("redis-server")
    if binary is None:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("redis-server is not installed")
    config = tmp_path / "redis.conf"
    shutil.copy(ROOT / "deploy" / "redis" / "redis.conf", config)
    port = free_port()
    process = subprocess.Popen(
        [binary, str(config), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server refused deploy/redis/redis.conf"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()
        checks = diagnose(f"redis://127.0.0.1:{port}/0")
        assert [c.name for c in checks if c.status is not Status.OK] == [], checks
        (persistence,) = [c for c in checks if c.name == "persistence"]
        assert "appendfsync always" in persistence.finding
    finally:
        process.kill()
        process.wait(timeout=10)
