"""Mint throughput: mint_with_policy with the built-in default policy and with examples/policies (issue 7).

One thread minting one token after another, on memory:// (the embedded store,
fakeredis in-process) and on a real redis-server over loopback: each mint
reads the customer's active key id from the store (a rotation elsewhere takes
effect on the next mint), so on a real Redis every mint is one round trip.
Candidates, timed in interleaved rounds:

- `Minter.issue`: the token alone, no policy (the reference);
- `mint_with_policy`, the built-in default policy (two policies);
- `mint_with_policy`, examples/policies (eleven policies: platform, customers, purposes).

Every request is the same grant, which both policies allow: issuer acme mints
for acme/alice, agent planner, crm/contacts/*, read, purpose sync, 600 s.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import Candidate, estimate_ns, interleave, loops_for

import agentcaps
from agentcaps.config import Settings
from agentcaps.policy import MintIssuer, PolicyEngine, mint_with_policy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
GRANT: dict[str, Any] = {
    "customer": "acme",
    "user": "alice",
    "agent": "planner",
    "resources": ["crm/contacts/*"],
    "actions": ["read"],
    "purposes": ["sync"],
    "ttl": 600,
}


def _timed(call: Callable[[], Any]) -> Callable[[int], int]:
    def run(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            call()
        return time.perf_counter_ns() - start

    return run


def measure(redis_url: str | None, *, rounds: int, batch_ns: float) -> dict[str, Any]:
    """Mints per second on memory:// and (given a URL) a real Redis; with no policy, default, examples."""
    engines = {
        "default policy": PolicyEngine.default(),
        "examples/policies": PolicyEngine.from_dir(EXAMPLES),
    }
    issuer = MintIssuer.issuer("acme")
    stores_by_name: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stores_by_name["memory://"] = agentcaps.connect(
            "memory://", settings=Settings(master_key=secrets.token_bytes(32))
        )
    if redis_url is not None:
        stores_by_name["redis-server"] = agentcaps.connect(
            redis_url, settings=Settings(redis_url=redis_url, master_key=secrets.token_bytes(32))
        )
    candidates: list[Candidate] = []
    try:
        for store_name, stores in stores_by_name.items():
            minter = stores.minter()
            verifier = stores.verifier()

            def plain(minter: Any = minter) -> Any:
                return minter.issue(**GRANT)

            calls: dict[str, Callable[[], Any]] = {"Minter.issue, no policy": plain}
            for engine_name, engine in engines.items():

                def policed(minter: Any = minter, engine: PolicyEngine = engine) -> Any:
                    return mint_with_policy(minter, engine, issuer, **GRANT)[0]

                calls[f"mint_with_policy, {engine_name}"] = policed
            for name, call in calls.items():
                minted = call()
                decision = verifier.verify(minted.token, resource="crm/contacts/42", action="read")
                assert decision.allowed, (name, decision)
                c = Candidate(f"{name} @ {store_name}", _timed(call))
                estimate_ns(c.run, 20)
                c.loops = loops_for(estimate_ns(c.run, 50), batch_ns, least=10)
                candidates.append(c)
        interleave(candidates, rounds)
    finally:
        for stores in stores_by_name.values():
            stores.close()
    rows = []
    for c in candidates:
        name, _, store = c.name.partition(" @ ")
        us = c.median_ns / 1000
        rows.append(
            {
                "what": name,
                "store": store,
                "us": us,
                "us_min": min(c.samples) / 1000,
                "us_max": max(c.samples) / 1000,
                "per_second": 1e6 / us,
            }
        )
    return {"rounds": rounds, "threads": 1, "rows": rows}
