"""The issue 7 benchmark suite: one table, the targets as PASS/FAIL, results in bench/results/.

    python bench/run.py            # full run, under ten minutes
    python bench/run.py --quick    # under a minute; revocation scale stops at 100 000
    python bench/run.py --parts verify,mint        # a subset
    python bench/run.py --profile-http             # py-spy on /v1/authz under load, no table

Five parts (bench/README.md says what each column means):

1. verify: in-process verification at 4, 8, 16, 32 caveats: agentcaps (full
   decision, warm and cold, and with a warm signature cache where Verifier
   has one), pymacaroons, PyJWT, biscuit-python, the bare HMAC chain.
2. scale: verification time and memory with 0 … 1 000 000 revocation entries,
   replica and direct mode (bench/scale.py).
3. http: forward-auth under keep-alive load from wrk, one uvicorn worker and
   two: agentcaps /v1/authz, a bare Starlette endpoint, PyJWT + Redis
   (bench/forward_auth.py, bench/apps.py).
4. propagation: four replica-mode verifier processes, acknowledgement to the
   last one denying (bench/propagation.py).
5. mint: mint_with_policy with the default policy and examples/policies
   (bench/mint.py).

Every figure a target judges is a ratio of two candidates measured side by
side in this run; nothing here is a test. Every server this starts (redis,
uvicorn, wrk, verifier processes) is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# This checkout's agentcaps and tests.servers, here and in every process started from here.
sys.path[:0] = [str(BENCH), str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from timing import Candidate, machine, markdown_table, write_results

import agentcaps

PARTS = ("verify", "scale", "http", "propagation", "mint")
CACHE_OPTION = "signature_cache_size"
CACHE_SIZE = 4096

# --- the targets of issue 7 -----------------------------------------------------------
TARGET_CAVEATS = 8
SPEEDUP = {"pymacaroons": 6.0, "PyJWT": 2.0, "biscuit": 10.0}
CACHE_VS_JWT = 5.0
SLOPE_VS_DIGEST = 1.5
SCALE_DRIFT = 0.10
BYTES_PER_ENTRY = 150.0
HTTP_VS_BARE = 0.70
HTTP_VS_JWT = 1.5
TWO_WORKERS = 1.7
PROPAGATION_P99_MS = 20.0


# --- part 1: in-process verification -----------------------------------------------------


def has_signature_cache() -> bool:
    """True when Verifier takes `signature_cache_size` (issue 7's warm verification cache)."""
    return CACHE_OPTION in inspect.signature(agentcaps.Verifier).parameters


def part_verify(quick: bool) -> dict[str, Any]:
    import verify
    from baselines import biscuit_candidate, hmac_chain_run, hmac_digest_run

    rounds = 7 if quick else 25
    batch_ns = (8.0 if quick else 25.0) * 1e6
    stores = verify.connect_memory()
    try:
        minter = stores.minter()
        index: Any = verify.revocation_index(int(time.time()))
        verifier = agentcaps.Verifier(stores.keys, index, audience=verify.AUDIENCE)
        # Built by keyword name, so that this runs before and after Verifier has the option.
        cache: dict[str, Any] = {CACHE_OPTION: CACHE_SIZE}
        cached = (
            agentcaps.Verifier(stores.keys, index, audience=verify.AUDIENCE, **cache)
            if has_signature_cache()
            else None
        )
        request = {"resource": verify.RESOURCE, "action": verify.ACTION, "purpose": verify.PURPOSE}

        def extra(n: int, warm: str) -> list[Candidate]:
            out = []
            if cached is not None:
                assert cached.verify(warm, **request).allowed
                wrong = cached.verify(warm, **{**request, "resource": "hr/payroll"})
                assert wrong.reason.value == "resource_denied", wrong  # caveats judged every call
                run = verify.agentcaps_run(cached, lambda loops: [warm] * loops)
                out.append(Candidate("agentcaps warm cache", run))
            name, run = biscuit_candidate(n)
            out.append(Candidate(name, run))
            key = stores.keys.get(str(agentcaps.inspect(warm)["key_id"]))
            assert key is not None
            out.append(Candidate("HMAC chain", hmac_chain_run(key.derived, warm)))
            out.append(Candidate("hmac.digest", hmac_digest_run(warm)))
            return out

        rows = []
        for n in verify.CAVEAT_COUNTS:
            rows.append(verify.measure(n, rounds, batch_ns, verifier, minter, extra))
            print(f"  verify: {n} caveats measured", file=sys.stderr)
    finally:
        stores.close()

    # Per added caveat: the slope from the fewest caveats to the most, each
    # candidate over the caveats its tokens really carry (agentcaps' "4" is 6).
    first, last = rows[0], rows[-1]
    slopes = {}
    for name in last["us"]:
        if name == "hmac.digest":
            continue
        counted = name.startswith("agentcaps") or name == "HMAC chain"
        lo = first["agentcaps_caveats"] if counted else first["caveats"]
        hi = last["agentcaps_caveats"] if counted else last["caveats"]
        slopes[name] = (last["us"][name] - first["us"][name]) / (hi - lo)
    digest = sorted(r["us"]["hmac.digest"] for r in rows)[len(rows) // 2]
    return {
        "rounds": rounds,
        "batch_ms": batch_ns / 1e6,
        "signature_cache": has_signature_cache(),
        "rows": rows,
        "slope_us": slopes,
        "hmac_digest_us": digest,
    }


# --- parts 2 to 5 -----------------------------------------------------------------------


def part_scale(quick: bool, workdir: Path) -> dict[str, Any]:
    import scale

    from tests.servers import RedisServer

    server = RedisServer(workdir)
    try:
        server.start()
        return scale.measure(
            server.url,
            quick=quick,
            rounds=7 if quick else 15,
            batch_ns=(8.0 if quick else 20.0) * 1e6,
        )
    finally:
        server.stop()


def part_http(quick: bool, workdir: Path) -> dict[str, Any]:
    import forward_auth

    from tests.servers import RedisServer

    server = RedisServer(workdir)
    try:
        server.start()
        return forward_auth.measure(
            server.url, workdir, seconds=2 if quick else 5, rounds=1 if quick else 3, warmup=1,
            # --quick keeps to a minute: the inline Verifier with one worker only.
            skip=(("verifier-inline", 2),) if quick else (),
        )  # fmt: skip
    finally:
        server.stop()


def part_propagation(quick: bool, workdir: Path) -> dict[str, Any]:
    import propagation

    from tests.servers import RedisServer

    server = RedisServer(workdir)
    try:
        server.start()
        return propagation.run_mode(
            "replica", 40 if quick else 200, server.url, secrets.token_hex(32), workdir, 0.0002
        )
    finally:
        server.stop()


def part_mint(quick: bool, workdir: Path) -> dict[str, Any]:
    import mint

    from tests.servers import RedisServer

    server = RedisServer(workdir)
    try:
        server.start()
        return mint.measure(
            server.url, rounds=7 if quick else 25, batch_ns=(8.0 if quick else 25.0) * 1e6
        )
    finally:
        server.stop()


# --- targets ---------------------------------------------------------------------------------


def _gap(got: float, wanted: float, percent: bool, word: str) -> str:
    """How far a failed figure is from its target: percentage points for a share, else relative."""
    if percent:
        return f" — {abs(got - wanted) * 100:.1f} points {word} (target {wanted:.0%})"
    if wanted == 0:
        return f" — {got:g} {word} (target 0)"
    relative = (1 - got / wanted) if word == "short" else (got / wanted - 1)
    return f" — {word} by {relative * 100:.0f}% (target {wanted:g})"


def _at_least(
    what: str, got: float, wanted: float, shown: str, *, percent: bool = False
) -> dict[str, Any]:
    ok = got >= wanted
    short = "" if ok else _gap(got, wanted, percent, "short")
    return {"what": what, "got": got, "wanted": f">= {wanted:g}", "pass": ok,
            "line": f"{'PASS' if ok else 'FAIL'}  {what}: {shown}{short}"}  # fmt: skip


def _at_most(
    what: str, got: float, wanted: float, shown: str, *, percent: bool = False
) -> dict[str, Any]:
    ok = got <= wanted
    over = "" if ok else _gap(got, wanted, percent, "over")
    return {"what": what, "got": got, "wanted": f"<= {wanted:g}", "pass": ok,
            "line": f"{'PASS' if ok else 'FAIL'}  {what}: {shown}{over}"}  # fmt: skip


def _missing(what: str, why: str) -> dict[str, Any]:
    return {"what": what, "got": None, "pass": None, "line": f"N/A   {what}: {why}"}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "verify" in results:
        v = results["verify"]
        row = next(r for r in v["rows"] if r["caveats"] == TARGET_CAVEATS)
        us = row["us"]
        for mode, note in (("cold", ""), ("warm", " (same token again; for information)")):
            mine = us[f"agentcaps {mode}"]
            for base, wanted in SPEEDUP.items():
                got = us[base] / mine
                out.append(_at_least(
                    f"{TARGET_CAVEATS} caveats, agentcaps {mode}{note} ≥ {wanted:g}× faster than {base}",
                    got, wanted, f"{got:.2f}× ({mine:.1f} µs vs {us[base]:.1f} µs)",
                ))  # fmt: skip
        what = (
            f"{TARGET_CAVEATS} caveats, agentcaps warm cache ≥ {CACHE_VS_JWT:g}× faster than PyJWT"
        )
        if "agentcaps warm cache" in us:
            got = us["PyJWT"] / us["agentcaps warm cache"]
            shown = f"{got:.2f}× ({us['agentcaps warm cache']:.1f} µs vs {us['PyJWT']:.1f} µs)"
            out.append(_at_least(what, got, CACHE_VS_JWT, shown))
        else:
            out.append(_missing(what, f"n/a (not implemented: Verifier takes no {CACHE_OPTION})"))
        digest = v["hmac_digest_us"]
        for name in ("agentcaps cold", "agentcaps warm", "agentcaps warm cache"):
            if name in v["slope_us"]:
                got = v["slope_us"][name] / digest
                out.append(_at_most(
                    f"each added caveat, {name}, ≤ {SLOPE_VS_DIGEST:g}× one hmac.digest",
                    got, SLOPE_VS_DIGEST,
                    f"{got:.2f}× ({v['slope_us'][name]:.2f} µs per caveat, hmac.digest {digest:.2f} µs)",
                ))  # fmt: skip
    if "scale" in results:
        s = results["scale"]
        top = s["rows"][-1]
        label = f"{top['entries']:,}".replace(",", " ")
        note = (
            " (--quick stops at 100 000; the target is at 1 000 000)" if s["quick_stops_at"] else ""
        )
        for mode in ("replica", "direct"):
            drift = top[f"{mode}_vs_zero"] - 1
            shown = (
                f"{drift:+.1%} ({top[f'{mode}_us']:.1f} µs vs {s['rows'][0][f'{mode}_us']:.1f} µs)"
            )
            if len(s["rows"]) > 2:
                # At 0 entries the index skips its lookups: say how flat it is past the first entries.
                second = s["rows"][1]
                growth = top[f"{mode}_us"] / second[f"{mode}_us"] - 1
                shown += f"; {growth:+.1%} against {_count(second['entries'])} entries"
            out.append(_at_most(
                f"{mode}: verification at {label} entries within {SCALE_DRIFT:.0%} of 0{note}",
                abs(drift), SCALE_DRIFT, shown, percent=True,
            ))  # fmt: skip
        per = top.get("replica_bytes_per_entry")
        if per is not None:
            out.append(_at_most(
                f"replica index ≤ {BYTES_PER_ENTRY:g} bytes per entry (tracemalloc, {label} entries){note}",
                per, BYTES_PER_ENTRY, f"{per:.0f} B",
            ))  # fmt: skip
    if "http" in results:
        h = {(r["app"], r["workers"]): r for r in results["http"]["results"]}
        one = h[("agentcaps", 1)]
        got = one["rps"] / h[("bare", 1)]["rps"]
        out.append(_at_least(
            f"forward-auth, 1 worker: agentcaps ≥ {HTTP_VS_BARE:.0%} of bare Starlette's requests/s",
            got, HTTP_VS_BARE, f"{got:.0%} ({one['rps']:.0f} vs {h[('bare', 1)]['rps']:.0f} rps)",
            percent=True,
        ))  # fmt: skip
        got = one["rps"] / h[("jwt-redis", 1)]["rps"]
        out.append(_at_least(
            f"forward-auth, 1 worker: agentcaps ≥ {HTTP_VS_JWT:g}× PyJWT + Redis",
            got, HTTP_VS_JWT, f"{got:.2f}× ({one['rps']:.0f} vs {h[('jwt-redis', 1)]['rps']:.0f} rps)",
        ))  # fmt: skip
        errors = sum(r["errors"] for r in results["http"]["results"] if r["app"] == "agentcaps")
        out.append(_at_most(
            "forward-auth: agentcaps answers every request 200 (zero errors)", errors, 0,
            f"{errors} errors",
        ))  # fmt: skip
        if ("agentcaps", 2) in h:
            two = h[("agentcaps", 2)]
            got = two["rps"] / one["rps"]
            out.append(_at_least(
                f"forward-auth: agentcaps with two workers ≥ {TWO_WORKERS:g}× one",
                got, TWO_WORKERS, f"{got:.2f}× ({two['rps']:.0f} vs {one['rps']:.0f} rps)",
            ))  # fmt: skip
    if "propagation" in results:
        p = results["propagation"]
        d = p["ack_to_last_deny_ms"]
        if d:
            out.append(_at_most(
                f"propagation to {p['verifiers']} replica verifiers, p99 ≤ {PROPAGATION_P99_MS:g} ms",
                d["p99"], PROPAGATION_P99_MS,
                f"{d['p99']:.2f} ms ({p['measured']} revocations, {len(p['errors'])} errors)",
            ))  # fmt: skip
        else:
            out.append(_missing("propagation p99", f"no revocation measured: {p['errors'][:1]}"))
    return out


# --- the table -------------------------------------------------------------------------------


def _n(value: float) -> str:
    """A figure with sensible precision: 3 significant digits, no exponent."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{digits}f}".replace(",", " ")


def _count(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    if "verify" in results:
        v = results["verify"]
        for r in v["rows"]:
            us = r["us"]
            mark = " ¹" if r["agentcaps_caveats"] != r["caveats"] else ""
            cache = us.get("agentcaps warm cache")
            mine = (
                f"cold {_n(us['agentcaps cold'])} · warm {_n(us['agentcaps warm'])} · warm cache "
            )
            mine += _n(cache) if cache is not None else "n/a"
            others = " · ".join(
                f"{b} {_n(us[b])}" for b in ("pymacaroons", "PyJWT", "biscuit", "HMAC chain")
            )
            ratios = " · ".join(
                f"{b} {us[b] / us['agentcaps cold']:.1f} / {us[b] / us['agentcaps warm']:.1f}"
                for b in ("pymacaroons", "PyJWT", "biscuit")
            )
            if cache is not None:
                ratios += f" · cache vs PyJWT {us['PyJWT'] / cache:.1f}"
            rows.append([
                "1 verify", f"{r['caveats']} caveats{mark}, µs per decision", mine, others,
                f"× faster (cold / warm): {ratios}",
            ])  # fmt: skip
        slope, digest = v["slope_us"], v["hmac_digest_us"]
        mine = " · ".join(
            f"{name.removeprefix('agentcaps ')} {slope[name]:.2f}"
            for name in ("agentcaps cold", "agentcaps warm", "agentcaps warm cache")
            if name in slope
        )
        others = f"hmac.digest {digest:.2f} · " + " · ".join(
            f"{b} {slope[b]:.2f}" for b in ("HMAC chain", "pymacaroons", "PyJWT", "biscuit")
        )
        ratio = " · ".join(
            f"{name.removeprefix('agentcaps ')} {slope[name] / digest:.1f}"
            for name in ("agentcaps cold", "agentcaps warm", "agentcaps warm cache")
            if name in slope
        )
        rows.append(["1 verify", "each added caveat, µs (slope 4 → 32)", mine, others,
                     f"÷ one hmac.digest: {ratio}"])  # fmt: skip
    if "scale" in results:
        s = results["scale"]
        zero = s["rows"][0]
        for r in s["rows"]:
            mine = f"replica {_n(r['replica_us'])} µs · direct {_n(r['direct_us'])} µs"
            if r["entries"]:
                against = (
                    f"0 entries: replica {_n(zero['replica_us'])} · direct {_n(zero['direct_us'])}"
                )
                ratio = (
                    f"replica {r['replica_vs_zero'] - 1:+.1%} · direct {r['direct_vs_zero'] - 1:+.1%} · "
                    f"index {r['replica_bytes_per_entry']:.0f} B/entry (tracemalloc), "
                    f"{r['replica_traced_bytes'] / 1e6:.1f} MB, loaded in {r['replica_load_seconds']:g} s · "
                    f"Redis {r['redis_bytes_per_entry']:.0f} B/entry"
                )
            else:
                against, ratio = (
                    "—",
                    f"index {zero['replica_traced_bytes'] / 1e3:.0f} kB (stores, no entries)",
                )
            rows.append(["2 revocations", f"{_count(r['entries'])} entries, µs per decision (8 caveats, cold)",
                         mine, against, ratio])  # fmt: skip
        if s["quick_stops_at"]:
            rows[-1][1] += " (--quick stops here)"
    if "http" in results:
        hr = results["http"]
        by = {(r["app"], r["workers"]): r for r in hr["results"]}

        def fig(r: dict[str, Any]) -> str:
            return (f"{r['rps']:.0f} rps, p50 {_n(r['p50_ms'])} ms, p99 {_n(r['p99_ms'])} ms, "
                    f"{r['errors']} errors, {r['cpu_us_per_request']:.0f} µs CPU/request")  # fmt: skip

        for workers in sorted({w for _, w in by}):
            mine = by[("agentcaps", workers)]
            others = " · ".join(f"{by[(a, workers)]['label']}: {fig(by[(a, workers)])}"
                                for a in ("bare", "jwt-redis", "verifier-inline") if (a, workers) in by)  # fmt: skip
            bare = by[("bare", workers)]["rps"]
            ratio = (f"{mine['rps'] / bare:.0%} of bare · "
                     f"{mine['rps'] / by[('jwt-redis', workers)]['rps']:.2f}× PyJWT + Redis")  # fmt: skip
            if ("verifier-inline", workers) in by:
                inline = by[("verifier-inline", workers)]["rps"]
                ratio += f" · (inline Verifier: {inline / bare:.0%} of bare)"
            if workers > 1 and ("agentcaps", 1) in by:
                ratio += f" · {mine['rps'] / by[('agentcaps', 1)]['rps']:.2f}× one worker"
                spread = [c for c in mine["connections_per_process"] if c]
                if spread:
                    ratio += " · its connections per worker: " + ", ".join(
                        "/".join(map(str, c)) for c in spread
                    )
            rows.append([
                "3 forward-auth",
                (f"{workers} uvicorn worker{'s' if workers > 1 else ''} ({hr['stack']}), wrk "
                f"{hr['connections']} keep-alive connections, {hr['rounds']} × {hr['seconds_per_run']:g} s"),
                fig(mine), others, ratio,
            ])  # fmt: skip
    if "propagation" in results:
        p = results["propagation"]
        d = p["ack_to_last_deny_ms"]
        mine = (f"ack → last deny p50 {d['p50']:.2f} ms · p99 {d['p99']:.2f} ms · max {d['max']:.2f} ms"
                if d else "no revocation measured")  # fmt: skip
        rows.append([
            "4 propagation",
            f"{p['verifiers']} replica-mode verifier processes, {p['measured']} revocations",
            mine, f"staleness bound {p['staleness_bound_s']:g} s",
            f"{len(p['errors'])} errors · verify p50 {p['verify_us'].get('p50', float('nan')):.0f} µs in the verifiers",
        ])  # fmt: skip
    if "mint" in results:
        m = results["mint"]
        for store in dict.fromkeys(r["store"] for r in m["rows"]):
            named = {r["what"]: r for r in m["rows"] if r["store"] == store}
            base = named["Minter.issue, no policy"]
            policed = [r for name, r in named.items() if name != "Minter.issue, no policy"]
            mine = " · ".join(
                f"{r['what'].removeprefix('mint_with_policy, ')}: {r['per_second']:.0f}/s ({_n(r['us'])} µs)"
                for r in policed
            )
            ratio = " · ".join(
                f"{r['what'].removeprefix('mint_with_policy, ')} {r['us'] / base['us']:.1f}× the time"
                for r in policed
            )
            rows.append(["5 mint", f"mint_with_policy on {store}, one thread", mine,
                         f"Minter.issue, no policy: {base['per_second']:.0f}/s ({_n(base['us'])} µs)", ratio])  # fmt: skip
    return rows


def render(results: dict[str, Any], targets: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    header = (
        f"agentcaps benchmarks (issue 7): Python {m['python']}, {m['cpus']} CPUs, commit "
        f"{m['commit'] or '?'}{', --quick' if meta['quick'] else ''}; every ratio is two "
        "candidates measured side by side in this run"
    )
    table = markdown_table(
        ["part", "case", "agentcaps", "compared with", "ratio"], table_rows(results), text=True
    )
    notes = []
    if "verify" in results:
        notes.append(
            "¹ agentcaps allows nothing with fewer than its 6 mandatory caveats: its 4-caveat figures "
            "are a 6-caveat token's; the baselines carry 4. Verification figures are medians of "
            f"{results['verify']['rounds']} interleaved rounds; cold = a token the verifier never saw "
            "(the target), warm = the same token again."
        )
    if "http" in results:
        by = {(r["app"], r["workers"]): r for r in results["http"]["results"]}
        one, two = by.get(("agentcaps", 1)), by.get(("agentcaps", 2))
        if one and two and two["p50_ms"] > 30 and one["p50_ms"] < 20:
            notes.append(
                "² agentcaps with two workers waits ~40 ms per keep-alive request: uvicorn's "
                "multi-worker socket is bound without IPPROTO_TCP, so asyncio never sets TCP_NODELAY "
                "and a response written in two parts (headers, then body) waits for the client's "
                "delayed ACK (uvicorn issue #3149). The baselines answer with an empty body, one write."
            )
    lines = [header, "", table, ""]
    lines += notes + ([""] if notes else [])
    lines += [t["line"] for t in targets]
    return "\n".join(lines)


# --- the plot ---------------------------------------------------------------------------------


def plot(verify_result: dict[str, Any], path: Path) -> Path | None:
    """verify-caveats.png: µs per verification against caveat count, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    rows = verify_result["rows"]
    styles = {
        "agentcaps cold": ("#1f5fbf", "o", "-"),
        "agentcaps warm": ("#1f5fbf", "s", "--"),
        "agentcaps warm cache": ("#1f5fbf", "^", ":"),
        "pymacaroons": ("#d95f02", "o", "-"),
        "PyJWT": ("#1b9e77", "o", "-"),
        "biscuit": ("#7570b3", "o", "-"),
        "HMAC chain": ("#555555", "x", ":"),
    }
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, (color, marker, line) in styles.items():
        if name not in rows[0]["us"]:
            continue
        ours = name.startswith("agentcaps") or name == "HMAC chain"
        xs = [r["agentcaps_caveats"] if ours else r["caveats"] for r in rows]
        ys = [r["us"][name] for r in rows]
        label = name + (" (floor, hmac.digest)" if name == "HMAC chain" else "")
        ax.plot(xs, ys, marker=marker, linestyle=line, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([4, 6, 8, 16, 32])
    ax.set_xticklabels(["4", "6", "8", "16", "32"])
    ax.set_xlabel("caveats in the token (agentcaps' fewest: its 6 mandatory ones)")
    ax.set_ylabel("µs per verification (median, log scale)")
    ax.set_title("Verification time against caveat count (one run, side by side)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --- main ---------------------------------------------------------------------------------------


def render_profile(result: dict[str, Any]) -> str:
    """The profile's shares as text: by thread, by layer, by function."""
    load = result["load"]
    return "\n".join([
        (f"py-spy, agentcaps serve (1 worker, replica mode) under wrk: {load['rps']:.0f} rps while "
        f"sampled (py-spy pauses it per sample: read the shares, not the rps); {result['samples']} "
        f"busy samples ({result['waiting_samples_dropped']} waiting ones left out). Shares of the "
        "busy samples."),
        "",
        "By thread:",
        *(f"  {pct:5.1f}%  {name}" for name, pct in result["threads_pct"]),
        "",
        "By layer (each sample charged to its innermost frame that names one):",
        *(f"  {pct:5.1f}%  {name}" for name, pct in result["buckets_pct"]),
        "",
        "Self time (the function on top of the stack):",
        *(f"  {pct:5.1f}%  {name}" for name, pct in result["self_pct"]),
        "",
        "Inclusive time (the function anywhere on the stack):",
        *(f"  {pct:5.1f}%  {name}" for name, pct in result["inclusive_pct"]),
    ])  # fmt: skip


def profile_http(seconds: float, write: bool) -> int:
    import forward_auth

    from tests.servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="agentcaps-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir)
        try:
            server.start()
            result = forward_auth.profile(server.url, workdir, seconds=seconds)
        finally:
            server.stop()
    text = render_profile(result)
    print(text)
    if write:
        meta = {"machine": machine(), "seconds": seconds}
        md, js = write_results("authz-profile", "```\n" + text + "\n```", {"meta": meta, **result})
        print(f"\nwrote bench/results/{md.name} and {js.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="under a minute; scale stops at 100 000"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    parser.add_argument(
        "--profile-http", type=float, nargs="?", const=10.0, metavar="SECONDS",
        help="instead of the table: py-spy on agentcaps /v1/authz under wrk load (default 10 s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.profile_http is not None:
        return profile_http(args.profile_http, not args.no_write)
    parts = [p for p in args.parts.split(",") if p]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts takes a comma-separated subset of {','.join(PARTS)}")

    started = time.monotonic()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    runners = {
        "scale": part_scale,
        "http": part_http,
        "propagation": part_propagation,
        "mint": part_mint,
    }
    with tempfile.TemporaryDirectory(prefix="agentcaps-bench-") as tmp:
        for part in PARTS:
            if part not in parts:
                continue
            began = time.monotonic()
            if part == "verify":
                results[part] = part_verify(args.quick)
            else:
                workdir = Path(tmp) / part
                workdir.mkdir()
                results[part] = runners[part](args.quick, workdir)
            timings[part] = round(time.monotonic() - began, 1)
            print(f"  {part}: done in {timings[part]:g} s", file=sys.stderr)

    meta = {"quick": args.quick, "parts": parts, "seconds": timings, "machine": machine()}
    targets = evaluate(results)
    text = render(results, targets, meta)
    print(text)
    if not args.no_write:
        md, js = write_results("run", text, {"meta": meta, "results": results, "targets": targets})
        written = [f"bench/results/{md.name}", f"bench/results/{js.name}"]
        if "verify" in results:
            png = plot(results["verify"], md.parent / "verify-caveats.png")
            if png is not None:
                written.append(f"bench/results/{png.name}")
        print("\nwrote " + ", ".join(written))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
