"""The audit trail end to end: `agentcaps serve` on a real redis-server, the CLI reading and checking it."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import msgpack
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import agentcaps
from agentcaps.audit import AuditQuery, HashChain, pack_fields, verification_fields
from agentcaps.decision import Decision, Reason
from agentcaps.stores.audit import AuditLayout, RedisAuditLog
from tests.conftest import RedisServer
from tests.e2e.service import Service
from tests.e2e.test_service import GATEWAY, Deployment, deployment_env, run_cli


def start(server: RedisServer, tmp_path: Path) -> Deployment:
    env = deployment_env(server, AGENTCAPS_AUDIT_SPOOL=str(tmp_path / "spool"))
    service = Service(tmp_path, env)
    service.start()
    made = run_cli("admin-token", "--ttl", "600", env=env)
    assert made.returncode == 0, made.stderr
    return Deployment(
        service, env, made.stdout.strip(), httpx.Client(base_url=service.url, timeout=10)
    )


@pytest.fixture
def deployment(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    d = start(redis_server, tmp_path)
    try:
        yield d
    finally:
        d.http.close()
        d.service.stop()


def audit(d: Deployment, **params: Any) -> list[dict[str, Any]]:
    response = d.http.get(
        "/v1/audit", params=params, headers={"Authorization": f"Bearer {d.admin}"}
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def metrics(d: Deployment) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = d.http.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_a_tokens_whole_story_is_in_the_trail_and_its_trace(deployment: Deployment) -> None:
    """Mint, two delegations, allowed and denied verifications, a revocation: queried, traced, checked."""
    d = deployment
    issuer = d.issuer("acme")
    minted = d.mint(issuer, audience=[GATEWAY])
    planner, token_id = minted["token"], minted["token_id"]
    fetcher = agentcaps.attenuate(planner, resources=["crm/contacts/*"], delegate_to="fetcher")
    analyst = agentcaps.attenuate(planner, actions=["read"], delegate_to="analyst")

    def verify(token: str, resource: str, action: str = "read", request_id: str = "") -> str:
        body = {"token": token, "resource": resource, "action": action, "purpose": "sync"}
        headers = {"X-Request-Id": request_id} if request_id else {}
        answer = d.http.post("/v1/verify", json=body, headers=headers)
        assert answer.headers["x-request-id"] == (request_id or answer.headers["x-request-id"])
        return str(answer.json()["reason"])

    assert verify(planner, "crm/deals/9", request_id="planner-1") == "ok"
    assert verify(fetcher, "crm/contacts/42", request_id="fetcher-1") == "ok"
    assert verify(fetcher, "crm/deals/1", request_id="fetcher-2") == "resource_denied"
    authz = d.http.get("/v1/authz/crm/deals/3", headers={"Authorization": f"Bearer {analyst}",
                                                         "X-Request-Id": "analyst-1"})  # fmt: skip
    assert authz.status_code == 200
    assert verify(analyst, "crm/deals/3", action="write", request_id="analyst-2") == "action_denied"
    revoked = d.post("/v1/revocations", {"token": fetcher, "reason": "task done"}, fetcher)
    assert revoked.status_code == 201
    assert verify(fetcher, "crm/contacts/42", request_id="fetcher-3") == "revoked"

    events = audit(d, token_id=token_id)
    summary = [(e["kind"], e.get("reason"), e.get("request_id")) for e in events]
    assert summary == [
        ("mint", "ok", summary[0][2]),
        ("verify", "ok", "planner-1"),
        ("verify", "ok", "fetcher-1"),
        ("verify", "resource_denied", "fetcher-2"),
        ("verify", "ok", "analyst-1"),
        ("verify", "action_denied", "analyst-2"),
        ("revoke", None, summary[6][2]),
        ("verify", "revoked", "fetcher-3"),
    ]
    mint, by_fetcher, revoke = events[0], events[2], events[6]
    assert (mint["customer"], mint["user"], mint["agent"], mint["audience"]) == (
        "acme", "alice", "planner", [GATEWAY],
    )  # fmt: skip
    assert mint["caller"].startswith("acme/issuer") and mint["key_id"] == minted["key_id"]
    assert by_fetcher["chain"] == ["planner", "fetcher"] and by_fetcher["audience"] == [GATEWAY]
    assert by_fetcher["resource"] == "crm/contacts/42" and by_fetcher["purpose"] == "sync"
    assert by_fetcher["latency_us"] > 0
    assert events[4]["chain"] == ["planner", "analyst"]
    assert revoke["why"] == "task done" and revoke["delegation_ids"] == by_fetcher["delegation_ids"]
    assert "via planner>fetcher" in revoke["caller"]

    # The CLI reads the same trail from Redis, and traces the token.
    listed = run_cli("audit", "--token-id", token_id, env=d.env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [
        e["id"] for e in events
    ]
    traced = run_cli("audit", "trace", token_id, env=d.env)
    assert traced.returncode == 0, traced.stderr
    lines = traced.stdout.splitlines()
    assert lines[3] == "alice → planner"
    fetcher_at = next(i for i, line in enumerate(lines) if "alice → planner → fetcher " in line)
    under_fetcher = []
    for line in lines[fetcher_at + 1 :]:
        if not line.startswith("│  ") and not line.startswith("   "):
            break
        under_fetcher.append(line)
    assert [("fetcher-" in line) for line in under_fetcher] == [True, True, False, True]
    assert "revoke" in under_fetcher[2] and "task done" in under_fetcher[2]
    tree = json.loads(run_cli("audit", "trace", token_id, "--json", env=d.env).stdout)
    branches = {
        item["branch"]["agent"]: [e["event"]["request_id"] for e in item["branch"]["items"]
                                  if "event" in e and e["event"]["kind"] == "verify"]
        for item in tree["root"]["items"] if "branch" in item
    }  # fmt: skip
    assert branches == {"fetcher": ["fetcher-1", "fetcher-2", "fetcher-3"],
                        "analyst": ["analyst-1", "analyst-2"]}  # fmt: skip

    # Through the service too (--url, an admin token): the same events, the same tree.
    remote_env = {**d.env, "AGENTCAPS_TOKEN": d.admin}
    remote = run_cli("audit", "--url", d.service.url, "--token-id", token_id, env=remote_env)
    assert remote.returncode == 0, remote.stderr
    assert [json.loads(line)["id"] for line in remote.stdout.splitlines()] == [
        e["id"] for e in events
    ]
    remote_trace = run_cli("audit", "trace", token_id, "--url", d.service.url, env=remote_env)
    assert remote_trace.stdout == traced.stdout
    # And as acme's issuer, whose view names events by opaque ids: the same tree.
    issuer_env = {**d.env, "AGENTCAPS_TOKEN": d.issuer("acme")}
    issuer_trace = run_cli("audit", "trace", token_id, "--url", d.service.url, env=issuer_env)
    assert issuer_trace.returncode == 0, issuer_trace.stderr
    assert issuer_trace.stdout == traced.stdout

    # /metrics scrapes cleanly from the real service.
    samples = metrics(d)
    assert samples[("agentcaps_verifications_total", (("reason", "revoked"),))] == 1
    assert samples[("agentcaps_audit_events_pending", ())] == 0

    checked = run_cli("audit", "verify", env=d.env)
    assert checked.returncode == 0 and "every chain holds" in checked.stdout, checked.stdout


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """Lines of `stream` as they come, read by a thread (so a test can wait with a timeout)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("through", ["store", "service"])
def test_audit_follow_prints_each_new_event_once_until_interrupted(
    deployment: Deployment, through: str
) -> None:
    """`agentcaps audit --follow`: what matches now, then every new match once, then ^C exits 130."""
    d = deployment
    minted = d.mint(d.issuer("acme"), audience=[GATEWAY])
    args = ["audit", "--follow", "--interval", "0.1", "--token-id", minted["token_id"]]
    env = d.env
    if through == "service":
        args += ["--url", d.service.url]
        env = {**d.env, "AGENTCAPS_TOKEN": d.admin}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentcaps", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = _lines(process.stdout)
        assert json.loads(lines.get(timeout=30))["kind"] == "mint"
        for n in range(3):
            d.verify(minted["token"], resource=f"crm/contacts/{n}")
        followed = [json.loads(lines.get(timeout=30)) for _ in range(3)]
        assert [e["resource"] for e in followed] == [f"crm/contacts/{n}" for n in range(3)]
        d.verify(minted["token"], resource="crm/contacts/3")
        assert json.loads(lines.get(timeout=30))["resource"] == "crm/contacts/3"
        time.sleep(0.5)  # several more polls: nothing is printed twice
        assert lines.empty()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr


def test_editing_one_stored_event_makes_audit_verify_fail_naming_it(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """Rewriting the stream with one event's resource changed: `audit verify` exits 1 naming it."""
    d = deployment
    token = d.mint(d.issuer("acme"), audience=[GATEWAY])["token"]
    for n in range(3):
        d.verify(token, resource=f"crm/contacts/{n}")
    target = next(e for e in audit(d, kind="verify") if e.get("resource") == "crm/contacts/1")
    d.service.stop()  # its recorder flushes; nothing writes while we tamper
    client = redis.Redis.from_url(redis_server.url)
    events_key = AuditLayout().events
    entries = client.xrange(events_key)
    client.delete(events_key)
    for entry, fields in entries:
        body = fields[b"e"]
        if entry.decode() == target["entry"]:
            body = body.replace(b"crm/contacts/1", b"crm/contacts/7")
        client.xadd(events_key, {"e": body, "h": fields[b"h"]})
    result = run_cli("audit", "verify", env=d.env)
    assert result.returncode == 1, result.stdout
    assert f"first break: event {target['id']}" in result.stdout and "altered" in result.stdout
    assert "Traceback" not in result.stderr


def test_events_made_while_redis_is_down_reach_it_when_it_returns(
    durable_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis stopped mid-run: verifications go on (fail closed), their events wait, then all arrive."""
    d = start(durable_redis_server, tmp_path)
    try:
        token = d.mint(d.issuer("acme"), audience=[GATEWAY])["token"]
        token_id = agentcaps.inspect(token)["token_id"]
        assert d.verify(token)["allowed"] is True  # the key is now cached by the service
        assert audit(d, token_id=token_id)  # and the recorder flushed
        durable_redis_server.stop()
        made = 0
        for n in range(12):
            assert (
                d.verify(token, resource=f"crm/contacts/{n}")["reason"] == "revocation_unavailable"
            )
            made += 1
        for n in range(3):
            answer = d.http.get(
                f"/v1/authz/crm/x/{n}", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 503
            made += 1
        assert metrics(d)[("agentcaps_audit_events_pending", ())] == made
        ready = d.http.get("/readyz")
        assert ready.status_code == 503 and f"{made} pending" in ready.json()["checks"]["audit"]
        durable_redis_server.start()
        deadline = time.monotonic() + 30
        while metrics(d)[("agentcaps_audit_events_pending", ())] and time.monotonic() < deadline:
            time.sleep(0.1)
        down = [e for e in audit(d, token_id=token_id, kind="verify", limit=100)
                if e.get("reason") == "revocation_unavailable"]  # fmt: skip
        assert len(down) == made
        assert len({e["id"] for e in down}) == made  # none twice
        checked = run_cli("audit", "verify", env=d.env)
        assert checked.returncode == 0, checked.stdout
        # Spool files may stay (emptied, the writer's own) but hold nothing.
        assert all(f.stat().st_size == 0 for f in (tmp_path / "spool").rglob("*.spool"))
    finally:
        d.http.close()
        d.service.stop()


def test_retention_trims_the_stream_and_the_chains_still_check(redis_server: RedisServer) -> None:
    """With a small MAXLEN the oldest entries go (approximately); what is left still verifies."""
    client = redis.Redis.from_url(redis_server.url)
    log = RedisAuditLog(client, max_len=1000, max_age=3600)
    chain = HashChain("wretain")
    decision = Decision(True, Reason.OK, "ab" * 16, "k1", "acme", "alice", ("planner",))
    packed = pack_fields(verification_fields(decision, "crm/a", "read", None, None, None, 1e-5,
                                             time.time(), None))  # fmt: skip
    for _ in range(10):
        log.append(chain.seal([packed] * 500))
    length = log.info()["length"]
    assert 1000 <= length < 2000
    report = log.check()
    assert report.ok and report.writers["wretain"][1] == 4999
    assert any("trimmed by retention" in note for note in report.notes)
    assert msgpack.unpackb(next(log.scan()).body)[1] == "wretain"


def test_cursors_at_either_end_of_the_stream_give_empty_pages(redis_server: RedisServer) -> None:
    """Nothing is before 0-0 or after the last possible id; a real Redis refuses such exclusive bounds."""
    client = redis.Redis.from_url(redis_server.url)
    log = RedisAuditLog(client, layout=AuditLayout("cursor-test"))
    log.append(HashChain("wa").seal([pack_fields(["key", 1.0] + [None] * 28)]))
    query = AuditQuery()
    assert log.query(query, before="0-0").events == []
    assert log.query(query, after=f"{2**64 - 1}-{2**64 - 1}").events == []
    assert len(log.query(query).events) == 1


def test_the_mint_of_an_admin_token_records_what_it_allows(deployment: Deployment) -> None:
    """`agentcaps admin-token` is the most powerful mint: its event names its whole scope."""
    d = deployment
    token_id = agentcaps.inspect(d.admin)["token_id"]
    (minted,) = [
        e for e in audit(d, kind="mint", customer="agentcaps") if e["token_id"] == token_id
    ]
    assert minted["resources"] == ["agentcaps/**"] and minted["audience"] == ["agentcaps"]
    assert set(minted["actions"]) == {"admin", "mint", "revoke"}
    assert minted["purposes"] == ["administer"] and minted["agent"] == "admin"
    assert minted["allowed"] is True and minted["key_id"] == agentcaps.inspect(d.admin)["key_id"]
