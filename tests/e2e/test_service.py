"""`agentcaps serve` as a user runs it: a subprocess on a real redis-server, driven over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import agentcaps
from tests.conftest import MASTER_KEY, SCOPE, RedisServer
from tests.e2e.service import Service, clean_env

GATEWAY = "crm-gateway"


def run_cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcaps", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@dataclass
class Deployment:
    service: Service
    env: dict[str, str]
    admin: str
    http: httpx.Client

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, json=body, headers=headers)

    def post(self, path: str, body: Any = None, token: str | None = None) -> httpx.Response:
        return self.call("POST", path, body, token)

    def verify(self, token: str, resource: str = "crm/contacts/42", **extra: str) -> dict[str, Any]:
        body = {"token": token, "resource": resource, "action": "read", **extra}
        response = self.post("/v1/verify", body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def issuer(self, customer: str = "acme") -> str:
        response = self.post("/v1/issuers", {"customer": customer, "ttl": 3600}, self.admin)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def mint(self, issuer: str, **overrides: Any) -> dict[str, Any]:
        response = self.post("/v1/tokens", {**SCOPE, **overrides}, issuer)
        assert response.status_code == 201, response.text
        return dict(response.json())


def deployment_env(server: RedisServer, **extra: str) -> dict[str, str]:
    return clean_env(
        AGENTCAPS_REDIS_URL=server.url,
        AGENTCAPS_MASTER_KEY=MASTER_KEY.hex(),
        AGENTCAPS_AUDIENCE=GATEWAY,
        **extra,
    )


@pytest.fixture
def deployment(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    """`agentcaps serve` on a real Redis, and an admin token from `agentcaps admin-token`."""
    env = deployment_env(redis_server)
    service = Service(tmp_path, env)
    service.start()
    try:
        made = run_cli("admin-token", "--ttl", "600", env=env)
        assert made.returncode == 0, made.stderr
        admin = made.stdout.strip()
        assert made.stdout == admin + "\n" and admin.startswith("agc_")
        with httpx.Client(base_url=service.url, timeout=10) as http:
            yield Deployment(service, env, admin, http)
    finally:
        service.stop()


def test_the_whole_story_over_http(deployment: Deployment) -> None:
    """Admin → issuer → mint for alice's planner → offline delegation → verify allows and denies."""
    d = deployment
    issuer = d.issuer("acme")
    minted = d.mint(issuer, audience=[GATEWAY], max_delegations=2)
    planner = minted["token"]

    # The planner narrows its token offline and hands it to a fetcher, which hands it on.
    fetcher = agentcaps.attenuate(planner, resources=["crm/contacts/*"], actions=["read"],
                                  ttl=120, delegate_to="fetcher")  # fmt: skip
    summarizer = agentcaps.attenuate(fetcher, delegate_to="summarizer", max_delegations=0)

    allowed = d.verify(summarizer, actor="summarizer", purpose="sync")
    assert (allowed["allowed"], allowed["reason"]) == (True, "ok")
    assert allowed["chain"] == ["planner", "fetcher", "summarizer"]
    assert (allowed["customer"], allowed["user"], allowed["token_id"]) == (
        "acme",
        "alice",
        minted["token_id"],
    )
    assert len(allowed["delegation_ids"]) == 2

    assert d.verify(fetcher, resource="crm/deals/1")["reason"] == "resource_denied"
    assert d.post("/v1/verify", {"token": fetcher, "resource": "crm/contacts/1",
                                 "action": "write"}).json()["reason"] == "action_denied"  # fmt: skip
    assert d.verify(summarizer, actor="fetcher")["reason"] == "actor_mismatch"
    assert d.verify(summarizer, purpose="marketing")["reason"] == "purpose_denied"
    too_deep = agentcaps.attenuate(summarizer, delegate_to="rogue")
    assert d.verify(too_deep)["reason"] == "delegation_limit"
    tampered = fetcher[:-2] + ("AA" if not fetcher.endswith("AA") else "BB")
    assert d.verify(tampered)["reason"] == "bad_signature"

    # Forward-auth decides the same and says who is acting.
    authz = d.http.get(
        "/v1/authz/crm/contacts/42", headers={"Authorization": f"Bearer {summarizer}"}
    )
    assert authz.status_code == 200 and authz.headers["x-agentcaps-agent"] == "summarizer"
    assert authz.headers["x-agentcaps-chain"] == "planner,fetcher,summarizer"

    # The fetcher's branch is revoked by the fetcher's own token: the planner lives on.
    revoked = d.post("/v1/revocations", {"token": fetcher, "reason": "task done"}, fetcher)
    assert revoked.status_code == 201 and revoked.json()["kind"] == "branch"
    assert d.verify(fetcher)["reason"] == "revoked"
    assert d.verify(summarizer)["reason"] == "revoked"
    assert d.verify(planner)["allowed"] is True

    # The service's log holds no token.
    log = d.service.output()
    for token in (d.admin, issuer, planner, fetcher, summarizer):
        assert token not in log


