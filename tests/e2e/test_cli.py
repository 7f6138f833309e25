"""The `agentcaps` command as a user runs it: a subprocess, its stdout, stderr and exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

import agentcaps
from agentcaps.config import Settings, parse_master_key
from agentcaps.stores.redis import Layout, Stores
from tests.conftest import MASTER_KEY, SCOPE, RedisServer

MASTER_KEY_HEX = MASTER_KEY.hex()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without AGENTCAPS_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `python -m agentcaps ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "agentcaps", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        env=clean_env() if env is None else env,
        timeout=30,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with `status` and said why in one `agentcaps: error:` line."""
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentcaps: error: "), result.stderr
    return lines[0]


@pytest.fixture
def stores() -> Iterator[Stores]:
    """In-process memory:// stores on real time, to mint tokens and verify CLI output."""
    s = agentcaps.connect("memory://", settings=Settings(master_key=MASTER_KEY))
    yield s
    s.close()


def mint(stores: Stores, **overrides: object) -> str:
    options = {**SCOPE, **overrides}
    return stores.minter().mint(**options)  # type: ignore[arg-type]


# -- offline -------------------------------------------------------------------


def test_console_script_is_installed_and_runs() -> None:
    """The `agentcaps` console script next to the interpreter runs the CLI."""
    script = Path(sys.executable).parent / "agentcaps"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    result = subprocess.run(
        [str(script), "master-key"],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert result.returncode == 0 and len(result.stdout.strip()) == 64


def test_inspect_prints_an_unverified_json_view(stores: Stores) -> None:
    """`inspect` prints the token's claims as JSON, marked as unverified."""
    token = mint(stores)
    result = cli("inspect", token)
    assert result.returncode == 0 and result.stderr == ""
    view = json.loads(result.stdout)
    assert view["verified"] is False and "UNVERIFIED" in view["warning"]
    assert (view["customer"], view["user"], view["chain"]) == ("acme", "alice", ["planner"])


def test_inspect_reads_the_token_from_stdin_and_strips_whitespace(stores: Stores) -> None:
    """TOKEN `-` reads the token from stdin, ignoring surrounding whitespace."""
    token = mint(stores)
    result = cli("inspect", "-", stdin=f"\n  {token}\n\n")
    assert result.returncode == 0
    assert json.loads(result.stdout)["agent"] == "planner"


def test_attenuate_prints_only_a_narrower_token_that_verifies(stores: Stores) -> None:
    """`attenuate` prints the new token alone; it allows the narrowed request and no more."""
    token = mint(stores)
    result = cli(
        "attenuate", token,
        "--resource", "crm/contacts/*", "--action", "read", "--purpose", "sync",
        "--ttl", "60", "--delegate-to", "fetcher", "--max-delegations", "1",
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    child = result.stdout.strip()
    assert result.stdout == child + "\n" and child.startswith("agc_")
    verifier = stores.verifier()
    allowed = verifier.verify(child, resource="crm/contacts/7", action="read", actor="fetcher")
    assert allowed.allowed and allowed.chain == ("planner", "fetcher")
    assert verifier.verify(child, resource="crm/deals/1", action="read").reason == "resource_denied"
    assert (
        verifier.verify(child, resource="crm/contacts/7", action="write").reason == "action_denied"
    )
    assert (
        verifier.verify(child, resource="crm/contacts/7", action="read", actor="planner").reason
        == "actor_mismatch"
    )


def test_attenuate_from_stdin_takes_an_iso_time_with_an_offset(stores: Stores) -> None:
    """`attenuate - --expires-at` reads stdin and accepts an ISO 8601 time with an offset."""
    token = mint(stores)
    at = datetime.now(timezone(timedelta(hours=2))).replace(microsecond=0) + timedelta(minutes=5)
    result = cli("attenuate", "-", "--expires-at", at.isoformat(), stdin=token + "\n")
    assert result.returncode == 0, result.stderr
    assert agentcaps.inspect(result.stdout.strip())["expires_at"] == int(at.timestamp())
    zulu = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    text = zulu.strftime("%Y-%m-%dT%H:%M:%SZ")
    result = cli("attenuate", token, "--expires-at", text)
    assert agentcaps.inspect(result.stdout.strip())["expires_at"] == int(zulu.timestamp())


def test_attenuate_refuses_a_time_without_a_zone(stores: Stores) -> None:
    """A naive --expires-at is a usage error (exit 2) that asks for a zone."""
    line = assert_one_line_error(
        cli("attenuate", mint(stores), "--expires-at", "2026-12-01T10:00:00"), 2
    )
    assert "time zone" in line


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (("inspect", "not-a-token"), 1, "not a valid token"),
        (("inspect", "agc_" + "A" * 30000), 1, "not a valid token"),
        (("attenuate", "agc_AAAA", "--ttl", "5"), 1, "not a valid token"),
        (("attenuate", "agc_AAAA"), 2, "at least one option"),
        (("attenuate", "agc_AAAA", "--ttl", "5", "--expires-at", "2026-12-01T10:00:00Z"), 2, "not allowed with"),
        (("attenuate", "agc_AAAA", "--ttl", "-5"), 2, "--ttl"),
        (("inspect", "-"), 2, "stdin is empty"),
        (("frobnicate",), 2, "invalid choice"),
        (("verify", "agc_AAAA", "--resource", "x"), 2, "--action"),
        (("revoke", "--user", "bob"), 2, "--user goes with --customer"),
        (("revoke",), 2, "say what to revoke"),
        (("revoke", "--agent", "x", "--key", "k1"), 2, "--agent goes alone, or with --customer"),
        (("revoke", "--agent", "x", "--user", "bob"), 2, "--user goes with --customer"),
        (("revoke", "--customer", "acme", "--user", "bob", "--redis", "redis://127.0.0.1:9"), 1, "master key"),
        (("doctor", "http://x"), 1, "store URL"),
    ],
)  # fmt: skip
def test_errors_are_one_line_on_stderr_without_a_traceback(
    args: tuple[str, ...], status: int, says: str
) -> None:
    """Bad input of every kind gives one `agentcaps: error:` line and a non-zero exit."""
    assert says in assert_one_line_error(cli(*args), status)


