"""Policy as code, as an operator runs it: `agentcaps serve --policy-dir` and `agentcaps mint`.

The policy folder changes under a running service; the service reloads it on
file change and on SIGHUP, without a restart, and never swaps in a broken set.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY, SCOPE, RedisServer
from tests.e2e.service import Service, clean_env
from tests.e2e.test_cli import cli

STRICT = """
@id("admins-read-only")
permit (principal is Admin, action == Action::"mint", resource is Grant)
when { !resource.actions.contains("write") };
"""
RELAXED = """
@id("admins-anything")
permit (principal is Admin, action == Action::"mint", resource is Grant);
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "mint.cedar").write_text(STRICT)
    return folder


@pytest.fixture
def env(redis_server: RedisServer) -> dict[str, str]:
    return clean_env(
        AGENTCAPS_REDIS_URL=redis_server.url,
        AGENTCAPS_MASTER_KEY=MASTER_KEY.hex(),
        AGENTCAPS_POLICY_POLL_INTERVAL="0.2",
    )


@pytest.fixture
def service(tmp_path: Path, env: dict[str, str], policy_dir: Path) -> Iterator[Service]:
    running = Service(tmp_path, env, "--policy-dir", str(policy_dir))
    running.start()
    yield running
    running.stop()


def admin_token(env: dict[str, str]) -> str:
    result = cli("admin-token", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def mint(service: Service, admin: str) -> httpx.Response:
    return httpx.post(
        service.url + "/v1/tokens",
        json={**SCOPE, "actions": ["read", "write"]},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )


def eventually_status(service: Service, admin: str, status: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := mint(service, admin).status_code) != status:
        assert time.monotonic() < deadline, f"mint still answers {got}, not {status}"
        time.sleep(0.1)


def test_cli_mint_the_policy_forbids_is_refused_policy_denied(
    env: dict[str, str], policy_dir: Path
) -> None:
    """`agentcaps mint --policy-dir` refuses a forbidden mint in one line naming policy_denied."""
    args = ["mint", "--customer", "acme", "--user", "alice", "--agent", "planner"]
    args += ["--resource", "crm/**", "--action", "write", "--purpose", "sync", "--ttl", "60"]
    denied = cli(*args, "--policy-dir", str(policy_dir), env=env)
    assert denied.returncode == 1
    assert "policy_denied" in denied.stderr and "Traceback" not in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    (policy_dir / "mint.cedar").write_text(RELAXED)
    allowed = cli(*args, "--policy-dir", str(policy_dir), env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert re.fullmatch(r"agc_[A-Za-z0-9_-]+", allowed.stdout.strip())


def test_service_reloads_a_changed_policy_file_without_a_restart(
    service: Service, env: dict[str, str], policy_dir: Path
) -> None:
    """A mint denied 403 policy_denied is minted once the policy file changes; same process."""
    admin = admin_token(env)
    response = mint(service, admin)
    assert response.status_code == 403 and response.json()["error"] == "policy_denied"
    pid = service.process.pid if service.process else None
    (policy_dir / "mint.cedar").write_text(RELAXED)
    eventually_status(service, admin, 201)
    assert service.process is not None and service.process.pid == pid


def test_service_reloads_on_sighup_and_keeps_its_policy_when_the_new_one_is_broken(
    tmp_path: Path, env: dict[str, str], policy_dir: Path
) -> None:
    """SIGHUP reloads the folder; a broken file leaves the running policy in force and /readyz says so."""
    running = Service(
        tmp_path, {**env, "AGENTCAPS_POLICY_POLL_INTERVAL": "0"}, "--policy-dir", str(policy_dir)
    )
    running.start()
    try:
        admin = admin_token(env)
        (policy_dir / "mint.cedar").write_text(RELAXED)
        assert mint(running, admin).status_code == 403  # no watching: nothing changed yet
        assert running.process is not None
        running.process.send_signal(signal.SIGHUP)
        eventually_status(running, admin, 201)

        (policy_dir / "mint.cedar").write_text("permit (principal, action, resource")
        running.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            checks = httpx.get(running.url + "/readyz", timeout=5).json()["checks"]
            if checks["mint_policy"].startswith("reload failed"):
                break
            assert time.monotonic() < deadline, checks
            time.sleep(0.1)
        assert mint(running, admin).status_code == 201  # the relaxed set still decides
        assert running.process.poll() is None
    finally:
        running.stop()


def test_sighup_to_a_multi_worker_server_reloads_every_worker(
    tmp_path: Path, env: dict[str, str], policy_dir: Path
) -> None:
    """`serve --workers 2`: the supervisor passes SIGHUP on to its workers and lives on."""
    running = Service(
        tmp_path,
        {**env, "AGENTCAPS_POLICY_POLL_INTERVAL": "0"},
        "--policy-dir", str(policy_dir), "--workers", "2",
    )  # fmt: skip
    running.start(timeout=40)
    try:
        admin = admin_token(env)
        (policy_dir / "mint.cedar").write_text(RELAXED)
        assert running.process is not None
        running.process.send_signal(signal.SIGHUP)
        eventually_status(running, admin, 201)
        # Each request is a new connection, which either worker may take.
        assert [mint(running, admin).status_code for _ in range(16)] == [201] * 16
        assert running.process.poll() is None
    finally:
        status = running.stop()
    assert status == 0, running.output()