def test_each_kind_of_revocation_takes_effect(deployment: Deployment) -> None:
    """token, token_id, delegation_id, customer, customer+user and agent revocations each deny."""
    d = deployment
    acme = d.issuer("acme")
    cases: list[tuple[dict[str, Any], str, str]] = []  # (revocation body, token, bearer)

    tok = d.mint(acme)["token"]
    cases.append(({"token": tok}, tok, acme))
    by_id = d.mint(acme)
    cases.append(({"token_id": by_id["token_id"]}, by_id["token"], d.admin))
    branch = agentcaps.attenuate(d.mint(acme)["token"], delegate_to="fetcher")
    delegation_id = agentcaps.inspect(branch)["delegation_ids"][-1]  # type: ignore[index]
    cases.append(({"delegation_id": delegation_id}, branch, d.admin))
    initech = d.mint(d.issuer("initech"), customer="initech")["token"]
    cases.append(({"customer": "initech"}, initech, d.admin))
    bob = d.mint(acme, user="bob")["token"]
    cases.append(({"customer": "acme", "user": "bob"}, bob, acme))
    crawler = d.mint(acme, agent="crawler")["token"]
    cases.append(({"agent": "crawler"}, crawler, d.admin))
    bystander = d.mint(acme, user="carol")["token"]

    for body, token, bearer in cases:
        assert d.verify(token)["allowed"] is True
        response = d.post("/v1/revocations", {**body, "reason": "e2e"}, bearer)
        assert response.status_code == 201, (body, response.text)
        assert d.verify(token)["reason"] == "revoked", body
    assert d.verify(bystander)["allowed"] is True
    listed = d.call("GET", "/v1/revocations", token=d.admin).json()["revocations"]
    assert {r["kind"] for r in listed} == {"token", "delegation", "customer", "user", "agent"}
    assert all(r["reason"] == "e2e" for r in listed)


def test_a_key_revocation_kills_all_of_its_tokens(deployment: Deployment) -> None:
    """Revoking acme's key denies every token it signed (key_revoked); globex's tokens live."""
    d = deployment
    acme, globex = d.issuer("acme"), d.issuer("globex")
    tokens = [d.mint(acme, user=u) for u in ("alice", "bob", "carol")]
    delegated = agentcaps.attenuate(tokens[0]["token"], delegate_to="fetcher")
    other = d.mint(globex, customer="globex")["token"]
    kid = tokens[0]["key_id"]
    assert {t["key_id"] for t in tokens} == {kid}

    response = d.post("/v1/revocations", {"key_id": kid, "reason": "leaked"}, d.admin)
    assert response.status_code == 201 and response.json()["kind"] == "key"
    for token in [t["token"] for t in tokens] + [delegated]:
        assert d.verify(token)["reason"] == "key_revoked"
    assert d.verify(other)["allowed"] is True
    keys = {
        k["key_id"]: k["state"] for k in d.call("GET", "/v1/keys", token=d.admin).json()["keys"]
    }
    assert keys[kid] == "revoked"
    # Minting for acme again uses a fresh key.
    assert d.mint(acme)["key_id"] != kid


