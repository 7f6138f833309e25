"""What Cedar policies cost: the gateway policy (cached and uncached) next to a verification, and a mint decision (issue 5).

    python bench/policy.py            # about 20 s
    python bench/policy.py --quick    # a few seconds

The gateway policy is examples/policies/gateway (seven policies); the mint
policies are examples/policies (eleven) and the built-in default (two). The
request is a read of crm/contacts/42 for purpose sync with a token minted for
planner and delegated once to fetcher; every candidate must allow it before
anything is timed. "uncached" is a GatewayPolicy with its cache turned off,
which is what each distinct request costs the first time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import agentcaps
from agentcaps.config import Settings
from agentcaps.policy import (
    GatewayPolicy,
    MintGrant,
    MintIssuer,
    PolicyEngine,
    PolicyKind,
    PolicyStore,
    apply_gateway_policy,
)
from agentcaps.revocation import RevocationIndex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (
    Candidate,
    estimate_ns,
    interleave,
    loops_for,
    machine,
    markdown_table,
    write_results,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
REQUEST = {"resource": "crm/contacts/42", "action": "read", "purpose": "sync"}


def timed(call: Callable[[], Any]) -> Callable[[int], int]:
    """run(loops): call `call` loops times; the ns it took."""

    def run(loops: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(loops):
            call()
        return time.perf_counter_ns() - start

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args(argv)
    rounds = 7 if args.quick else 25
    batch_ns = (8.0 if args.quick else 25.0) * 1e6

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stores = agentcaps.connect("memory://", settings=Settings(master_key=os.urandom(32)))
    token = stores.minter().mint(
        customer="acme",
        user="alice",
        agent="planner",
        resources=["crm/**"],
        actions=["read", "write"],
        purposes=["sync", "report"],
        ttl=3000,
    )
    token = agentcaps.attenuate(token, delegate_to="fetcher")
    # Revocations judged against an in-process index, as a replica does.
    index: Any = RevocationIndex()
    verifier = agentcaps.Verifier(stores.keys, index)
    now = int(time.time())
    decision = verifier.verify(token, **REQUEST)
    assert decision.allowed and decision.chain == ("planner", "fetcher"), decision

    gateway_store = PolicyStore.from_dir(EXAMPLES / "gateway", PolicyKind.GATEWAY)
    cached = GatewayPolicy(gateway_store)
    uncached = GatewayPolicy(gateway_store, cache_size=0)
    check = (decision, REQUEST["resource"], REQUEST["action"], REQUEST["purpose"], now)
    assert cached.check(*check).allowed and uncached.check(*check).allowed

    def verify_then_gateway() -> None:
        d = verifier.verify(token, **REQUEST)
        apply_gateway_policy(cached, d, now=now, **REQUEST)

    assert apply_gateway_policy(cached, decision, now=now, **REQUEST).decision.allowed

    examples = PolicyEngine.from_dir(EXAMPLES)
    builtin = PolicyEngine.default()
    grant = MintGrant(
        "ab" * 16, "acme", "alice", "planner", ("crm/contacts/*",), ("read",), ("sync",), 600
    )
    acme = MintIssuer.issuer("acme")
    assert examples.authorize_mint(acme, grant, now).allowed
    assert builtin.authorize_mint(acme, grant, now).allowed

    candidates = [
        Candidate("verify (warm token)", timed(lambda: verifier.verify(token, **REQUEST))),
        Candidate("gateway policy, cached", timed(lambda: cached.check(*check))),
        Candidate("gateway policy, uncached", timed(lambda: uncached.check(*check))),
        Candidate(
            "apply_gateway_policy, cached",
            timed(lambda: apply_gateway_policy(cached, decision, now=now, **REQUEST)),
        ),
        Candidate("verify + gateway policy, cached", timed(verify_then_gateway)),
        Candidate(
            "mint policy, examples (11 policies)",
            timed(lambda: examples.authorize_mint(acme, grant, now)),
        ),
        Candidate(
            "mint policy, built-in (2 policies)",
            timed(lambda: builtin.authorize_mint(acme, grant, now)),
        ),
    ]
    for c in candidates:
        estimate_ns(c.run, 50)  # warm up
        c.loops = loops_for(estimate_ns(c.run, 200), batch_ns)
    started = time.perf_counter()
    interleave(candidates, rounds)
    stores.close()

    us = {c.name: c.median_ns / 1000 for c in candidates}
    verify_us = us["verify (warm token)"]
    rows = [
        [
            c.name,
            f"{us[c.name]:.2f}",
            f"{min(c.samples) / 1000:.2f}",
            f"{max(c.samples) / 1000:.2f}",
            f"{us[c.name] / verify_us:.2f}",
        ]
        for c in candidates
    ]
    meta = {"quick": args.quick, "rounds": rounds, "batch_ms": batch_ns / 1e6, "machine": machine()}
    # The step the service adds after verify, timed on its own: the difference
    # of two noisy medians (verify + policy, verify) would mostly measure noise.
    overhead = us["apply_gateway_policy, cached"] / verify_us
    header = (
        f"µs per call, median of {rounds} interleaved rounds (min, max of the rounds); "
        "last column: relative to one warm verification."
    )
    summary = (
        f"The cached gateway-policy step (apply_gateway_policy) adds {overhead:.0%} "
        "to a warm verification; an uncached decision costs "
        f"{us['gateway policy, uncached'] / verify_us:.1f}× a verification."
    )
    where = meta["machine"]
    footer = f"({where['python']}, {where['cpus']} CPUs, commit {where['commit'] or 'unknown'})"
    table = markdown_table(["", "µs", "min", "max", "× verify"], rows)
    text = f"{header}\n\n{table}\n\n{summary}\n{footer}"
    print(text)
    if not args.no_write:
        md, js = write_results(
            "policy", text, {"meta": meta, "us": us, "cached_overhead": overhead}
        )
        print(f"\nwrote {md.name} and {js.name} in bench/results/")
    print(f"({time.perf_counter() - started:.0f} s timed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
