"""What `agentcaps doctor` asks a Redis: is it fit to hold revocations safely?

A revocation is only as good as the store that keeps it. This module reads a
Redis server's version, persistence, eviction policy, replication and the
revocation epoch agentcaps keeps there, and judges each one: `ok`, `warn`
(works, with a risk worth knowing) or `fail` (revocations can be lost or
silently ignored). It returns structured results; `agentcaps.cli` prints them.
It needs no master key: it reads no root key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from agentcaps.config import redact_url
from agentcaps.errors import StoreUnavailable
from agentcaps.stores.redis import Layout, RedisRevocationStore, _client

MIN_VERSION = (6, 2)


class Status(StrEnum):
    """How one check came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, how it came out, what it means, what to change."""

    name: str
    status: Status
    finding: str
    fix: str = ""


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_version(info: dict[str, Any]) -> Check:
    """Redis 6.2 or newer."""
    text = str(info.get("redis_version", "unknown"))
    needed = ".".join(map(str, MIN_VERSION))
    if text != "unknown" and _version(text) >= MIN_VERSION:
        return Check("version", Status.OK, f"Redis {text} (agentcaps needs {needed} or newer)")
    return Check(
        "version",
        Status.FAIL,
        f"Redis {text}: agentcaps needs {needed} or newer",
        f"upgrade the server to Redis {needed} or newer",
    )


def check_persistence(config: dict[str, str] | None, info: dict[str, Any]) -> Check:
    """AOF on, fsynced always or every second; RDB alone warns; nothing at all fails.

    `config` is CONFIG GET's answer, None where CONFIG is disabled (managed
    services); INFO persistence is the fallback.
    """
    if config is not None:
        aof = config.get("appendonly") == "yes"
        fsync: str | None = config.get("appendfsync")
        rdb = bool(config.get("save", "").strip())
    else:
        aof = str(info.get("aof_enabled", "0")) == "1"
        fsync = None
        # Without CONFIG, a snapshot ever taken is the best sign of RDB.
        rdb = int(info.get("rdb_last_save_time", 0) or 0) > 0 and not aof
    if aof and fsync == "always":
        return Check(
            "persistence",
            Status.OK,
            "AOF on, appendfsync always: every revocation is on disk before it is acknowledged",
        )
    if aof and fsync == "everysec":
        return Check(
            "persistence",
            Status.OK,
            "AOF on, appendfsync everysec: a crash of the machine can lose up to about one "
            "second of acknowledged revocations (a verifier that saw them then fails closed)",
            "for no loss at all set appendfsync always",
        )
    if aof and fsync is None:
        return Check(
            "persistence",
            Status.WARN,
            "AOF on, but appendfsync cannot be read (CONFIG is disabled on this server)",
            "make sure appendfsync is always (no loss) or everysec (up to about 1 s on a crash)",
        )
    if aof:
        return Check(
            "persistence",
            Status.WARN,
            f"AOF on, appendfsync {fsync}: the operating system decides when revocations reach "
            "the disk, so a machine crash can lose many seconds of acknowledged revocations",
            "set appendfsync always (no loss) or everysec (up to about 1 s on a crash)",
        )
    if rdb:
        return Check(
            "persistence",
            Status.WARN,
            "RDB snapshots only (appendonly no): a restart loses every revocation made since "
            "the last snapshot",
            "set appendonly yes and appendfsync always (or everysec)",
        )
    return Check(
        "persistence",
        Status.FAIL,
        "no persistence (appendonly no, no RDB snapshots): a restart loses every revocation "
        "and root key",
        "set appendonly yes and appendfsync always (or everysec)",
    )


def check_eviction(info: dict[str, Any]) -> Check:
    """maxmemory-policy noeviction: anything else can drop revocations silently."""
    policy = str(info.get("maxmemory_policy", "unknown"))
    if policy == "noeviction":
        return Check(
            "eviction",
            Status.OK,
            "maxmemory-policy noeviction: when memory is full Redis refuses writes "
            "instead of dropping revocations",
        )
    return Check(
        "eviction",
        Status.FAIL,
        f"maxmemory-policy {policy}: under memory pressure Redis may evict keys, revocations "
        "and root keys included, without telling anyone",
        "set maxmemory-policy noeviction",
    )


def check_replication(info: dict[str, Any]) -> Check:
    """The server's role, and what agentcaps waits for when it has replicas."""
    role = str(info.get("role", "unknown"))
    if role in ("slave", "replica"):
        primary = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
        return Check(
            "replication",
            Status.WARN,
            f"this server is a read-only replica of {primary}: agentcaps cannot write keys or "
            "revocations here, and a verifier here sees revocations only once they replicate",
            "point AGENTCAPS_REDIS_URL at the primary",
        )
    replicas = int(info.get("connected_slaves", 0) or 0)
    if replicas == 0:
        return Check(
            "replication",
            Status.OK,
            "primary with no replicas: a revocation is acknowledged once this server has it",
        )
    return Check(
        "replication",
        Status.OK,
        f"primary with {replicas} connected replica(s): each revocation WAITs until they "
        "confirm it (AGENTCAPS_WAIT_REPLICAS sets how many), so a failover keeps it",
    )


