"""Several verifier processes in replica mode against one real redis-server."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcaps import Revocation, RevocationKind
from tests.conftest import MASTER_KEY, RedisServer, real_stores

PROCESSES = 3
STALENESS = 1.0
SLACK = 1.0  # process scheduling on a busy machine; the bound itself is the contract
ROOT = Path(__file__).resolve().parents[2]


class VerifierProcess:
    """One `verifier_loop` child, its output lines delivered to a queue as (monotonic time, reason)."""

    def __init__(self, server: RedisServer, token: str) -> None:
        env = {
            **os.environ,
            "AGENTCAPS_REDIS_URL": server.url,
            "AGENTCAPS_MASTER_KEY": MASTER_KEY.hex(),
            "AGENTCAPS_REVOCATION_MODE": "replica",
            "AGENTCAPS_REPLICA_STALENESS": str(STALENESS),
            "PYTHONPATH": str(ROOT),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.verifier_loop", token, "60"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            at, reason = line.split()
            self.lines.put((float(at), reason))

    def next(self, timeout: float) -> tuple[float, str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            stderr = self.process.stderr.read() if self.process.poll() is not None else ""  # type: ignore[union-attr]
            raise AssertionError(
                f"no decision from verifier process within {timeout} s\n{stderr}"
            ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def verifier_processes(redis_server: RedisServer) -> Iterator[list[VerifierProcess]]:
    started: list[VerifierProcess] = []
    yield started
    for child in started:
        child.stop()


def test_every_verifier_process_denies_a_revoked_token_within_the_bound(
    redis_server: RedisServer, verifier_processes: list[VerifierProcess]
) -> None:
    """Once revoke() returns, each of several replica-mode verifier processes denies the token within the staleness bound."""
    admin = real_stores(redis_server)
    try:
        token = admin.minter().issue(
            customer="acme", user="alice", agent="planner",
            resources=["crm/**"], actions=["read"], purposes=["sync"], ttl=600,
        )  # fmt: skip
        verifier_processes.extend(
            VerifierProcess(redis_server, token.token) for _ in range(PROCESSES)
        )
        for child in verifier_processes:
            assert child.next(timeout=30)[1] == "ok"

        admin.revocations.revoke(
            Revocation(RevocationKind.TOKEN, (token.token_id,), int(time.time()))
        )
        acknowledged = time.monotonic()

        delays = []
        for child in verifier_processes:
            # A stale replica may deny revocation_unavailable on the way (also a
            # deny); what must not happen is an allow past the bound.
            last_allowed = float("-inf")
            at, reason = child.next(timeout=STALENESS + 10)
            while reason != "revoked":
                if reason == "ok":
                    last_allowed = at
                at, reason = child.next(timeout=STALENESS + 10)
            assert last_allowed - acknowledged <= STALENESS + SLACK
            delays.append(at - acknowledged)
        assert max(delays) <= STALENESS + SLACK, f"propagation delays {delays}"
        for child in verifier_processes:
            assert child.process.wait(timeout=10) == 0
    finally:
        admin.close()
