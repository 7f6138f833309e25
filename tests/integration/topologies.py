"""Backends on Redis's distributed topologies: a Redis Cluster and a Sentinel group.

The groups are started by deploy/redis/'s own scripts (tests/servers.py). One
cluster and one Sentinel group serve the whole session (a module that uses
them imports the fixtures below); each test's backend empties them first. A
test that changes a group's shape (a failover) starts its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

import agentcaps
from agentcaps.config import Settings
from agentcaps.stores.redis import Stores
from tests.conftest import MASTER_KEY, FakeClock
from tests.integration.harness import LAYOUT, Backend
from tests.servers import (
    ROOT,
    SENTINEL_SERVICE,
    LocalCluster,
    LocalGroup,
    LocalSentinelGroup,
    ServerMissing,
)

G = TypeVar("G", bound=LocalGroup)


@contextlib.contextmanager
def running(kind: type[G], directory: Path) -> Iterator[G]:
    """A started group of `kind` in `directory`, stopped afterwards; a skip (a failure under CI) without redis."""
    try:
        group = kind(directory)  # type: ignore[call-arg]
    except ServerMissing as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run installs it from Debian's packages")
        pytest.skip(str(exc))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster (3 masters, 3 replicas) for the session."""
    with running(LocalCluster, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinelGroup]:
    """One Sentinel group (primary, replica, 3 sentinels) for the session."""
    with running(LocalSentinelGroup, tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture
def cluster_backend(redis_cluster: LocalCluster, clock: FakeClock) -> Iterator[ClusterBackend]:
    """The session's cluster, emptied."""
    backend = ClusterBackend(clock, redis_cluster)
    backend.empty()
    yield backend
    backend.close()


@pytest.fixture
def sentinel_backend(
    sentinel_group: LocalSentinelGroup, clock: FakeClock
) -> Iterator[SentinelBackend]:
    """The session's Sentinel group, emptied."""
    backend = SentinelBackend(clock, sentinel_group)
    backend.empty()
    yield backend
    backend.close()


def _with_url(settings: Settings, url: str) -> Settings:
    return dataclasses.replace(settings, redis_url=url)


class ClusterBackend(Backend):
    """A Redis Cluster: three masters with a replica each; agentcaps' keys in one slot."""

    name = "cluster"

    def __init__(self, clock: FakeClock, cluster: LocalCluster) -> None:
        super().__init__(clock)
        self.cluster = cluster
        self._raw = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports[:3]],
            socket_timeout=5,
        )

    def _connect(self, settings: Settings) -> Stores:
        url = self.cluster.url
        return agentcaps.connect(url, settings=_with_url(settings, url), clock=self.clock)

    @property
    def raw(self) -> redis.Redis:
        return self._raw  # type: ignore[return-value]  # the same commands, on a Cluster

    def home_port(self) -> int:
        """The port of the master holding agentcaps' slot."""
        return int(self._raw.get_node_from_key(LAYOUT.rv).port)

    def empty(self) -> None:
        """Flush every master (and so every replica) and wait until the replicas have it."""
        self._raw.flushall(target_nodes=RedisCluster.PRIMARIES)
        for node in self._raw.get_primaries():
            self._raw.get_redis_connection(node).wait(1, 5000)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        # The master of agentcaps' slot stops answering (shorter than
        # cluster-node-timeout, so no failover starts).
        port = self.home_port()
        self.cluster.pause(port)
        try:
            yield
        finally:
            self.cluster.resume(port)

    def close(self) -> None:
        super().close()
        self._raw.close()


class SentinelBackend(Backend):
    """A Sentinel group: the stores find the primary through three sentinels."""

    name = "sentinel"

    def __init__(self, clock: FakeClock, group: LocalSentinelGroup) -> None:
        super().__init__(clock)
        self.group = group
        self._sentinel = Sentinel([("127.0.0.1", p) for p in group.sentinels], socket_timeout=5)
        self._raw: redis.Redis = self._sentinel.master_for(SENTINEL_SERVICE, socket_timeout=5)

    def _connect(self, settings: Settings) -> Stores:
        url = self.group.url
        return agentcaps.connect(url, settings=_with_url(settings, url), clock=self.clock)

    @property
    def raw(self) -> redis.Redis:
        return self._raw

    def empty(self) -> None:
        """Flush the primary and wait until its replica has it too."""
        self._raw.flushall()
        self._raw.wait(1, 5000)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        # The primary stops answering, for less than down-after-milliseconds:
        # requests fail, and no failover starts.
        port = self.group.current_primary()
        assert port is not None
        self.group.pause(port)
        try:
            yield
        finally:
            self.group.resume(port)

    def close(self) -> None:
        super().close()
        self._raw.close()
        self._sentinel.close()


# -- end to end, through the CLI and verifier processes ------------------------


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    env.update({"AGENTCAPS_REDIS_URL": url, "AGENTCAPS_MASTER_KEY": MASTER_KEY.hex()})
    return subprocess.run(
        [sys.executable, "-m", "agentcaps", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def end_to_end(url: str, *, staleness: float, slack: float) -> None:
    """Mint with the CLI, verify in replica-mode verifier processes and with the CLI, revoke with the CLI."""
    minted = _cli(
        "mint", "--customer", "acme", "--user", "alice", "--agent", "planner",
        "--resource", "crm/**", "--action", "read", "--purpose", "sync", "--ttl", "600", "--json",
        url=url,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    token = json.loads(minted.stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    env.update(
        {
            "AGENTCAPS_REDIS_URL": url,
            "AGENTCAPS_MASTER_KEY": MASTER_KEY.hex(),
            "AGENTCAPS_REVOCATION_MODE": "replica",
            "AGENTCAPS_REPLICA_staleness": str(staleness),
            "PYTHONPATH": str(ROOT),
        }
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.verifier_loop", token["token"], "60"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().split()[1:] == ["ok"], child.stderr
        request = ("--resource", "crm/contacts/42", "--action", "read")
        allowed = _cli("verify", token["token"], *request, url=url)
        assert allowed.returncode == 0 and json.loads(allowed.stdout)["reason"] == "ok"

        revoked = _cli("revoke", "--token-id", token["token_id"], url=url)
        assert revoked.returncode == 0, revoked.stderr
        acknowledged = time.monotonic()
        denied = _cli("verify", token["token"], *request, url=url)
        assert denied.returncode == 1 and json.loads(denied.stdout)["reason"] == "revoked"
        for child in children:
            assert child.wait(timeout=staleness + 30) == 0  # it exits on `revoked`
            assert child.stdout is not None
            last_at, last = child.stdout.read().split()[-2:]
            assert last == "revoked"
            assert float(last_at) - acknowledged <= staleness + slack
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
