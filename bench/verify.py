"""Verification cost side by side: agentcaps, pymacaroons and PyJWT at 4, 8, 16 and 32 caveats (issue 2).

    python bench/verify.py            # full run, a few minutes
    python bench/verify.py --quick    # well under a minute
    python bench/verify.py --profile  # cProfile of agentcaps' verify at 8 caveats, no table

Every candidate makes the same decision on the same request (resource
crm/contacts/42, action read, purpose sync) against tokens carrying the same
caveats, and every one of them must allow it before anything is timed. See
bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import itertools
import os
import pstats
import re
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jwt
import msgpack
from pymacaroons import MACAROON_V2, Macaroon
from pymacaroons import Verifier as MacaroonVerifier
from pymacaroons.exceptions import MacaroonException

import agentcaps
from agentcaps.config import Settings
from agentcaps.revocation import Revocation, RevocationIndex, RevocationKind

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

CAVEAT_COUNTS = (4, 8, 16, 32)
# principal, agent, resources, actions, purposes, expires: the fewest agentcaps allows with.
MANDATORY = 6
RESOURCE, ACTION, PURPOSE = "crm/contacts/42", "read", "sync"
AUDIENCE = "gateway"
TARGETS = {"pymacaroons": 5.0, "PyJWT": 1.5}  # issue 2, at 8 caveats, full decision
TARGET_CAVEATS = 8
REVOCATION_ENTRIES = 1000  # unrelated entries in the index, so that it is not trivially empty
COLD_POOL_MIN = 2000
USERS = itertools.count()  # cold tokens are for user0, user1, …: never the same user twice in a run


# --- the caveats every candidate carries -------------------------------------
#
# A logical caveat is (kind, value). The six mandatory ones come first, then
# attenuations that narrow the token but still allow the request: first a
# delegation and an audience (what a gateway in front of a tool typically
# sees), then narrower resources, actions, another delegation, purposes, in turn.

Caveat = tuple[str, Any]

MINTED: list[Caveat] = [
    ("principal", ("acme", "alice")),
    ("agent", "planner"),
    ("resources", ("crm/**",)),
    ("actions", ("read", "write")),
    ("purposes", ("sync", "report")),
    ("expires", None),  # filled in per token
]
# At 4 caveats the baselines carry these; agentcaps cannot allow anything with
# fewer than its six mandatory caveats, so its "4" row is its 6-caveat minimum.
FOUR: list[Caveat] = [MINTED[0], MINTED[2], MINTED[3], MINTED[5]]


def extras(count: int) -> list[Caveat]:
    """`count` narrowing attenuations that still allow the request."""
    cycle: list[Caveat] = [
        ("resources", ("crm/contacts/**",)),
        ("actions", ("read",)),
        ("delegate", None),
        ("purposes", ("sync",)),
    ]
    out: list[Caveat] = []
    for k in range(count):
        if k == 0:
            out.append(("delegate", "fetcher"))
        elif k == 1:
            out.append(("audience", (AUDIENCE,)))
        else:
            kind, value = cycle[(k - 2) % len(cycle)]
            out.append((kind, f"tool{k}" if kind == "delegate" else value))
    return out


def logical_caveats(n: int) -> list[Caveat]:
    """The caveats a baseline token carries at caveat count `n`."""
    if n < MANDATORY:
        assert n == len(FOUR), n
        return list(FOUR)
    return MINTED + extras(n - MANDATORY)


def agentcaps_caveat_count(n: int) -> int:
    return max(n, MANDATORY)


@functools.cache
def _glob_pattern(glob: str) -> re.Pattern[str]:
    # The same pattern language as agentcaps (`*` one segment, `**` any number),
    # compiled once per glob: the baselines get the cheapest reasonable matcher.
    parts = []
    for segment in glob.split("/"):
        if segment == "**":
            parts.append("(?:/[^/]+)*")
        elif segment == "*":
            parts.append("/[^/]+")
        else:
            parts.append("/" + re.escape(segment))
    return re.compile("".join(parts))


def glob_match(glob: str, resource: str) -> bool:
    return _glob_pattern(glob).fullmatch("/" + resource) is not None


# --- agentcaps ---------------------------------------------------------------


def _attenuation_batches(caveats: Sequence[Caveat]) -> Iterator[dict[str, Any]]:
    """attenuate() keyword sets, each adding at most one caveat of a kind."""
    option = {
        "resources": "resources",
        "actions": "actions",
        "purposes": "purposes",
        "audience": "audience",
        "delegate": "delegate_to",
    }
    batch: dict[str, Any] = {}
    for kind, value in caveats:
        name = option[kind]
        if name in batch:
            yield batch
            batch = {}
        batch[name] = value if kind == "delegate" else list(value)
    if batch:
        yield batch


def agentcaps_token(minter: agentcaps.Minter, n: int, ttl: int, user: str = "alice") -> str:
    """A token with `max(n, 6)` caveats: minted with the six mandatory ones, then attenuated."""
    token = minter.mint(
        customer="acme",
        user=user,
        agent="planner",
        resources=["crm/**"],
        actions=["read", "write"],
        purposes=["sync", "report"],
        ttl=ttl,
    )
    for options in _attenuation_batches(extras(agentcaps_caveat_count(n) - MANDATORY)):
        token = agentcaps.attenuate(token, **options)
    return token


def revocation_index(now: int) -> RevocationIndex:
    """An index holding unrelated entries of every kind a token is checked against."""
    index = RevocationIndex()
    for i in range(REVOCATION_ENTRIES):
        kind = (RevocationKind.TOKEN, RevocationKind.DELEGATION, RevocationKind.AGENT)[i % 3]
        subject = (secrets.token_hex(16),) if kind is not RevocationKind.AGENT else (f"agent{i}",)
        entry = Revocation(kind, subject, now, now + 3600)
        index.apply(entry.field(), entry.value())
    user = Revocation(RevocationKind.USER, ("acme", "mallory"), now, now + 3600)
    index.apply(user.field(), user.value())
    return index


def index_verifier(keys: agentcaps.KeyStore) -> agentcaps.Verifier:
    """A Verifier judging revocations against an in-process index, as a replica does."""
    # Verifier only ever calls `check`, which is all a RevocationIndex has.
    index: Any = revocation_index(int(time.time()))
    return agentcaps.Verifier(keys, index, audience=AUDIENCE)


def agentcaps_run(verifier: agentcaps.Verifier, supply: Any) -> Any:
    """run(loops): verify `loops` tokens drawn from `supply(loops)`."""

    def run(loops: int) -> int:
        tokens = supply(loops)
        verify = verifier.verify
        start = time.perf_counter_ns()
        for token in tokens:
            verify(token, resource=RESOURCE, action=ACTION, purpose=PURPOSE)
        return time.perf_counter_ns() - start

    return run


class Pool:
    """Distinct tokens handed out once each, so no token is ever verified twice while timed."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.used = 0

    def __call__(self, loops: int) -> list[str]:
        if self.used + loops > len(self.tokens):
            raise RuntimeError("the cold pool ran out: raise its size")
        out = self.tokens[self.used : self.used + loops]
        self.used += loops
        return out


