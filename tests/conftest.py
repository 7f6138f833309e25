"""Shared fixtures: a controllable clock, embedded stores, and real redis-server processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentcaps
from agentcaps.config import Settings
from agentcaps.stores.redis import Stores

MASTER_KEY = bytes(range(32))


class FakeClock:
    """A clock tests move by hand: `clock()` is unix time, `clock.advance(s)` moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_stores(clock: FakeClock) -> Iterator[Stores]:
    """The embedded default (memory://), direct mode, on the test clock."""
    stores = agentcaps.connect("memory://", settings=Settings(master_key=MASTER_KEY), clock=clock)
    yield stores
    stores.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, in its own directory.

    `stop()` kills it, `start()` brings it back on the same port and directory
    (so with AOF on, its data too), `restart()` does both.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # pragma: no cover - depends on the machine
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed; .ci/run installs it from Debian's packages")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server (no persistence) for one test."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server with AOF on and `appendfsync always`."""
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


def real_stores(server: RedisServer, clock: FakeClock | None = None, **settings: object) -> Stores:
    """Stores on a real server, with the test master key."""
    options: dict[str, object] = {"master_key": MASTER_KEY, "redis_url": server.url}
    options.update(settings)
    kwargs = {"clock": clock} if clock is not None else {}
    return agentcaps.connect(server.url, settings=Settings(**options), **kwargs)  # type: ignore[arg-type]