def test_a_bad_master_key_is_an_error_that_does_not_repeat_it() -> None:
    """A malformed AGENTCAPS_MASTER_KEY is one error line that never echoes the value."""
    secret = "nothex" * 10 + "abcd"
    result = cli("keys", "list", env=clean_env(AGENTCAPS_MASTER_KEY=secret))
    assert "master key" in assert_one_line_error(result, 1)
    assert secret not in result.stderr


def test_unreachable_redis_is_one_line_that_hides_the_password(tmp_path: Path) -> None:
    """A Redis that does not answer is one error line naming the URL without its password."""
    url = "redis://admin:hunter2@127.0.0.1:9/0"
    env = clean_env(AGENTCAPS_MASTER_KEY=MASTER_KEY_HEX)
    result = cli("keys", "list", "--redis", url, env=env)
    line = assert_one_line_error(result, 1)
    assert "unavailable" in line and "127.0.0.1:9" in line and "hunter2" not in line


def test_memory_store_says_once_that_nothing_persists() -> None:
    """Without a store URL, commands run on memory:// and warn in one plain stderr line."""
    result = cli("keys", "list")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    lines = result.stderr.splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("agentcaps: warning:") and "memory://" in lines[0]
    )
    assert "Warning" not in result.stderr  # not the Python warning object


def test_master_key_prints_a_usable_64_hex_key() -> None:
    """`master-key` prints a fresh 64-hex key that AGENTCAPS_MASTER_KEY accepts."""
    first, second = cli("master-key").stdout.strip(), cli("master-key").stdout.strip()
    assert len(first) == 64 and len(parse_master_key(first)) == 32 and first != second