def test_routes_refuse_no_token_agent_tokens_and_other_customers(deployment: Deployment) -> None:
    """No token → 401; an agent token or another customer's issuer → 403, on admin and issuer routes."""
    d = deployment
    agent = d.mint(d.issuer("acme"))["token"]
    globex = d.issuer("globex")
    admin_routes = [("POST", "/v1/issuers", {"customer": "acme", "ttl": 60}),
                    ("GET", "/v1/keys", None), ("POST", "/v1/keys", {}),
                    ("GET", "/v1/revocations", None),
                    ("POST", "/v1/revocations", {"agent": "planner"})]  # fmt: skip
    issuer_routes = [("POST", "/v1/tokens", SCOPE),
                     ("POST", "/v1/revocations", {"customer": "acme"})]  # fmt: skip
    for method, path, body in admin_routes + issuer_routes:
        none = d.call(method, path, body)
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
        assert d.call(method, path, body, agent).status_code == 403, path
    for method, path, body in admin_routes:
        assert d.call(method, path, body, globex).status_code == 403, path
    for method, path, body in issuer_routes:
        response = d.call(method, path, body, globex)
        assert response.status_code == 403 and response.json()["reason"] == "resource_denied"


def test_a_token_can_revoke_itself_and_nothing_else(deployment: Deployment) -> None:
    """An agent token revokes itself (201); every other revocation it asks for is 403."""
    d = deployment
    acme = d.issuer("acme")
    mine, other = d.mint(acme), d.mint(acme, agent="writer")
    for body in ({"token": other["token"]}, {"token_id": other["token_id"]},
                 {"customer": "acme"}, {"agent": "writer"}, {"key_id": other["key_id"]}):  # fmt: skip
        assert d.post("/v1/revocations", body, mine["token"]).status_code == 403, body
    assert d.verify(other["token"])["allowed"] is True
    assert d.post("/v1/revocations", {"token": mine["token"]}, mine["token"]).status_code == 201
    assert d.verify(mine["token"])["reason"] == "revoked"


