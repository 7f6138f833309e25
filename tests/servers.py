"""Real servers the tests and the benchmarks start: redis-server on a free loopback port,
and Redis Cluster and Sentinel groups started by deploy/redis/'s own scripts.

No pytest here, so that bench/ can use it too; tests/conftest.py turns
ServerMissing into a skip (or a failure under CI).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar


class ServerMissing(RuntimeError):
    """The server's binary is not installed on this machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_ports(count: int) -> list[int]:
    """`count` free ports on 127.0.0.1 whose cluster bus ports (port + 10000) are free too."""
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < count:
        port = random.randint(20000, 45000)
        if {port, port + 10000} & taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        chosen.append(port)
        taken |= {port, port + 10000}
    return chosen


class RedisServer:
    """A real redis-server on a free loopback port, in its own directory.

    `stop()` kills it, `start()` brings it back on the same port and directory
    (so with AOF on, its data too), `restart()` does both.
    """

    def __init__(
        self, directory: Path, *, appendonly: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


# -- Redis Cluster and Sentinel groups, started by deploy/redis/'s own scripts --------

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_REDIS = ROOT / "deploy" / "redis"
# What the tests (and deploy/README.md's local walkthrough) give
# start-local-sentinel.sh, so that a failover takes a few seconds.
SENTINEL_TIMINGS = {"DOWN_AFTER_MS": "1000", "FAILOVER_TIMEOUT_MS": "5000"}
SENTINEL_SERVICE = "agentcaps"


def _require(*binaries: str) -> None:
    for name in binaries:
        if shutil.which(name) is None:
            raise ServerMissing(f"{name} is not installed (apt-get install redis-server)")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalGroup:
    """Redis processes that one of deploy/redis/'s start-local-*.sh scripts starts in `directory`.

    Each process lives in `directory/PORT` with its pid file and `start` (its
    exact command line). `kill(port)`, `pause(port)`/`resume(port)` and
    `restart(port)` act on one process; `stop()` kills them all.
    """

    script: ClassVar[str] = ""
    env: ClassVar[dict[str, str]] = {}

    def __init__(self, directory: Path, ports: list[int]) -> None:
        _require("redis-server", "redis-cli")
        self.directory = directory
        self.ports = ports

    @classmethod
    def command(cls, directory: str, ports: list[int]) -> str:
        """The shell command that starts this group: what deploy/README.md tells a person to run."""
        env = " ".join(f"{k}={v}" for k, v in cls.env.items())
        words = [f"deploy/redis/{cls.script}", directory, *map(str, ports)]
        return " ".join([env, *words] if env else words)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["bash", str(DEPLOY_REDIS / self.script), str(self.directory), *map(str, self.ports)],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            self.stop()
            logs = "".join(
                f"\n--- {log}\n{log.read_text(errors='replace')[-1500:]}"
                for log in sorted(self.directory.glob("*/redis.log"))
            )
            raise RuntimeError(f"{self.script} failed:\n{result.stdout}{result.stderr}{logs}")

    def pid(self, port: int) -> int:
        return int((self.directory / str(port) / "redis.pid").read_text())

    def kill(self, port: int) -> None:
        """SIGKILL the process on `port`: only what it fsynced survives."""
        pid = self.pid(port)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def pause(self, port: int) -> None:
        """SIGSTOP: the process accepts connections but answers nothing."""
        os.kill(self.pid(port), signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.pid(port), signal.SIGCONT)

    def restart(self, port: int) -> None:
        """Start a killed process again with its own command line (and its data)."""
        subprocess.run(["sh", str(self.directory / str(port) / "start")], check=True, timeout=30)
        deadline = time.monotonic() + 30
        while not _answers(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis on port {port} did not come back")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL every process of the group (a test's data is disposable; stop-local.sh is the graceful way)."""
        pids = []
        for pidfile in self.directory.glob("*/redis.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pidfile.read_text()))
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)


class LocalCluster(LocalGroup):
    """A Redis Cluster of three masters with one replica each (deploy/redis/start-local-cluster.sh)."""

    script = "start-local-cluster.sh"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, free_cluster_ports(6))

    @property
    def url(self) -> str:
        return self.url_for(self.ports)

    @staticmethod
    def url_for(ports: list[int]) -> str:
        """The store URL of a local cluster on `ports` (its first three nodes as seeds)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3])


class LocalSentinelGroup(LocalGroup):
    """One primary, one replica and three sentinels, quorum 2 (deploy/redis/start-local-sentinel.sh)."""

    script = "start-local-sentinel.sh"
    env = SENTINEL_TIMINGS

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, [free_port() for _ in range(5)])
        self.primary, self.replica, *self.sentinels = self.ports

    @property
    def url(self) -> str:
        return self.url_for(self.ports)

    @staticmethod
    def url_for(ports: list[int]) -> str:
        """The store URL of a local group on `ports` (primary, replica, then the sentinels)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports[2:])
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}"

    def current_primary(self) -> int | None:
        """The primary's port as the first sentinel that answers names it (None if none does)."""
        for port in self.sentinels:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(
                        b"SENTINEL get-master-addr-by-name " + SENTINEL_SERVICE.encode() + b"\r\n"
                    )
                    reply = conn.recv(256).split(b"\r\n")
            except OSError:
                continue
            # *2 $9 127.0.0.1 $4 PORT: the address, as an array of two bulk strings.
            if reply[0] == b"*2" and len(reply) >= 5:
                return int(reply[4])
        return None

    def current_replica(self) -> int:
        """The data node that is not the primary now (the replica, unless a failover swapped them)."""
        return self.primary if self.current_primary() == self.replica else self.replica