def test_ctrl_c_exits_130_quietly() -> None:
    """An interrupt (Ctrl-C) ends the command with status 130 and no output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agentcaps", "inspect", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    time.sleep(0.5)  # let it start and block on stdin
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert (process.returncode, out, err) == (130, "", "")


# -- against a real redis-server -------------------------------------------------


@pytest.fixture
def store_env(redis_server: RedisServer) -> dict[str, str]:
    """An environment naming the test redis-server and the test master key."""
    return clean_env(AGENTCAPS_REDIS_URL=redis_server.url, AGENTCAPS_MASTER_KEY=MASTER_KEY_HEX)


def ok_json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_keys_create_list_rotate_revoke_show_metadata_never_secrets(
    store_env: dict[str, str],
) -> None:
    """`keys` manages root keys and prints their metadata only."""
    created = ok_json(cli("keys", "create", "--customer", "acme", env=store_env))
    assert isinstance(created, dict)
    assert set(created) == {"key_id", "customer", "state", "created_at"}
    assert (created["customer"], created["state"]) == ("acme", "active")
    rotated = ok_json(cli("keys", "rotate", created["key_id"], env=store_env))
    assert isinstance(rotated, dict) and rotated["state"] == "active"
    revoked = ok_json(cli("keys", "revoke", rotated["key_id"], "--reason", "leak", env=store_env))
    assert isinstance(revoked, dict) and revoked["state"] == "revoked"
    listed = cli("keys", "list", env=store_env)
    states = {k["key_id"]: k["state"] for k in ok_json(listed)}  # type: ignore[attr-defined]
    assert states == {created["key_id"]: "verify-only", rotated["key_id"]: "revoked"}
    assert MASTER_KEY_HEX not in listed.stdout and "secret" not in listed.stdout
    assert "no root key" in assert_one_line_error(cli("keys", "rotate", "knope", env=store_env), 1)


def test_mint_verify_then_revoke_token_denies_it_and_what_derives_from_it(
    store_env: dict[str, str],
) -> None:
    """mint → verify allowed (exit 0); revoke --token of a delegated copy → denied `revoked` (exit 1)."""
    minted = ok_json(cli(
        "mint", "--customer", "acme", "--user", "alice", "--agent", "planner",
        "--resource", "crm/**", "--action", "read", "--action", "write", "--purpose", "sync",
        "--ttl", "600", "--json", env=store_env,
    ))  # fmt: skip
    assert isinstance(minted, dict)
    token = minted["token"]
    request = ("--resource", "crm/contacts/42", "--action", "read")

    allowed = cli("verify", token, *request, "--purpose", "sync", env=store_env)
    decision = ok_json(allowed)
    assert isinstance(decision, dict)
    assert (decision["allowed"], decision["reason"], decision["token_id"]) == (
        True,
        "ok",
        minted["token_id"],
    )
    denied = cli("verify", token, "--resource", "billing/1", "--action", "read", env=store_env)
    assert denied.returncode == 1 and json.loads(denied.stdout)["reason"] == "resource_denied"

    child = agentcaps.attenuate(token, delegate_to="fetcher")
    grandchild = agentcaps.attenuate(child, delegate_to="summarizer")
    assert (
        cli("verify", grandchild, *request, "--actor", "summarizer", env=store_env).returncode == 0
    )

    revocation = ok_json(
        cli("revoke", "--token", "-", "--reason", "test", env=store_env, stdin=child)
    )
    assert isinstance(revocation, dict) and revocation["kind"] == "branch"
    assert revocation["delegation_id"] == agentcaps.inspect(child)["delegation_ids"][-1]  # type: ignore[index]
    assert revocation["expires_at"] <= minted["expires_at"] and revocation["reason"] == "test"
    for revoked in (child, grandchild):
        result = cli("verify", revoked, *request, env=store_env)
        assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "revoked"
    assert cli("verify", token, *request, env=store_env).returncode == 0

    ok_json(cli("revoke", "--token", token, env=store_env))
    result = cli("verify", token, *request, env=store_env)
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "revoked"
    listed = ok_json(cli("revocations", "list", env=store_env))
    assert sorted(r["kind"] for r in listed) == ["branch", "token"]  # type: ignore[union-attr]


def test_revoke_key_denies_its_tokens_with_key_revoked(store_env: dict[str, str]) -> None:
    """revoke --key denies every token the key signed (`key_revoked`), not another customer's."""
    args = ("--user", "alice", "--agent", "planner", "--resource", "crm/**", "--action", "read",
            "--purpose", "sync", "--ttl", "60")  # fmt: skip
    acme = ok_json(cli("mint", "--customer", "acme", *args, "--json", env=store_env))
    other = cli("mint", "--customer", "globex", *args, env=store_env).stdout.strip()
    assert isinstance(acme, dict)
    revocation = ok_json(cli("revoke", "--key", acme["key_id"], env=store_env))
    assert revocation == {**revocation, "kind": "key", "key_id": acme["key_id"]}  # type: ignore[dict-item]
    request = ("--resource", "crm/x", "--action", "read")
    result = cli("verify", acme["token"], *request, env=store_env)
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "key_revoked"
    assert cli("verify", other, *request, env=store_env).returncode == 0


def test_mint_refuses_the_service_s_reserved_customer_and_audience(
    store_env: dict[str, str],
) -> None:
    """`agentcaps mint` makes no agent token for customer or audience `agentcaps`, as the service does not."""
    base = ["mint", "--user", "admin", "--agent", "a", "--resource", "agentcaps/**",
            "--action", "admin", "--purpose", "administer", "--ttl", "60"]  # fmt: skip
    for extra in (["--customer", "agentcaps"], ["--customer", "acme", "--audience", "agentcaps"]):
        result = cli(*base, *extra, env=store_env)
        assert "is reserved" in assert_one_line_error(result, 1)
        assert result.stdout == ""


