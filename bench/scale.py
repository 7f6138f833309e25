"""Revocation scale: verification time and memory with 0 to 1 000 000 live revocation entries (issue 7).

One redis-server, one database per entry count (0, 10 000, 100 000, 1 000 000;
--quick stops at 100 000). The entries are written as the store writes them
(Revocation.field() and .value() into the `rv` hash of agentcaps.stores.redis's
Layout, and the `rv:expiry` zset), but in pipelined batches rather than one
revoke() each. Then, per database, one process-local pair of stores:

- replica: `agentcaps.connect(..., revocation_mode="replica")`, the index
  loaded by its follower thread exactly as a gateway loads it. Its memory is
  what tracemalloc sees held after the load (Python allocations: the index
  and the store's objects; the transient copy made while loading is freed),
  minus the same for the empty database: bytes per entry of the index.
- direct: `revocation_mode="direct"`, one pipelined round trip per
  verification. Its entries live in Redis: the memory column is redis-server's
  `used_memory` growth per entry (hash + expiry zset), for information.

Every candidate verifies never-seen 8-caveat tokens (a pool minted on its own
database, a different user each), in interleaved rounds, so that a large index
pays its cache misses as real traffic would.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from timing import Candidate, estimate_ns, interleave, loops_for
from verify import ACTION, AUDIENCE, PURPOSE, RESOURCE, Pool, agentcaps_run, agentcaps_token

import agentcaps
from agentcaps.config import Settings
from agentcaps.revocation import Revocation, RevocationKind
from agentcaps.stores.redis import Layout

COUNTS = (0, 10_000, 100_000, 1_000_000)
QUICK_COUNTS = (0, 10_000, 100_000)
CAVEATS = 8
REQUEST = {"resource": RESOURCE, "action": ACTION, "purpose": PURPOSE}
_BATCH = 1000  # fields per HSET
_PIPELINE = 20  # HSETs per round trip


def entries(count: int, now: int, expires_at: int) -> Iterator[Revocation]:
    """`count` unrelated revocations, mostly token and delegation ids, as live traffic makes them."""
    for i in range(count):
        share = i % 100
        if share < 40:
            yield Revocation(
                RevocationKind.TOKEN, (secrets.token_hex(16),), now, expires_at, "bench"
            )
        elif share < 80:
            subject = (secrets.token_hex(16),)
            yield Revocation(RevocationKind.DELEGATION, subject, now, expires_at, "bench")
        elif share < 95:
            yield Revocation(RevocationKind.USER, ("acme", f"u{i}"), now, expires_at, "bench")
        elif share < 99:
            yield Revocation(RevocationKind.AGENT, (f"agent{i}",), now, expires_at, "bench")
        else:
            yield Revocation(RevocationKind.CUSTOMER, (f"c{i}",), now, expires_at, "bench")


def load(client: redis.Redis, revocations: list[Revocation]) -> float:
    """Write the entries as the store does (hash + expiry zset), pipelined; the seconds it took."""
    layout = Layout()
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for offset in range(0, len(revocations), _BATCH):
        batch = revocations[offset : offset + _BATCH]
        pipe.hset(layout.rv, mapping={r.field(): r.value() for r in batch})
        pipe.zadd(layout.rv_expiry, {r.field(): r.expires_at for r in batch})
        if (offset // _BATCH) % _PIPELINE == _PIPELINE - 1:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _connect(url: str, master_key: bytes, mode: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return agentcaps.connect(
            url, settings=Settings(redis_url=url, master_key=master_key), revocation_mode=mode
        )


def measure(server_url: str, *, quick: bool, rounds: int, batch_ns: float) -> dict[str, Any]:
    """Load each entry count into its own database, then time replica and direct verification."""
    counts = QUICK_COUNTS if quick else COUNTS
    master_key = secrets.token_bytes(32)
    now = int(time.time())
    expires_at = now + Settings().max_lifetime
    base = server_url.rsplit("/", 1)[0]
    admin = redis.Redis.from_url(base + "/0")
    opened: list[Any] = []
    results: dict[int, dict[str, Any]] = {}
    candidates: list[Candidate] = []
    pools: list[tuple[Pool, Any]] = []
    try:
        made = time.perf_counter()
        everything = list(entries(max(counts), now, expires_at))
        made = time.perf_counter() - made
        for db, count in enumerate(counts):
            url = f"{base}/{db}"
            before = int(admin.info("memory")["used_memory"])
            seconds = load(redis.Redis.from_url(url), everything[:count])
            grown = int(admin.info("memory")["used_memory"]) - before
            results[count] = {
                "entries": count,
                "load_seconds": round(seconds, 2),
                "redis_used_memory_bytes": grown,
                "redis_bytes_per_entry": grown / count if count else None,
            }

        del everything
        # One throwaway replica first: what the first one in a process allocates
        # once (scripts, caches) must not count as the empty database's baseline.
        _connect(f"{base}/0", master_key, "replica").close()

        for count in counts:
            db = counts.index(count)
            url = f"{base}/{db}"
            direct = _connect(url, master_key, "direct")
            opened.append(direct)
            minter = direct.minter()
            minter.mint(  # the writer makes the store's epoch and the root key first
                customer="acme", user="warmup", agent="planner", resources=["crm/**"],
                actions=["read"], purposes=["sync"], ttl=600,
            )  # fmt: skip
            gc.collect()
            tracemalloc.start()
            traced_before = tracemalloc.get_traced_memory()[0]
            rss_before = _rss_bytes()
            started = time.perf_counter()
            replica = _connect(url, master_key, "replica")
            opened.append(replica)
            if not replica.revocations.wait_ready(300.0):
                raise RuntimeError(f"the replica of {count} entries did not load within 300 s")
            loaded = time.perf_counter() - started
            # A load longer than the staleness bound leaves the index stale
            # (checks fail closed) until the follower's first stream read returns.
            bound = replica.settings.replica_staleness
            fresh_by = time.monotonic() + bound + 10.0
            while replica.revocations.lag() > bound / 2:
                if time.monotonic() > fresh_by:
                    raise RuntimeError(f"the replica of {count} entries did not become fresh")
                time.sleep(0.01)
            freshened = time.perf_counter() - started
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - traced_before
            tracemalloc.stop()
            indexed = len(replica.revocations.index)
            if indexed != count:
                raise RuntimeError(f"the replica holds {indexed} entries, not {count}")
            results[count].update(
                replica_load_seconds=round(loaded, 2),
                replica_fresh_seconds=round(freshened, 2),
                replica_traced_bytes=held,
                replica_rss_growth_bytes=_rss_bytes() - rss_before,
            )
            for mode, stores in (("replica", replica), ("direct", direct)):
                verifier = stores.verifier(audience=AUDIENCE)
                sample = agentcaps_token(minter, CAVEATS, 3000, user="sample")
                decision = verifier.verify(sample, **REQUEST)
                assert decision.allowed, (mode, count, decision)
                name = f"{mode} {count}"

                def fresh(k: int, minter: Any = minter, tag: str = f"{mode}{count}") -> list[str]:
                    return [
                        agentcaps_token(minter, CAVEATS, 600 + i % 3000, user=f"{tag}u{i}")
                        for i in range(k)
                    ]

                probe = agentcaps_run(verifier, Pool(fresh(60)))
                estimate_ns(probe, 20)
                loops = loops_for(estimate_ns(probe, 40), batch_ns, least=10)
                pool = Pool(fresh(loops * rounds + 10))
                candidates.append(Candidate(name, agentcaps_run(verifier, pool), loops=loops))
                pools.append((pool, verifier))

        interleave(candidates, rounds)
        for pool, verifier in pools:
            denied = [
                t for t in pool.tokens[: pool.used] if not verifier.verify(t, **REQUEST).allowed
            ]
            assert not denied, f"{len(denied)} pool tokens were denied"
    finally:
        for stores in reversed(opened):
            stores.close()
        admin.close()

    by_name = {c.name: c for c in candidates}
    zero = counts[0]
    for count in counts:
        row = results[count]
        for mode in ("replica", "direct"):
            c = by_name[f"{mode} {count}"]
            row[f"{mode}_us"] = c.median_ns / 1000
            row[f"{mode}_us_min"] = min(c.samples) / 1000
            row[f"{mode}_us_max"] = max(c.samples) / 1000
            row[f"{mode}_vs_zero"] = c.median_ns / by_name[f"{mode} {zero}"].median_ns
        if count:
            grown = row["replica_traced_bytes"] - results[zero]["replica_traced_bytes"]
            row["replica_bytes_per_entry"] = grown / count
    return {
        "counts": list(counts),
        "largest": max(counts),
        "quick_stops_at": max(QUICK_COUNTS) if quick else None,
        "caveats": CAVEATS,
        "generate_seconds": round(made, 2),
        "memory_method": (
            "replica: tracemalloc, Python bytes held after the load, minus the empty database's; "
            "direct: redis-server used_memory growth"
        ),
        "rows": [results[c] for c in counts],
        "rounds": rounds,
    }


def main() -> int:  # pragma: no cover - a quick manual run
    import json
    import sys
    import tempfile

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent)]
    from tests.servers import RedisServer

    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="agentcaps-bench-") as tmp:
        server = RedisServer(Path(tmp))
        try:
            server.start()
            print(json.dumps(measure(server.url, quick=quick, rounds=7, batch_ns=8e6), indent=1))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