# --- pymacaroons -------------------------------------------------------------


def macaroon_text(kind: str, value: Any, now: int, ttl: int) -> str:
    if kind == "principal":
        return f"principal = {value[0]}/{value[1]}"
    if kind == "agent":
        return f"agent = {value}"
    if kind == "expires":
        return f"expires < {now + ttl}"
    if kind == "delegate":
        return f"delegate = {value} {secrets.token_hex(16)}"
    return f"{kind} = {' '.join(value)}"


def macaroon_token(key: bytes, caveats: Sequence[Caveat], now: int, ttl: int) -> str:
    """A pymacaroons V2 token with the same caveats as text, and an identifier like ours."""
    identifier = msgpack.packb([1, "k" + secrets.token_hex(8), secrets.token_bytes(16), now])
    m = Macaroon(location="", identifier=identifier, key=key, version=MACAROON_V2)
    for kind, value in caveats:
        m.add_first_party_caveat(macaroon_text(kind, value, now, ttl))
    return str(m.serialize())


class TextCaveats:
    """A pymacaroons general caveat checker making agentcaps' decision on text caveats."""

    __slots__ = ("action", "agent", "chain", "now", "principal", "purpose", "resource")

    def __init__(self, now: float, resource: str, action: str, purpose: str | None) -> None:
        self.now = now
        self.resource, self.action, self.purpose = resource, action, purpose
        self.principal: str | None = None
        self.agent: str | None = None
        self.chain: list[str] = []

    def __call__(self, predicate: str) -> bool:
        name, op, value = predicate.split(" ", 2)
        if name == "expires":
            return op == "<" and self.now < int(value)
        if op != "=":
            return False
        if name == "resources":
            return any(glob_match(g, self.resource) for g in value.split(" "))
        if name == "actions":
            return self.action in value.split(" ")
        if name == "purposes":
            return self.purpose is None or self.purpose in value.split(" ")
        if name == "delegate":
            self.chain.append(value.split(" ", 1)[0])
            return True
        if name == "principal":
            if self.principal is None:
                self.principal = value
            return self.principal == value
        if name == "agent":
            if self.agent is None and not self.chain:
                self.agent = value
                return True
            return False
        return False  # audience is satisfied exactly, anything else is unknown