def check_epoch(meta: dict[str, str], has_keys: bool) -> Check:
    """The revocation epoch and sequence agentcaps keeps to detect data loss."""
    epoch = meta.get("epoch")
    if epoch is None:
        if has_keys:
            return Check(
                "epoch",
                Status.FAIL,
                "root keys exist but the revocation epoch is missing: this store lost data "
                "(flushed, or restarted without persistence); verifiers that knew it fail closed",
                "restore the data if you can; otherwise run `agentcaps revocations recover` "
                "and rotate or revoke the root keys whose tokens must not come back",
            )
        return Check(
            "epoch",
            Status.OK,
            "no agentcaps data here yet; the first root key or revocation creates the epoch "
            "(if this store was in use before, it has lost its data)",
        )
    seq = meta.get("seq", "0")
    finding = f"revocation epoch {epoch[:8]}…, sequence {seq}"
    if meta.get("recovery"):
        recovered_at = int(meta["recovery"]) // 1000 if meta["recovery"].isdigit() else "?"
        finding += (
            f"; an operator accepted a loss (recovered at unix time {recovered_at}): "
            "revocations from before may be gone"
        )
    return Check("epoch", Status.OK, finding)


def _config(client: redis.Redis) -> dict[str, str] | None:
    try:
        raw = client.config_get("*")
    except redis.ResponseError:
        return None  # CONFIG renamed or disabled
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def diagnose(url: str, *, timeout: float = 1.0, namespace: str = "agentcaps") -> list[Check]:
    """Check the Redis at `url` for what revocation safety needs; one Check per aspect.

    An unreachable server gives a single failed `connection` check.

    Raises:
        ConfigError: `url` is not a Redis URL.
    """
    client = _client(url, timeout)
    try:
        try:
            client.ping()
            info = client.info()
        except redis.RedisError as exc:
            return [
                Check(
                    "connection",
                    Status.FAIL,
                    f"cannot reach Redis at {redact_url(url)} ({type(exc).__name__})",
                    "check the URL, that the server runs, and that this host may connect",
                )
            ]
        checks = [Check("connection", Status.OK, f"reached {redact_url(url)}")]
        checks.append(check_version(info))
        try:
            config = _config(client)
        except redis.RedisError as exc:
            return checks + [_lost(exc)]
        checks.append(check_persistence(config, info))
        checks.append(check_eviction(info))
        checks.append(check_replication(info))
        layout = Layout(namespace)
        store = RedisRevocationStore(client, layout=layout, max_lifetime=1, count_replicas=False)
        try:
            meta = store.meta()
            has_keys = bool(client.exists(layout.keys_index))
        except (StoreUnavailable, redis.RedisError) as exc:
            return checks + [_lost(exc)]
        checks.append(check_epoch(meta, has_keys))
        return checks
    finally:
        client.close()


def _lost(exc: Exception) -> Check:
    return Check(
        "connection",
        Status.FAIL,
        f"the server stopped answering mid-check ({type(exc).__name__})",
        "check the server and run doctor again",
    )
