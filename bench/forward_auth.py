"""HTTP forward-auth under keep-alive load: agentcaps /v1/authz against a bare endpoint and PyJWT + Redis (issue 7).

Six servers at once on loopback, each on its own port: `agentcaps serve`
(against a real redis-server, replica mode, audience `gateway`, every other
setting at its default: JSON access log to a file, audit as AGENTCAPS_AUDIT's
default says, no policy folder), bench/apps.py's `bare` and `jwt-redis`, each
with one uvicorn worker and with two. Load comes from wrk (Debian's package),
a separate process with one thread and a fixed number of keep-alive
connections, sending the same forward-auth request to every server: nginx's
X-Original-* headers naming GET /crm/contacts/42, purpose `sync`, and an
8-caveat token (agentcaps: minted, delegated to `fetcher`, audience `gateway`;
the JWT: the same claims, bench/verify.py's jwt_claims, plus a jti). The same
token on every request: agentcaps' warm path.

Runs are short and interleaved (round r starts with a different server), the
figures are medians over the rounds. Besides wrk's requests per second and
latency, each run reads the server's CPU time (its processes' utime + stime
from /proc): CPU µs per request is the least noisy figure on a shared machine.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PATH = "/v1/authz"
HEADERS = {
    "X-Original-Method": "GET",
    "X-Original-URI": "/crm/contacts/42",
    "X-Agentcaps-Purpose": "sync",
}
AUDIENCE = "gateway"
APPS = ("agentcaps", "bare", "jwt-redis", "verifier-inline")
LABELS = {
    "agentcaps": "agentcaps /v1/authz",
    "bare": "bare Starlette 200",
    "jwt-redis": "PyJWT + Redis SISMEMBER",
    "verifier-inline": "agentcaps Verifier inline in a bare endpoint",
}
USES_AGENTCAPS_TOKEN = ("agentcaps", "verifier-inline")
_TICK = os.sysconf("SC_CLK_TCK")


def repo_env(**extra: str) -> dict[str, str]:
    """This environment without AGENTCAPS_* settings, importing agentcaps from this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and every process below it, in seconds."""
    tree = _children()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(tree.get(current, ()))
    return total / _TICK


@dataclass
class Server:
    """One server process on a free loopback port; stderr to a log file; stopped with SIGTERM, then killed."""

    name: str
    workers: int
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env
            )

    def wait(self, timeout: float = 60.0) -> None:
        """Until /healthz answers (from every worker that is up: good enough, the warm-up follows)."""
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not answer /healthz within {timeout} s:\n{self.output()}"
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # uvicorn's supervisor normally stops its workers; kill the tree if it did not.
                for pid in _descendants(self.process.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.process.kill()
                self.process.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


# --- wrk ------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests, rps, p50/p99 ms and errors (non-2xx/3xx answers and socket errors) from wrk's report."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+)", out):
        result["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    for p in ("50", "99"):
        if m := re.search(rf"^\s+{p}%\s+([\d.]+(?:us|ms|s))", out, re.MULTILINE):
            result[f"p{p}_ms"] = _ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        result["non_2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        result["socket_errors"] = sum(int(g) for g in m.groups())
    if "rps" not in result:
        raise RuntimeError(f"could not read wrk's report:\n{out}")
    return result


def connections_by_process(port: int) -> list[int]:
    """How many established connections to `port` each server process holds, most first (needs ss)."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def wrk(server: Server, token: str, seconds: float, connections: int) -> dict[str, Any]:
    """One wrk run against `server`; its report, plus the server's CPU seconds meanwhile."""
    assert server.process is not None
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    # wrk takes whole seconds.
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    argv += ["--timeout", "2s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(server.url + PATH)
    cpu_before = cpu_seconds(server.process.pid)
    # Which worker holds which keep-alive connection, read halfway through.
    spread: list[list[int]] = []
    peek = threading.Timer(
        max(0.5, seconds / 2), lambda: spread.append(connections_by_process(server.port))
    )
    peek.start()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    finally:
        peek.cancel()
    cpu = cpu_seconds(server.process.pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    result["server_cpu_s"] = round(cpu, 3)
    result["connections_per_process"] = spread[0] if spread else []
    result["cpu_us_per_request"] = cpu / max(result.get("requests", 0), 1) * 1e6
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    return result


def server_stack() -> str:
    """What uvicorn runs every server on here: its event loop and HTTP parser ("auto" picks the C ones if installed)."""
    import importlib.util
    from importlib.metadata import version

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {version('uvicorn')}, {loop} + {http}"


# --- the run ----------------------------------------------------------------------


def _tokens(redis_url: str, master_key: bytes) -> tuple[str, str, bytes]:
    """The agentcaps token (minted on the served store) and an equivalent JWT with its key."""
    import jwt
    from verify import agentcaps_token, jwt_claims, logical_caveats

    import agentcaps
    from agentcaps.config import Settings

    stores = agentcaps.connect(
        redis_url, settings=Settings(redis_url=redis_url, master_key=master_key)
    )
    try:
        token = agentcaps_token(stores.minter(), 8, 3600)
    finally:
        stores.close()
    key = secrets.token_bytes(32)
    claims = jwt_claims(logical_caveats(8), int(time.time()), 3600)
    claims["jti"] = secrets.token_hex(16)
    return token, jwt.encode(claims, key, algorithm="HS256"), key


def _check(server: Server, token: str) -> None:
    """The server allows the request, and refuses another resource and a bad token."""
    auth = {"Authorization": f"Bearer {token}"}
    ok = httpx.get(server.url + PATH, headers={**HEADERS, **auth}, timeout=5)
    if ok.status_code != 200:
        raise RuntimeError(f"{server.name} answered {ok.status_code}: {ok.text}\n{server.output()}")
    if server.name in USES_AGENTCAPS_TOKEN and ok.headers.get("x-agentcaps-agent") != "fetcher":
        raise RuntimeError(f"{server.name} did not name the acting agent: {dict(ok.headers)}")
    if server.name == "bare":
        return
    other = {**HEADERS, **auth, "X-Original-URI": "/hr/payroll"}
    if (status := httpx.get(server.url + PATH, headers=other, timeout=5).status_code) != 403:
        raise RuntimeError(f"{server.name} answered {status} for another resource")
    forged = {**HEADERS, "Authorization": f"Bearer {token[:-4]}AAAA"}
    if (status := httpx.get(server.url + PATH, headers=forged, timeout=5).status_code) != 401:
        raise RuntimeError(f"{server.name} answered {status} for a forged token")


def measure(
    redis_url: str,
    workdir: Path,
    *,
    seconds: float,
    rounds: int,
    connections: int = 16,
    warmup: float = 1.0,
    workers: tuple[int, ...] = (1, 2),
    skip: tuple[tuple[str, int], ...] = (),
) -> dict[str, Any]:
    """Start the six servers, check them, warm them up, then `rounds` interleaved wrk runs each."""
    import redis
    from apps import REVOKED_SET

    master_key = secrets.token_bytes(32)
    token, jwt_token, jwt_key = _tokens(redis_url, master_key)
    client = redis.Redis.from_url(redis_url)
    client.sadd(REVOKED_SET, *(secrets.token_hex(16) for _ in range(1000)))
    client.close()
    from tests.servers import free_port

    servers: list[Server] = []
    ports: set[int] = set()
    for count in workers:
        for app in APPS:
            if (app, count) in skip:
                continue
            port = free_port()
            while port in ports:  # nothing listens yet: the kernel may hand out a port twice
                port = free_port()
            ports.add(port)
            deployment = repo_env(
                AGENTCAPS_REDIS_URL=redis_url,
                AGENTCAPS_MASTER_KEY=master_key.hex(),
                AGENTCAPS_REVOCATION_MODE="replica",
                AGENTCAPS_AUDIENCE=AUDIENCE,
            )
            if app == "agentcaps":
                argv = [sys.executable, "-m", "agentcaps", "serve", "--port", str(port)]
                argv += ["--workers", str(count)]
                env = deployment
            elif app == "verifier-inline":
                argv = [sys.executable, str(BENCH / "apps.py"), app, "--port", str(port)]
                argv += ["--workers", str(count)]
                env = deployment
            else:
                argv = [sys.executable, str(BENCH / "apps.py"), app, "--port", str(port)]
                argv += ["--workers", str(count)]
                env = repo_env(BENCH_JWT_KEY=jwt_key.hex(), BENCH_REDIS_URL=redis_url)
            log = workdir / f"{app}-{count}w.log"
            servers.append(Server(app, count, argv, env, port, log))
    started = time.monotonic()
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait()
        for s in servers:
            assert s.process is not None
            if s.process.poll() is not None:
                raise RuntimeError(f"{s.name} ({s.workers} workers) exited:\n{s.output()}")
            _check(s, token if s.name in USES_AGENTCAPS_TOKEN else jwt_token)
        ready = time.monotonic() - started
        for s in servers:  # warm-up: every worker up, pools and caches filled
            wrk(s, token if s.name in USES_AGENTCAPS_TOKEN else jwt_token, warmup, connections)
        for r in range(rounds):
            start = r % len(servers)
            for s in [*servers[start:], *servers[:start]]:
                s.runs.append(
                    wrk(
                        s,
                        token if s.name in USES_AGENTCAPS_TOKEN else jwt_token,
                        seconds,
                        connections,
                    )
                )
    finally:
        for s in servers:
            s.stop()

    results = []
    for s in servers:

        def median(key: str, s: Server = s) -> float:
            return float(statistics.median(run[key] for run in s.runs))

        results.append(
            {
                "app": s.name,
                "label": LABELS[s.name],
                "workers": s.workers,
                "rps": median("rps"),
                "p50_ms": median("p50_ms"),
                "p99_ms": median("p99_ms"),
                "cpu_us_per_request": median("cpu_us_per_request"),
                "errors": sum(run["errors"] for run in s.runs),
                "requests": sum(run.get("requests", 0) for run in s.runs),
                "connections_per_process": [run["connections_per_process"] for run in s.runs],
                "runs": s.runs,
            }
        )
    return {
        "stack": server_stack(),
        "seconds_per_run": seconds,
        "rounds": rounds,
        "connections": connections,
        "wrk_threads": 1,
        "startup_seconds": round(ready, 1),
        "request": {"path": PATH, **HEADERS},
        "results": results,
    }


# --- where the time goes: py-spy on agentcaps /v1/authz under load ---------------------


def profile(
    redis_url: str, workdir: Path, *, seconds: float, connections: int = 16, rate: int = 100
) -> dict[str, Any]:
    """Sample `agentcaps serve` (one worker) with py-spy while wrk loads /v1/authz.

    py-spy starts the server itself (attaching to a running process needs
    ptrace rights that a container may not give) and samples every thread
    that is not idle, `rate` times a second, pausing the process for each
    sample (py-spy's --nonblocking mode reads stacks of a running process and
    over-counts socket writes several times here); it stops the server when
    done. The pauses slow the server: shares are what to read, not rps.
    """
    import shutil

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    from tests.servers import free_port

    master_key = secrets.token_bytes(32)
    token, _jwt, _key = _tokens(redis_url, master_key)
    port = free_port()
    raw = workdir / "authz.raw"
    startup = 8.0
    argv = [
        py_spy, "record", "--format", "raw", "--output", str(raw), "--rate", str(rate),
        "--duration", str(round(startup + seconds + 2)), "--threads", "--nolineno", "--",
        sys.executable, "-m", "agentcaps", "serve", "--port", str(port),
    ]  # fmt: skip
    env = repo_env(
        AGENTCAPS_REDIS_URL=redis_url,
        AGENTCAPS_MASTER_KEY=master_key.hex(),
        AGENTCAPS_REVOCATION_MODE="replica",
        AGENTCAPS_AUDIENCE=AUDIENCE,
    )
    server = Server("agentcaps", 1, argv, env, port, workdir / "profiled.log")
    server.start()
    try:
        server.wait(startup)
        _check(server, token)
        run = wrk(server, token, seconds, connections)
        assert server.process is not None
        server.process.wait(timeout=startup + 30)  # py-spy stops after its duration
    finally:
        server.stop()
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing:\n{server.output()}")
    return {"load": run, **summarize_profile(raw.read_text())}


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def _where(frame: str) -> str:
    """py-spy's 'function (package/module.py)' as 'package/module.py:function'."""
    name, _, rest = frame.partition(" (")
    return f"{rest.rstrip(')')}:{name}"


# Each busy sample is charged to one layer: that of the innermost frame that
# names one (first match in this order), so that standard-library helpers count
# for whoever called them (a json.dumps for the handler that encodes, a
# current_task for anyio that asks), except for the standard library's own
# layers listed here (logging, the socket writes and reads).
LAYERS = (
    (
        "thread pool hop (anyio to_thread: schedule, wake the loop, resume)",
        (
            "asyncio/selector_events.py:BaseSelectorEventLoop._write_to_self",
            "asyncio/selector_events.py:BaseSelectorEventLoop._read_from_self",
            "anyio/",
            "concurrent/",
            "threading.py",
            "queue.py",
        ),
    ),
    (
        "socket writes and reads (asyncio transport: send/recv syscalls)",
        ("asyncio/selector_events.py:_SelectorSocketTransport",),
    ),
    (
        "access log line (logging, JSON formatter, handler write)",
        (
            "logging/",
            "agentcaps/http/logs.py",
        ),
    ),
    (
        "verify (decode cache, HMAC chain, caveats, revocation index)",
        (
            "agentcaps/verify.py",
            "agentcaps/signature.py",
            "agentcaps/claims.py",
            "agentcaps/wire.py",
            "agentcaps/caveats.py",
            "agentcaps/revocation.py",
            "agentcaps/decision.py",
            "agentcaps/stores/redis.py:ReplicaRevocationStore.check",
            "agentcaps/stores/redis.py:RedisKeyStore.get",
        ),
    ),
    ("gateway policy", ("agentcaps/policy/",)),
    (
        "audit (recorder, trail)",
        (
            "agentcaps/recorder.py",
            "agentcaps/audit.py",
            "agentcaps/stores/audit.py",
            "agentcaps/stores/jsonl.py",
            "agentcaps/trace.py",
        ),
    ),
    ("metrics", ("agentcaps/http/metrics.py",)),
    (
        "agentcaps HTTP layer (access middleware, forward-auth handler, gate, headers)",
        (
            "agentcaps/http/",
            "agentcaps/errors.py",
        ),
    ),
    ("pydantic (response model)", ("pydantic/", "pydantic_core/")),
    ("Starlette (middleware stack, routing, request, response)", ("starlette/",)),
    ("uvicorn + h11 (HTTP parsing and framing)", ("uvicorn/", "h11/")),
    ("redis client", ("redis/",)),
)


def _layer(body: list[str]) -> str:
    for where in reversed(body):
        for layer, marks in LAYERS:
            if any(where.startswith(m) for m in marks):
                return layer
    return "asyncio event loop (scheduling, callbacks)"


# py-spy counts a thread blocked in these as busy (they wait in C, not in a syscall
# it recognises): idle thread-pool workers, the replica's blocking XREAD, an idle poll.
WAITING = (
    "threading.py:Condition.wait",
    "threading.py:Event.wait",
    "selectors.py:EpollSelector.select",
    "hiredis.py:_HiredisParser.read_from_socket",
    "time.sleep",
)


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Shares of busy samples by thread, by layer (LAYERS), by function (self and inclusive), from py-spy's raw output.

    Only samples of the running service count: those under uvicorn's server
    loop or in a thread (start-up and imports are left out), and not those
    waiting (WAITING).
    """
    samples: list[tuple[list[str], int]] = []
    waiting = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        body = [_where(f) for f in frames if not f.startswith(("thread", "process"))]
        if not any("uvicorn/server.py" in f or "threading.py:Thread._bootstrap" in f for f in body):
            continue
        if body and any(body[-1].endswith(w) for w in WAITING):
            waiting += count
            continue
        samples.append((body, count))
    total = sum(count for _, count in samples) or 1
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    buckets: dict[str, int] = {}
    threads: dict[str, int] = {}
    for body, count in samples:
        if any("uvicorn/server.py" in f for f in body):
            kind = "event loop thread"
        elif any("anyio/" in f for f in body):
            kind = "thread pool (run_in_threadpool)"
        elif any("agentcaps/stores/redis.py:ReplicaRevocationStore" in f for f in body):
            kind = "revocation replica follower"
        else:
            kind = "other threads"
        threads[f"{kind}"] = threads.get(kind, 0) + count
        if body:
            own[body[-1]] = own.get(body[-1], 0) + count
        for where in set(body):
            inclusive[where] = inclusive.get(where, 0) + count
        bucket = _layer(body)
        buckets[bucket] = buckets.get(bucket, 0) + count

    def share(table: dict[str, int], limit: int | None = None) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: kv[1], reverse=True)
        return [(k, round(100 * v / total, 1)) for k, v in ranked[:limit]]

    return {
        "samples": total,
        "waiting_samples_dropped": waiting,
        "buckets_pct": share(buckets),
        "threads_pct": share(threads),
        "self_pct": share(own, top),
        "inclusive_pct": share(inclusive, top * 2),
    }