def macaroon_decide(
    serialized: str, key: bytes, resource: str = RESOURCE, action: str = ACTION
) -> bool:
    """Deserialize, then verify chain and caveats with pymacaroons; raises when denied."""
    m = Macaroon.deserialize(serialized)
    v = MacaroonVerifier()
    v.satisfy_exact(f"audience = {AUDIENCE}")
    v.satisfy_general(TextCaveats(time.time(), resource, action, PURPOSE))
    return bool(v.verify(m, key))


def macaroon_run(serialized: str, key: bytes) -> Any:
    def run(loops: int) -> int:
        tokens = [serialized] * loops
        decide = macaroon_decide
        start = time.perf_counter_ns()
        for token in tokens:
            decide(token, key)
        return time.perf_counter_ns() - start

    return run


def macaroon_denies(serialized: str, key: bytes, **request: str) -> bool:
    try:
        macaroon_decide(serialized, key, **request)
    except MacaroonException:  # pymacaroons signals "not met" by raising
        return True
    return False


# --- PyJWT -------------------------------------------------------------------


def jwt_claims(caveats: Sequence[Caveat], now: int, ttl: int) -> dict[str, Any]:
    """One claim per caveat: registered claims where they exist, numbered ones for repeats."""
    claims: dict[str, Any] = {}
    counts: dict[str, int] = {}
    names = {"resources": "res", "actions": "scp", "purposes": "pur", "delegate": "dlg"}
    for kind, value in caveats:
        if kind == "principal":
            claims["sub"] = f"{value[0]}/{value[1]}"
        elif kind == "agent":
            claims["azp"] = value
        elif kind == "expires":
            claims["exp"] = now + ttl
        elif kind == "audience":
            assert "aud" not in claims
            claims["aud"] = list(value)
        else:
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{names[kind]}{counts[kind]}"
            claims[name] = [value, secrets.token_hex(16)] if kind == "delegate" else list(value)
    assert len(claims) == len(caveats)
    return claims


def jwt_decide(
    token: str, key: bytes, audience: str | None, resource: str = RESOURCE, action: str = ACTION
) -> bool:
    """PyJWT HS256 decode (signature, exp, nbf, aud), then the same scope checks in Python."""
    claims = jwt.decode(
        token, key, algorithms=["HS256"], audience=audience, options={"require": ["exp", "sub"]}
    )
    chain = [claims.get("azp")]
    for name, value in claims.items():
        kind = name[:3]
        if kind == "res":
            if not any(glob_match(g, resource) for g in value):
                return False
        elif kind == "scp":
            if action not in value:
                return False
        elif kind == "pur":
            if PURPOSE not in value:
                return False
        elif kind == "dlg":
            chain.append(value[0])
    return True


def jwt_run(token: str, key: bytes, audience: str | None) -> Any:
    def run(loops: int) -> int:
        tokens = [token] * loops
        decide = jwt_decide
        start = time.perf_counter_ns()
        for t in tokens:
            decide(t, key, audience)
        return time.perf_counter_ns() - start

    return run


# --- the run -----------------------------------------------------------------


def connect_memory() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return agentcaps.connect("memory://", settings=Settings(master_key=os.urandom(32)))


# More candidates for measure() to time alongside its own four (bench/run.py adds
# biscuit-python, the bare HMAC chain, a warm signature cache): called with the
# caveat count and the warm agentcaps token, it returns them each already checked
# to allow the request; measure sizes their batches unless their loops are set.
Extra = Callable[[int, str], list[Candidate]]