def test_the_cli_goes_through_the_service_with_url(deployment: Deployment, tmp_path: Path) -> None:
    """mint/verify/revoke --url: AGENTCAPS_TOKEN or --token-file as credential, or a token's own."""
    d = deployment
    env = {**d.env, "AGENTCAPS_TOKEN": d.issuer("acme")}
    minted = run_cli(
        "mint", "--url", d.service.url, "--customer", "acme", "--user", "alice",
        "--agent", "planner", "--resource", "crm/**", "--action", "read", "--purpose", "sync",
        "--ttl", "300", env=env,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    request = ("--resource", "crm/a", "--action", "read")
    verified = run_cli("verify", "--url", d.service.url, "-", *request, env=d.env, stdin=token)
    assert verified.returncode == 0 and json.loads(verified.stdout)["allowed"] is True
    foreign = run_cli(
        "mint", "--url", d.service.url, "--customer", "globex", "--user", "u", "--agent", "a",
        "--resource", "x", "--action", "read", "--purpose", "p", "--ttl", "60", env=env,
    )  # fmt: skip
    assert foreign.returncode == 1 and "403 forbidden" in foreign.stderr
    assert "Traceback" not in foreign.stderr
    revoked = run_cli("revoke", "--url", d.service.url, "--token", "-", env=d.env, stdin=token)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["kind"] == "token"
    denied = run_cli("verify", "--url", d.service.url, token, *request, env=d.env)
    assert denied.returncode == 1 and json.loads(denied.stdout)["reason"] == "revoked"
    # --token-file instead of AGENTCAPS_TOKEN: the issuer revokes one of acme's users.
    credential = tmp_path / "issuer.token"
    credential.write_text(env["AGENTCAPS_TOKEN"] + "\n")
    by_user = run_cli(
        "revoke", "--url", d.service.url, "--token-file", str(credential),
        "--customer", "acme", "--user", "bob", env=d.env,
    )  # fmt: skip
    assert by_user.returncode == 0, by_user.stderr
    assert json.loads(by_user.stdout)["kind"] == "user"
    no_credential = run_cli("revoke", "--url", d.service.url, "--agent", "planner", env=d.env)
    assert no_credential.returncode == 1 and "401 unauthenticated" in no_credential.stderr


def test_readiness_and_decisions_fail_closed_while_redis_is_down(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """Redis stopped → /readyz 503, verify revocation_unavailable, forward-auth 503; /healthz 200."""
    d = deployment
    token = d.mint(d.issuer("acme"))["token"]
    assert d.http.get("/readyz").status_code == 200
    redis_server.stop()
    ready = d.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")
    assert d.verify(token)["reason"] == "revocation_unavailable"
    authz = d.http.get("/v1/authz/crm/a", headers={"Authorization": f"Bearer {token}"})
    assert authz.status_code == 503
    assert d.http.get("/healthz").status_code == 200


def test_serve_refuses_to_start_with_the_wrong_master_key(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A master key other than the store's stops `serve` with one clear line, exit 1."""
    env = deployment_env(redis_server)
    assert run_cli("admin-token", env=env).returncode == 0  # the store now has its master key
    wrong = {**env, "AGENTCAPS_MASTER_KEY": "11" * 32}
    result = subprocess.run(
        [sys.executable, "-m", "agentcaps", "serve", "--port", "1"],
        capture_output=True, text=True, env=wrong, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "master key" in result.stderr and "Traceback" not in result.stderr


def test_several_workers_share_one_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """--workers 2: every worker, on its own socket, sees the same keys and revocations; SIGTERM stops all."""
    env = deployment_env(redis_server)
    service = Service(tmp_path, env, "--workers", "2")
    service.start(timeout=40)
    try:
        admin = run_cli("admin-token", env=env).stdout.strip()
        with httpx.Client(base_url=service.url, timeout=10) as http:
            auth = {"Authorization": f"Bearer {admin}"}
            issuer = http.post("/v1/issuers", json={"customer": "acme", "ttl": 60}, headers=auth)
            token = http.post(
                "/v1/tokens",
                json=SCOPE,
                headers={"Authorization": f"Bearer {issuer.json()['token']}"},
            ).json()["token"]
            body = {"token": token, "resource": "crm/a", "action": "read"}
            assert all(http.post("/v1/verify", json=body).json()["allowed"] for _ in range(8))
    finally:
        status = service.stop()
    assert status == 0, service.output()  # SIGTERM stops every worker cleanly


def test_memory_serve_prints_a_bootstrap_admin_token_and_warns(tmp_path: Path) -> None:
    """Without a store, serve says loudly that nothing persists and prints a working admin token."""
    service = Service(tmp_path, clean_env())
    service.start()
    try:
        output = service.output()
        assert "NOTHING PERSISTS" in output
        admin = next(w for w in output.split() if w.startswith("agc_"))
        keys = httpx.get(service.url + "/v1/keys", headers={"Authorization": f"Bearer {admin}"})
        assert keys.status_code == 200
    finally:
        service.stop()


def test_memory_serve_refuses_several_workers() -> None:
    """--workers 2 on memory:// is a usage error: each worker would hold its own keys."""
    result = run_cli("serve", "--workers", "2", env=clean_env())
    assert result.returncode == 2 and "AGENTCAPS_REDIS_URL" in result.stderr


def test_admin_token_needs_a_real_store() -> None:
    """`admin-token` on memory:// is an error pointing to serve's bootstrap token."""
    result = run_cli("admin-token", env=clean_env())
    assert result.returncode == 1 and "bootstrap" in result.stderr


def test_several_workers_on_a_port_in_use_is_a_one_line_error(redis_server: RedisServer) -> None:
    """The supervisor binds the port before starting workers: taken, it says so and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = deployment_env(redis_server)
        result = run_cli("serve", "--workers", "2", "--port", str(port), env=env)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
