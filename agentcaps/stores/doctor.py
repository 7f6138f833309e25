"""What `agentcaps doctor` asks a Redis: is it fit to hold revocations safely?

A revocation is only as good as the store that keeps it. This module reads a
Redis server's version, persistence, eviction policy, replication and the
revocation epoch agentcaps keeps there, and judges each one: `ok`, `warn`
(works, with a risk worth knowing) or `fail` (revocations can be lost or
silently ignored). It returns structured results; `agentcaps.cli` prints them.
It needs no master key: it reads no root key.

Each topology adds what its own safety rests on. Sentinel: the sentinels
answer and agree, a primary is known and reachable, there are replicas to
promote, each of them as durable as the primary, and the primary refuses
writes it cannot replicate (min-replicas-to-write). Cluster: every slot is
served, the master of agentcaps' slot (and its replicas) persist, and no
master evicts (a resharding or failover can move the slot to any of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from agentcaps.errors import StoreUnavailable
from agentcaps.stores.redis import (
    _ERRORS,
    Client,
    Layout,
    RedisRevocationStore,
    StoreAddress,
    open_client,
    open_sentinels,
    parse_store_url,
    redact_url,
)

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
        # INFO does not say whether snapshots are configured (rdb_last_save_time
        # is set at start, with or without them): unknown, not assumed.
        rdb = None
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
    if rdb is None:
        return Check(
            "persistence",
            Status.WARN,
            "appendonly no, and whether RDB snapshots are configured cannot be read (CONFIG "
            "is disabled on this server): a restart may lose every revocation and root key",
            "set appendonly yes and appendfsync always (or everysec)",
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


def check_replication(info: dict[str, Any], wait_replicas: int | None = None) -> Check:
    """The server's role, and what agentcaps waits for when it has replicas.

    `wait_replicas` is AGENTCAPS_WAIT_REPLICAS (None: as many as are connected).
    """
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
    if wait_replicas is not None and wait_replicas > replicas:
        return Check(
            "replication",
            Status.FAIL,
            f"AGENTCAPS_WAIT_REPLICAS={wait_replicas} but {replicas} replica(s) are connected: "
            "no revocation can be acknowledged (each is refused as not durable)",
            "connect the replicas, or lower AGENTCAPS_WAIT_REPLICAS",
        )
    if wait_replicas == 0 and replicas:
        return Check(
            "replication",
            Status.WARN,
            f"primary with {replicas} connected replica(s), but AGENTCAPS_WAIT_REPLICAS=0: "
            "revocations do not wait for them, and a failover can lose the latest",
            "unset AGENTCAPS_WAIT_REPLICAS (wait for every connected replica) or raise it",
        )
    if wait_replicas:
        return Check(
            "replication",
            Status.OK,
            f"primary with {replicas} connected replica(s): each revocation WAITs until "
            f"{wait_replicas} of them confirm it, so a failover keeps it",
        )
    if replicas == 0:
        return Check(
            "replication",
            Status.OK,
            "primary with no replicas connected: a revocation is acknowledged once this server "
            "has it, unless min-replicas-to-write refuses it (below)",
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


def good_replicas(info: dict[str, Any], connected: int) -> int:
    """The replicas min-replicas-to-write counts: those within min-replicas-max-lag, not all connected."""
    return int(info.get("min_slaves_good_slaves", connected) or 0)


def check_min_replicas(config: dict[str, str] | None, replicas: int) -> Check:
    """min-replicas-to-write: a primary that lost its replicas should refuse writes, not acknowledge them alone."""
    if config is None:
        return Check(
            "min-replicas",
            Status.WARN,
            "min-replicas-to-write cannot be read (CONFIG is disabled on this server)",
            "make sure min-replicas-to-write is at least 1",
        )
    wanted = int(config.get("min-replicas-to-write", "0") or 0)
    if wanted and config.get("min-replicas-max-lag") == "0":
        return Check(
            "min-replicas",
            Status.WARN,
            f"min-replicas-to-write {wanted} is switched off by min-replicas-max-lag 0: a "
            "primary cut off from its replicas goes on acknowledging revocations on its own copy",
            "set min-replicas-max-lag 10",
        )
    if wanted == 0:
        return Check(
            "min-replicas",
            Status.WARN,
            "min-replicas-to-write 0: a primary cut off from its replicas goes on acknowledging "
            "revocations on its own copy, which a failover then loses (verifiers that saw them "
            "fail closed until an operator recovers)",
            "set min-replicas-to-write 1 and min-replicas-max-lag 10 (or AGENTCAPS_WAIT_REPLICAS=1)",
        )
    if replicas < wanted:
        return Check(
            "min-replicas",
            Status.FAIL,
            f"min-replicas-to-write {wanted} with {replicas} replica(s) connected within "
            "min-replicas-max-lag: Redis refuses every write now, so no revocation, key or "
            "audit event can be stored",
            f"bring back replicas until {wanted} are connected",
        )
    if replicas == wanted:
        return Check(
            "min-replicas",
            Status.WARN,
            f"min-replicas-to-write {wanted} with {replicas} replica(s): revocations are never "
            f"acknowledged on fewer than {wanted + 1} copies, but losing one replica stops them",
            f"run at least {wanted + 1} replicas",
        )
    return Check(
        "min-replicas",
        Status.OK,
        f"min-replicas-to-write {wanted} with {replicas} replicas: a primary that loses its "
        "replicas refuses revocations instead of acknowledging them on one copy",
    )


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


@dataclass(frozen=True, slots=True)
class _Node:
    """What one Redis server said about itself."""

    name: str  # host:port
    info: dict[str, Any]
    config: dict[str, str] | None


def _read(client: redis.Redis, name: str) -> _Node:
    return _Node(name, client.info(), _config(client))


def _per_node(name: str, findings: list[tuple[str, Check]]) -> Check:
    """One check standing for several nodes': the worst status; nodes that agree share one finding."""
    order = [Status.OK, Status.WARN, Status.FAIL]
    worst = max((c for _, c in findings), key=lambda c: order.index(c.status))
    grouped: dict[str, list[str]] = {}
    for node, check in findings:
        grouped.setdefault(check.finding, []).append(node)
    text = "; ".join(f"{', '.join(nodes)}: {finding}" for finding, nodes in grouped.items())
    return Check(name, worst.status, text, worst.fix)