def measure(
    n: int,
    rounds: int,
    batch_ns: float,
    verifier: agentcaps.Verifier,
    minter: agentcaps.Minter,
    extra: Extra | None = None,
) -> dict[str, Any]:
    """Time the four candidates (and `extra`'s) at caveat count `n`; every one must allow first."""
    now = int(time.time())
    ttl = 3000
    key = secrets.token_bytes(32)
    request = {"resource": RESOURCE, "action": ACTION, "purpose": PURPOSE}

    warm = agentcaps_token(minter, n, ttl)
    decision = verifier.verify(warm, **request)
    assert decision.allowed, decision
    assert len(agentcaps.inspect(warm)["caveats"]) == agentcaps_caveat_count(n)  # type: ignore[arg-type]
    assert (
        verifier.verify(warm, resource="hr/payroll", action=ACTION).reason.value
        == "resource_denied"
    )

    logical = logical_caveats(n)
    macaroon = macaroon_token(key, logical, now, ttl)
    assert macaroon_decide(macaroon, key)
    assert len(Macaroon.deserialize(macaroon).caveats) == n
    assert macaroon_denies(macaroon, key, resource="hr/payroll")
    assert macaroon_denies(macaroon, key, action="delete")

    audience = AUDIENCE if any(kind == "audience" for kind, _ in logical) else None
    token = jwt.encode(jwt_claims(logical, now, ttl), key, algorithm="HS256")
    assert jwt_decide(token, key, audience)
    assert not jwt_decide(token, key, audience, resource="hr/payroll")
    assert not jwt_decide(token, key, audience, action="delete")

    # Cold: never the same token twice, and every token carries caveats no
    # other one has (its user's principal, its delegation ids; its expiry is
    # one of 3000), so caches keyed by a caveat's bytes miss on those. The
    # pool is sized from a calibration batch of its own, minted before timing.
    def fresh(count: int) -> list[str]:
        return [
            agentcaps_token(minter, n, 600 + i % 3000, user=f"user{i}")
            for i in (next(USERS) for _ in range(count))
        ]

    sample = fresh(1)[0]
    assert verifier.verify(sample, **request).allowed
    calibration = agentcaps_run(verifier, Pool(fresh(400)))
    estimate_ns(calibration, 200)  # the first batch after minting runs slow; discard it
    cold_estimate = estimate_ns(calibration, 200)
    cold_loops = loops_for(cold_estimate, batch_ns)
    minted = time.perf_counter()
    pool = Pool(fresh(max(COLD_POOL_MIN, cold_loops * rounds)))
    mint_seconds = time.perf_counter() - minted

    candidates = [
        Candidate("agentcaps warm", agentcaps_run(verifier, lambda loops: [warm] * loops)),
        Candidate("agentcaps cold", agentcaps_run(verifier, pool), loops=cold_loops),
        Candidate("pymacaroons", macaroon_run(macaroon, key)),
        Candidate("PyJWT", jwt_run(token, key, audience)),
    ]
    if extra is not None:
        candidates += extra(n, warm)
    for c in candidates:
        if c.name != "agentcaps cold" and c.loops <= 1:
            c.loops = loops_for(estimate_ns(c.run), batch_ns)
    interleave(candidates, rounds)

    # Every pool token that was timed must have been allowed (checked after, so
    # that the check itself warms nothing before timing).
    denied = [t for t in pool.tokens[: pool.used] if not verifier.verify(t, **request).allowed]
    assert not denied, f"{len(denied)} cold tokens were denied"

    by_name = {c.name: c for c in candidates}
    return {
        "caveats": n,
        "agentcaps_caveats": agentcaps_caveat_count(n),
        "us": {c.name: c.median_ns / 1000 for c in candidates},
        "us_min": {c.name: min(c.samples) / 1000 for c in candidates},
        "us_max": {c.name: max(c.samples) / 1000 for c in candidates},
        "loops": {c.name: c.loops for c in candidates},
        "cold_pool": len(pool.tokens),
        "cold_pool_mint_seconds": round(mint_seconds, 2),
        "speedup": {
            f"{base} / {mode}": by_name[base].median_ns / by_name[f"agentcaps {mode}"].median_ns
            for base in ("pymacaroons", "PyJWT")
            for mode in ("warm", "cold")
        },
    }


