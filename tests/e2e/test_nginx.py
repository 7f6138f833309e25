"""A real nginx with `auth_request` to agentcaps forward-auth, in front of a small upstream."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import httpx
import pytest

import agentcaps
from tests.e2e.service import Service, clean_env
from tests.servers import free_port

GATEWAY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "gateway.conf"


def gateway_conf(directory: Path, port: int, service_port: int, upstream_port: int) -> str:
    """deploy/nginx/gateway.conf as shipped, with this test's addresses, files and user."""
    text = GATEWAY_CONF.read_text()
    local = {
        "server agentcaps:8080;": f"server 127.0.0.1:{service_port};",
        "server whoami:80;": f"server 127.0.0.1:{upstream_port};",
        "listen 8000;": f"listen 127.0.0.1:{port};",
        "worker_processes auto;": "worker_processes 1;\n"
        # Workers of a root master run as nobody, who cannot enter tmp_path.
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {directory}/nginx.pid;",
        "error_log /dev/stderr notice;": f"error_log {directory}/error.log info;",
        "access_log /dev/stdout agentcaps;": f"access_log {directory}/access.log agentcaps;\n"
        + "".join(
            f"    {kind}_temp_path {directory}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
    }
    for shipped, here in local.items():
        assert shipped in text, f"gateway.conf no longer has {shipped!r}"
        text = text.replace(shipped, here)
    return text


class Upstream:
    """A tiny HTTP server that records every request it receives and echoes its headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append((self.command, self.path, headers))
                body = json.dumps(headers).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(
                "nginx is not installed; scripts/test.sh installs it from Debian's packages"
            )
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


@dataclass
class Stack:
    url: str
    port: int
    upstream: Upstream
    issuer: str
    service: Service

    def mint(self, **scope: object) -> str:
        body = {"customer": "acme", "user": "alice", "agent": "planner",
                "resources": ["crm/**"], "actions": ["read"], "purposes": ["sync"], "ttl": 300,
                **scope}  # fmt: skip
        response = httpx.post(
            self.service.url + "/v1/tokens",
            json=body,
            headers={"Authorization": f"Bearer {self.issuer}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """nginx (auth_request) → agentcaps serve (memory://) for decisions → the upstream."""
    binary = nginx_binary()
    service = Service(tmp_path, clean_env())
    service.start()
    nginx: subprocess.Popen[bytes] | None = None
    try:
        admin = next(w for w in service.output().split() if w.startswith("agc_"))
        issuer = httpx.post(
            service.url + "/v1/issuers",
            json={"customer": "acme", "ttl": 600},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["token"]
        with Upstream() as upstream:
            directory = tmp_path / "nginx"
            directory.mkdir()
            port = free_port()
            conf = directory / "nginx.conf"
            conf.write_text(gateway_conf(directory, port, service.port, upstream.port))
            error_log = directory / "error.log"
            nginx = subprocess.Popen(
                [binary, "-p", str(directory), "-c", str(conf), "-e", str(error_log),
                 "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                    break
                except httpx.HTTPError:
                    if nginx.poll() is not None or time.monotonic() > deadline:
                        log = error_log.read_text(errors="replace") if error_log.exists() else ""
                        raise RuntimeError(f"nginx did not start:\n{log}") from None
                    time.sleep(0.05)
            upstream.seen.clear()
            yield Stack(f"http://127.0.0.1:{port}", port, upstream, issuer, service)
    finally:
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGTERM)
            nginx.wait(timeout=10)
        service.stop()


def raw_get(stack: Stack, target: str, headers: dict[str, str]) -> int:
    """GET with the request target exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_an_allowed_request_reaches_the_upstream_with_identity_headers(stack: Stack) -> None:
    """A token allowing GET /crm/contacts/42 passes; the upstream sees who acts, for whom, why."""
    token = stack.mint()
    response = httpx.get(
        stack.url + "/crm/contacts/42?expand=1",
        headers={"Authorization": f"Bearer {token}", "X-Agentcaps-User": "mallory"},
    )
    assert response.status_code == 200, response.text
    [(method, path, headers)] = stack.upstream.seen
    assert (method, path) == ("GET", "/crm/contacts/42?expand=1")
    assert headers["x-agentcaps-customer"] == "acme"
    assert headers["x-agentcaps-user"] == "alice"  # the client's own value is replaced
    assert headers["x-agentcaps-agent"] == "planner"
    assert headers["x-agentcaps-chain"] == "planner"
    assert len(headers["x-agentcaps-token-id"]) == 32
    assert headers["x-agentcaps-purpose"] == "sync"


def test_denied_requests_never_reach_the_upstream(stack: Stack) -> None:
    """No token → 401 with WWW-Authenticate; wrong resource or method → 403; upstream sees none."""
    token = stack.mint()
    auth = {"Authorization": f"Bearer {token}"}
    none = httpx.get(stack.url + "/crm/contacts/42")
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert (
        httpx.get(
            stack.url + "/crm/contacts/42", headers={"Authorization": "Bearer agc_x"}
        ).status_code
        == 401
    )
    assert httpx.get(stack.url + "/billing/1", headers=auth).status_code == 403
    assert (
        httpx.post(stack.url + "/crm/contacts/42", headers=auth, content=b"{}").status_code == 403
    )
    assert httpx.delete(stack.url + "/crm/contacts/42", headers=auth).status_code == 403
    assert stack.upstream.seen == []


def test_path_tricks_and_spoofed_headers_never_reach_the_upstream(stack: Stack) -> None:
    """Encoded dot-dots, encoded slashes and a client's own X-Forwarded-Uri are denied at nginx."""
    token = stack.mint(resources=["crm/**"])
    auth = {"Authorization": f"Bearer {token}"}
    for target in (
        "/crm/%2e%2e/billing/1",
        "/crm/..%2fbilling/1",
        "/crm%2Fbilling",
        "/crm/..;/billing",
    ):
        assert raw_get(stack, target, auth) in (400, 403), target
    spoof = {**auth, "X-Forwarded-Uri": "/crm/contacts/1", "X-Forwarded-Method": "GET"}
    assert raw_get(stack, "/billing/1", spoof) == 403
    assert stack.upstream.seen == []


def test_a_revoked_token_is_stopped_at_the_gateway(stack: Stack) -> None:
    """Once a token revokes itself, nginx answers 401 and the upstream sees nothing more."""
    token = stack.mint()
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(stack.url + "/crm/a", headers=auth).status_code == 200
    revoked = httpx.post(stack.service.url + "/v1/revocations", json={"token": token}, headers=auth)
    assert revoked.status_code == 201
    assert httpx.get(stack.url + "/crm/a", headers=auth).status_code == 401
    assert len(stack.upstream.seen) == 1


def test_the_gateway_answers_why_and_keeps_tokens_out_of_logs_and_the_upstream(
    stack: Stack, tmp_path: Path
) -> None:
    """A refusal carries X-Agentcaps-Reason; a token in the query is refused and never logged;
    the upstream gets neither the bearer token nor a client's own X-Agentcaps-* headers."""
    token = stack.mint()
    auth = {"Authorization": f"Bearer {token}"}
    refused = httpx.get(stack.url + "/billing/1", headers=auth)
    assert refused.status_code == 403 and refused.headers["x-agentcaps-reason"] == "resource_denied"
    in_query = httpx.get(stack.url + "/crm/a", params={"access_token": token}, headers=auth)
    assert in_query.status_code == 400
    spoofed = {**auth, "X-Agentcaps-Actor": "planner", "X-Agentcaps-Reason": "ok"}
    assert httpx.get(stack.url + "/crm/a", headers=spoofed).status_code == 200
    [(_, _, headers)] = stack.upstream.seen
    assert "authorization" not in headers
    assert not headers.get("x-agentcaps-actor") and not headers.get("x-agentcaps-reason")
    access_log = (tmp_path / "nginx" / "access.log").read_text()
    assert token not in access_log and "/crm/a" in access_log


def test_a_token_of_sixteen_kib_passes_the_gateway(stack: Stack) -> None:
    """The token size limit is 16 KiB; nginx's default header buffers would refuse half that."""
    token = stack.mint()
    while len(token) < 12_000:  # caveats of 20 purposes, each under the 1 KiB caveat limit
        token = agentcaps.attenuate(
            token, purposes=[f"{'x' * 20}-{n}" for n in range(20)] + ["sync"]
        )
    assert (
        httpx.get(stack.url + "/crm/a", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