def _epoch(client: Client, layout: Layout) -> Check:
    store = RedisRevocationStore(client, layout=layout, max_lifetime=1, count_replicas=False)
    meta = store.meta()
    try:
        has_keys = bool(client.exists(layout.keys_index))
    except _ERRORS as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    return check_epoch(meta, has_keys)


def _replica_nodes(primary: _Node, timeout: float) -> list[_Node | str]:
    """Each replica the primary streams to, read directly (or its name, where it does not answer)."""
    out: list[_Node | str] = []
    for key, value in sorted(primary.info.items()):
        if not (key.startswith("slave") and key[5:].isdigit() and isinstance(value, dict)):
            continue
        name = f"{value.get('ip')}:{value.get('port')}"
        client = redis.Redis(
            host=str(value.get("ip")),
            port=int(value.get("port", 0)),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        try:
            out.append(_read(client, name))
        except _ERRORS:
            out.append(name)
        finally:
            client.close()
    return out


def _replica_safety(replicas: list[_Node | str]) -> Check:
    """Every replica may be promoted: each needs the primary's persistence and noeviction."""
    findings: list[tuple[str, Check]] = []
    for replica in replicas:
        if isinstance(replica, str):
            findings.append(
                (
                    replica,
                    Check(
                        "replicas",
                        Status.WARN,
                        "does not answer, so its settings are unknown",
                        "check that every replica runs and is reachable from here",
                    ),
                )
            )
            continue
        persistence = check_persistence(replica.config, replica.info)
        eviction = check_eviction(replica.info)
        if persistence.status is Status.OK and eviction.status is Status.OK:
            findings.append(
                (
                    replica.name,
                    Check(
                        "replicas",
                        Status.OK,
                        f"{persistence.finding.split(':')[0]} and noeviction, like a primary: "
                        "it can be promoted without losing revocations",
                    ),
                )
            )
            continue
        findings.extend(
            (replica.name, check)
            for check in (persistence, eviction)
            if check.status is not Status.OK
        )
    return _per_node("replicas", findings)


def _unreachable(url: str, exc: Exception) -> list[Check]:
    return [
        Check(
            "connection",
            Status.FAIL,
            f"cannot reach Redis at {redact_url(url)} ({type(exc).__name__})",
            "check the URL, that the server runs, and that this host may connect",
        )
    ]


def diagnose(
    url: str,
    *,
    timeout: float = 1.0,
    namespace: str = "agentcaps",
    wait_replicas: int | None = None,
) -> list[Check]:
    """Check the Redis at `url` for what revocation safety needs; one Check per aspect.

    A single server, a Sentinel group (`redis+sentinel://`) and a Cluster
    (`redis+cluster://`) each get the checks their safety rests on. An
    unreachable store gives a failed `connection` (or `sentinels`) check.

    Raises:
        ConfigError: `url` is not a Redis URL.
    """
    address = parse_store_url(url)
    layout = Layout(namespace)
    if address.topology == "sentinel":
        return _diagnose_sentinel(address, timeout, layout, wait_replicas)
    if address.topology == "cluster":
        return _diagnose_cluster(address, timeout, layout, wait_replicas)
    return _diagnose_single(address, timeout, layout, wait_replicas)


def _diagnose_single(
    address: StoreAddress, timeout: float, layout: Layout, wait_replicas: int | None
) -> list[Check]:
    client, close = open_client(address, timeout)
    assert isinstance(client, redis.Redis)
    try:
        try:
            client.ping()
            info = client.info()
        except _ERRORS as exc:
            return _unreachable(address.url, exc)
        checks = [Check("connection", Status.OK, f"reached {redact_url(address.url)}")]
        checks.append(check_version(info))
        try:
            config = _config(client)
        except _ERRORS as exc:
            return checks + [_lost(exc)]
        checks.append(check_persistence(config, info))
        checks.append(check_eviction(info))
        checks.append(check_replication(info, wait_replicas))
        if str(info.get("role", "")) == "master" and config is not None:
            wanted = int(config.get("min-replicas-to-write", "0") or 0)
            if wanted:  # one server: only a setting that refuses writes is news
                connected = int(info.get("connected_slaves", 0) or 0)
                checks.append(check_min_replicas(config, good_replicas(info, connected)))
        try:
            checks.append(_epoch(client, layout))
        except (StoreUnavailable, *_ERRORS) as exc:
            return checks + [_lost(exc)]
        return checks
    finally:
        close()


def _diagnose_sentinel(
    address: StoreAddress, timeout: float, layout: Layout, wait_replicas: int | None
) -> list[Check]:
    service = address.service
    sentinels = open_sentinels(address, timeout)
    try:
        views: list[dict[str, Any]] = []
        silent: list[str] = []
        for (host, port), sentinel in zip(address.hosts, sentinels.sentinels, strict=True):
            try:
                masters = cast("dict[str, dict[str, Any]]", sentinel.sentinel_masters())
            except _ERRORS:
                silent.append(f"{host}:{port}")
                continue
            views.append(
                {"at": f"{host}:{port}", "state": masters.get(service), "client": sentinel}
            )
        answered = len(views)
        if not answered:
            return [
                Check(
                    "sentinels",
                    Status.FAIL,
                    f"none of the {len(address.hosts)} sentinel(s) in the URL answers",
                    "check the sentinel addresses, that they run, and that this host may connect",
                )
            ]
        knowing = [v for v in views if v["state"]]
        if not knowing:
            return [
                Check(
                    "sentinels",
                    Status.FAIL,
                    f"{answered} sentinel(s) answer but none monitors a service named {service!r}",
                    "use the name of `sentinel monitor NAME …` as the URL's service",
                )
            ]
        checks = [_sentinel_check(address, views, knowing, silent)]
        try:
            primary_host, primary_port = sentinels.discover_master(service)  # type: ignore[no-untyped-call]
        except _ERRORS as exc:
            return checks + [
                Check(
                    "primary",
                    Status.FAIL,
                    f"the sentinels know no healthy primary for {service!r} ({type(exc).__name__}): "
                    "verification fails closed until one is promoted",
                    "check the data nodes and the sentinels' logs",
                )
            ]
        primary_name = f"{primary_host}:{primary_port}"
        client, close = open_client(address, timeout)
        try:
            assert isinstance(client, redis.Redis)
            try:
                primary = _read(client, primary_name)
            except _ERRORS as exc:
                return checks + [
                    Check(
                        "primary",
                        Status.FAIL,
                        f"the sentinels name {primary_name} but it does not answer "
                        f"({type(exc).__name__})",
                        "check that this host can reach the data nodes at the addresses the "
                        "sentinels announce",
                    )
                ]
            role = primary.info.get("role")
            checks.append(
                Check(
                    "primary",
                    Status.OK if role == "master" else Status.FAIL,
                    f"the sentinels name {primary_name}, which answers as {role}",
                    ""
                    if role == "master"
                    else "wait for the failover to finish, or check Sentinel",
                )
            )
            checks.extend(_primary_checks(primary, check_replication(primary.info, wait_replicas)))
            replicas = _replica_nodes(primary, timeout)
            if not replicas:
                checks.append(
                    Check(
                        "replicas",
                        Status.WARN,
                        "no replica: Sentinel has nothing to promote, so a failure of the primary "
                        "stops revocations (and fails verification closed) until it returns",
                        "run at least two replicas",
                    )
                )
            else:
                checks.append(_replica_safety(replicas))
            checks.append(
                check_min_replicas(primary.config, good_replicas(primary.info, len(replicas)))
            )
            try:
                checks.append(_epoch(client, layout))
            except (StoreUnavailable, *_ERRORS) as exc:
                checks.append(_lost(exc))
            return checks
        finally:
            close()
    finally:
        sentinels.close()


def _sentinel_check(
    address: StoreAddress,
    views: list[dict[str, Any]],
    knowing: list[dict[str, Any]],
    silent: list[str],
) -> Check:
    service = address.service
    state = knowing[0]["state"]
    addresses = {f"{v['state']['ip']}:{v['state']['port']}" for v in knowing}
    quorum = int(state.get("quorum", 0))
    total = int(state.get("num-other-sentinels", 0)) + 1
    try:
        # Answers "OK …" when the sentinels can reach the quorum and authorize a
        # failover, a NOQUORUM error (Sentinel's own text) when they cannot.
        knowing[0]["client"].sentinel_ckquorum(service)
        ckquorum, quorum_ok = "", True
    except redis.ResponseError as exc:
        ckquorum, quorum_ok = str(exc).split(". ")[0], False
    except _ERRORS as exc:
        ckquorum, quorum_ok = type(exc).__name__, False
    finding = (
        f"{len(views)} of {len(address.hosts)} sentinel(s) answer; they know {total} sentinel(s) "
        f"watching {service!r}, quorum {quorum}"
    )
    if not quorum_ok:
        return Check(
            "sentinels",
            Status.FAIL,
            f"{finding}; SENTINEL CKQUORUM: {ckquorum}: no failover can be authorized",
            "run at least three sentinels, on separate machines, with quorum 2",
        )
    if len(addresses) > 1:
        return Check(
            "sentinels",
            Status.WARN,
            f"{finding}; they disagree on the primary ({', '.join(sorted(addresses))})",
            "wait for the failover to settle, then run doctor again",
        )
    if silent or total < 3:
        why = f"{', '.join(silent)} do(es) not answer" if silent else f"only {total} sentinel(s)"
        return Check(
            "sentinels",
            Status.WARN,
            f"{finding}; {why}",
            "run at least three sentinels, on separate machines, and list them all in the URL",
        )
    return Check("sentinels", Status.OK, f"{finding}; failover can be authorized")


def _primary_checks(primary: _Node, replication: Check) -> list[Check]:
    return [
        check_version(primary.info),
        check_persistence(primary.config, primary.info),
        check_eviction(primary.info),
        replication,
    ]


def _diagnose_cluster(
    address: StoreAddress, timeout: float, layout: Layout, wait_replicas: int | None
) -> list[Check]:
    try:
        client, close = open_client(address, timeout)
    except StoreUnavailable as exc:
        return _unreachable(address.url, exc)
    assert isinstance(client, RedisCluster)
    try:
        checks = [
            Check("connection", Status.OK, f"reached the cluster at {redact_url(address.url)}")
        ]
        try:
            masters = [
                _read(client.get_redis_connection(node), node.name)
                for node in client.get_primaries()  # type: ignore[no-untyped-call]
            ]
            cluster_info = client.cluster_info(target_nodes=RedisCluster.RANDOM)
        except _ERRORS as exc:
            return checks + [_lost(exc)]
        state = str(cluster_info.get("cluster_state", "?"))
        slots_ok = int(cluster_info.get("cluster_slots_ok", 0))
        if state == "ok" and slots_ok == 16384:
            checks.append(
                Check(
                    "cluster",
                    Status.OK,
                    f"cluster_state ok, all 16384 slots served, {len(masters)} masters",
                )
            )
        else:
            checks.append(
                Check(
                    "cluster",
                    Status.FAIL,
                    f"cluster_state {state}, {slots_ok} of 16384 slots served: the cluster refuses "
                    "commands, so verification fails closed",
                    "assign every slot (redis-cli --cluster fix) and bring failed masters back",
                )
            )
        try:
            node = client.get_node_from_key(layout.rv)  # type: ignore[no-untyped-call]
        except _ERRORS as exc:
            return checks + [_lost(exc)]
        slot = client.keyslot(layout.rv)  # type: ignore[no-untyped-call]
        home = next((m for m in masters if m.name == node.name), None)
        if home is None:
            return checks + [_lost(RuntimeError("slot master not among the masters"))]
        replicas = _replica_nodes(home, timeout)
        checks.append(
            Check(
                "slot",
                Status.OK,
                f"agentcaps' keys (hash tag {{ac}}) live in slot {slot}, on master {home.name} "
                f"with {len(replicas)} replica(s)",
            )
        )
        lowest = min(masters, key=lambda m: _version(str(m.info.get("redis_version", "0"))))
        checks.append(check_version(lowest.info))
        # The slot's master and its replicas (which a failover promotes) must persist.
        persistence = [(home.name, check_persistence(home.config, home.info))]
        persistence.extend(
            (r.name, check_persistence(r.config, r.info)) for r in replicas if isinstance(r, _Node)
        )
        checks.append(_per_node("persistence", persistence))
        evicting = [m for m in masters if m.info.get("maxmemory_policy") != "noeviction"]
        if evicting:
            names = ", ".join(f"{m.name} ({m.info.get('maxmemory_policy')})" for m in evicting)
            checks.append(
                Check(
                    "eviction",
                    Status.FAIL,
                    f"masters that may evict keys: {names}; a resharding or failover can move "
                    "agentcaps' slot onto any master",
                    "set maxmemory-policy noeviction on every node",
                )
            )
        else:
            checks.append(
                Check(
                    "eviction",
                    Status.OK,
                    f"maxmemory-policy noeviction on all {len(masters)} masters",
                )
            )
        replication = check_replication(home.info, wait_replicas)
        if not replicas:
            replication = Check(
                "replication",
                Status.WARN,
                f"the slot's master {home.name} has no replica: if it fails, agentcaps' slot is "
                "down (verification fails closed) until it returns",
                "give every master at least one replica",
            )
        checks.append(replication)
        checks.append(check_min_replicas(home.config, good_replicas(home.info, len(replicas))))
        try:
            checks.append(_epoch(client, layout))
        except (StoreUnavailable, *_ERRORS) as exc:
            checks.append(_lost(exc))
        return checks
    finally:
        close()


def _lost(exc: Exception) -> Check:
    return Check(
        "connection",
        Status.FAIL,
        f"the server stopped answering mid-check ({type(exc).__name__})",
        "check the server and run doctor again",
    )