def render(rows: list[dict[str, Any]], targets: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    header = [
        "caveats",
        "agentcaps warm µs",
        "agentcaps cold µs",
        "pymacaroons µs",
        "PyJWT µs",
        "× vs pymacaroons (warm / cold)",
        "× vs PyJWT (warm / cold)",
    ]
    body = []
    for row in rows:
        us, sp = row["us"], row["speedup"]
        label = str(row["caveats"])
        if row["agentcaps_caveats"] != row["caveats"]:
            label += " ¹"
        body.append(
            [
                label,
                f"{us['agentcaps warm']:.1f}",
                f"{us['agentcaps cold']:.1f}",
                f"{us['pymacaroons']:.1f}",
                f"{us['PyJWT']:.1f}",
                f"{sp['pymacaroons / warm']:.1f} / {sp['pymacaroons / cold']:.1f}",
                f"{sp['PyJWT / warm']:.2f} / {sp['PyJWT / cold']:.2f}",
            ]
        )
    lines = [
        (
            f"Verification, µs per decision (median of {meta['rounds']} interleaved rounds; "
            f"Python {meta['machine']['python']}, {meta['machine']['cpus']} CPUs, "
            f"commit {meta['machine']['commit'] or '?'}{', --quick' if meta['quick'] else ''})"
        ),
        "",
        markdown_table(header, body),
        "",
        (
            "¹ agentcaps allows nothing with fewer than its 6 mandatory caveats: its 4-caveat row "
            "is a 6-caveat token; the baselines carry 4."
        ),
        "",
    ]
    lines += [f"- {t['line']}" for t in targets]
    return "\n".join(lines)


def evaluate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    row = next(r for r in rows if r["caveats"] == TARGET_CAVEATS)
    out = []
    for mode, what in (
        ("cold", "full decision, token new to the verifier"),
        ("warm", "same token again"),
    ):
        for base, wanted in TARGETS.items():
            got = row["speedup"][f"{base} / {mode}"]
            ok = got >= wanted
            out.append(
                {
                    "mode": mode,
                    "baseline": base,
                    "wanted": wanted,
                    "got": round(got, 2),
                    "pass": ok,
                    "line": f"{'PASS' if ok else 'FAIL'}  issue 2: {TARGET_CAVEATS} caveats, agentcaps "
                    f"{mode} ({what}) ≥ {wanted:g}× faster than {base}: {got:.2f}×",
                }
            )
    return out


def profile(n: int, seconds: float) -> None:
    """Print cProfile's top functions for agentcaps' verify at `n` caveats, warm and cold."""
    stores = connect_memory()
    minter = stores.minter()
    verifier = index_verifier(stores.keys)
    request = {"resource": RESOURCE, "action": ACTION, "purpose": PURPOSE}
    warm = agentcaps_token(minter, n, 3000)
    assert verifier.verify(warm, **request).allowed
    per_call = estimate_ns(agentcaps_run(verifier, lambda loops: [warm] * loops), 2000)
    count = int(seconds * 1e9 / per_call)
    cold = [
        agentcaps_token(minter, n, 600 + i % 3000, user=f"user{i}")
        for i in itertools.islice(USERS, max(2000, count // 3))
    ]
    for label, tokens in (("warm", [warm] * count), ("cold", cold)):
        prof = cProfile.Profile()
        verify = verifier.verify
        prof.enable()
        for token in tokens:
            verify(token, **request)
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime")
        print(
            f"\n== agentcaps verify, {n} caveats, {label}: {len(tokens)} calls, top by own time =="
        )
        stats.print_stats(14)
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-2600:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer, shorter rounds (well under a minute)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per caveat count")
    parser.add_argument("--batch-ms", type=float, help="target length of one timed batch")
    parser.add_argument(
        "--profile", action="store_true", help="profile agentcaps at 8 caveats instead"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args(argv)

    if args.profile:
        profile(TARGET_CAVEATS, 2.0)
        return 0

    rounds = args.rounds or (7 if args.quick else 25)
    batch_ns = (args.batch_ms or (8.0 if args.quick else 25.0)) * 1e6
    started = time.perf_counter()
    stores = connect_memory()
    minter = stores.minter()
    verifier = index_verifier(stores.keys)
    rows = []
    for n in CAVEAT_COUNTS:
        rows.append(measure(n, rounds, batch_ns, verifier, minter))
        print(f"  measured {n} caveats ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    stores.close()

    meta = {"quick": args.quick, "rounds": rounds, "batch_ms": batch_ns / 1e6, "machine": machine()}
    targets = evaluate(rows)
    text = render(rows, targets, meta)
    print(text)
    if not args.no_write:
        md, js = write_results("verify", text, {"meta": meta, "rows": rows, "targets": targets})
        print(
            f"\nwrote {md.relative_to(md.parent.parent.parent)} and {js.relative_to(js.parent.parent.parent)}"
        )
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