def test_mint_audience_and_not_before_are_enforced_by_verify(store_env: dict[str, str]) -> None:
    """A token minted for an audience verifies only at that audience; --not-before is honoured."""
    start = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = cli(
        "mint", "--customer", "acme", "--user", "alice", "--agent", "planner",
        "--resource", "crm/**", "--action", "read", "--purpose", "sync", "--ttl", "60",
        "--audience", "gateway-a", env=store_env,
    ).stdout.strip()  # fmt: skip
    request = ("--resource", "crm/x", "--action", "read")
    assert (
        json.loads(cli("verify", token, *request, env=store_env).stdout)["reason"]
        == "audience_denied"
    )
    assert cli("verify", token, *request, "--audience", "gateway-a", env=store_env).returncode == 0
    later = cli(
        "mint", "--customer", "acme", "--user", "alice", "--agent", "planner",
        "--resource", "crm/**", "--action", "read", "--purpose", "sync", "--ttl", "60",
        "--not-before", start, env=store_env,
    ).stdout.strip()  # fmt: skip
    assert agentcaps.inspect(later)["caveats"][-1] == {  # type: ignore[index]
        "not_before": int(datetime.fromisoformat(start).timestamp())
    }


def test_revoke_user_customer_and_agent_record_what_they_touch(store_env: dict[str, str]) -> None:
    """revoke --customer [--user] and --agent store revocations of those kinds and deny tokens."""
    token = cli(
        "mint", "--customer", "acme", "--user", "alice", "--agent", "planner",
        "--resource", "crm/**", "--action", "read", "--purpose", "sync", "--ttl", "60",
        env=store_env,
    ).stdout.strip()  # fmt: skip
    user = ok_json(cli("revoke", "--customer", "acme", "--user", "alice", env=store_env))
    assert user == {**user, "kind": "user", "customer": "acme", "user": "alice"}  # type: ignore[dict-item]
    assert ok_json(cli("revoke", "--customer", "globex", env=store_env))["kind"] == "customer"  # type: ignore[index]
    assert ok_json(cli("revoke", "--agent", "rogue", env=store_env))["kind"] == "agent"  # type: ignore[index]
    scoped = ok_json(cli("revoke", "--customer", "globex", "--agent", "planner", env=store_env))
    assert scoped == {**scoped, "kind": "customer_agent", "customer": "globex", "agent": "planner"}  # type: ignore[dict-item]
    result = cli("verify", token, "--resource", "crm/x", "--action", "read", env=store_env)
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "revoked"


def test_revocations_recover_starts_a_recovery_epoch_and_says_what_it_means(
    redis_server: RedisServer, store_env: dict[str, str]
) -> None:
    """`revocations recover` marks a recovery epoch and warns that lost revocations stay lost."""
    result = cli("revocations", "recover", env=store_env)
    assert result.returncode == 0, result.stderr
    assert "stay lost" in result.stdout and "keys rotate" in result.stdout
    client = redis.Redis.from_url(redis_server.url)
    meta = client.hgetall(Layout().rv_meta)
    client.close()
    assert int(meta[b"recovery"]) > 0 and meta[b"epoch"]


@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf", "soon"])
def test_audit_follow_refuses_an_interval_that_is_not_a_number_of_seconds(interval: str) -> None:
    """--interval is checked with the other arguments: a usage error, not a failure mid-follow."""
    result = cli("audit", "--follow", "--interval", interval, env=clean_env())
    assert (
        result.returncode == 2
        and "--interval" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_a_token_passed_where_it_does_not_belong_is_not_printed_back(stores: Stores) -> None:
    """argparse quotes a bad value in its error; a token there is masked."""
    token = stores.minter().mint(**SCOPE)
    for args in (
        ["audit", "trace", token],
        ["audit", "--token-id", token],
        ["inspect", token, token],
    ):
        result = cli(*args, env=clean_env())
        assert result.returncode == 2 and token not in result.stderr, args
        assert "[token]" in result.stderr


def test_audit_verify_never_reports_an_all_clear_it_did_not_check(
    redis_server: RedisServer, store_env: dict[str, str]
) -> None:
    """Through --url, on memory://, or on a store without events: an error, never 'every chain holds'."""
    through = cli("audit", "--url", "http://127.0.0.1:1", "verify", env=store_env)
    assert "drop --url" in assert_one_line_error(through, 2)
    alone = cli("audit", "verify", env=clean_env())
    assert "needs the store" in assert_one_line_error(alone, 2)
    empty = cli("audit", "verify", "--redis", redis_server.url.rsplit("/", 1)[0] + "/9",
                env=store_env)  # fmt: skip
    assert empty.returncode == 3 and "nothing was checked" in empty.stdout, empty
    assert "every chain holds" not in empty.stdout


def test_keys_create_refuses_an_empty_customer_rather_than_rotate_the_platform_key(
    store_env: dict[str, str],
) -> None:
    """--customer "" is no customer's name; the platform key is made only without --customer."""
    before = ok_json(cli("keys", "list", env=store_env))
    assert "customer must be" in assert_one_line_error(
        cli("keys", "create", "--customer", "", env=store_env), 1
    )
    assert ok_json(cli("keys", "list", env=store_env)) == before
