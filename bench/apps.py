"""The forward-auth baselines of bench/forward_auth.py, served by uvicorn as `agentcaps serve` is.

    python bench/apps.py bare --port 8001 [--workers 2]
    python bench/apps.py jwt-redis --port 8002 [--workers 2]   # BENCH_JWT_KEY, BENCH_REDIS_URL
    python bench/apps.py verifier-inline --port 8003            # AGENTCAPS_* as for agentcaps serve

- `bare`: a Starlette endpoint that returns 200 and does nothing else: the
  ceiling of the stack (uvicorn, its HTTP parser, Starlette's routing).
- `jwt-redis`: what a user would write instead of agentcaps: PyJWT HS256
  decode (signature, exp, aud; sub and jti required), the same scope checks as
  bench/verify.py's PyJWT baseline (resource globs, action, purpose), then one
  Redis SISMEMBER of the token's jti in a set of revoked ids, with
  redis.asyncio (hiredis) on the event loop. 200 with who acts, 401, or 403.
- `verifier-inline`: agentcaps' Verifier called inline in such a bare
  endpoint (replica mode): what agentcaps costs without the service's layers
  (access log, request ids, thread pool hop, JSON body), i.e. what a fast
  path in the service could approach.

Both answer GET /healthz. uvicorn runs them with the options `agentcaps serve`
gives it (127.0.0.1, no uvicorn access log, no server header, the same event
loop and HTTP implementation, chosen by uvicorn as for agentcaps).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ACTIONS = {"GET": "read", "HEAD": "read", "OPTIONS": "read", "DELETE": "delete"}
REVOKED_SET = "bench:revoked-jti"


async def healthz(request: Request) -> Response:
    return Response(status_code=200)


def bare() -> Starlette:
    """200 and nothing else."""

    async def authz(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/v1/authz", authz, methods=METHODS)]
    )


def jwt_redis() -> Starlette:
    """PyJWT decode + scope checks + one SISMEMBER (BENCH_JWT_KEY hex, BENCH_REDIS_URL)."""
    import jwt
    import redis.asyncio
    from verify import glob_match

    key = bytes.fromhex(os.environ["BENCH_JWT_KEY"])
    audience = os.environ.get("BENCH_AUDIENCE", "gateway")
    client: Any = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    def allowed(claims: dict[str, Any], resource: str, action: str, purpose: str | None) -> bool:
        for name, value in claims.items():
            kind = name[:3]
            if kind == "res" and not any(glob_match(g, resource) for g in value):
                return False
            if kind == "scp" and action not in value:
                return False
            if kind == "pur" and purpose is not None and purpose not in value:
                return False
        return True

    async def authz(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Response(status_code=401)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                audience=audience,
                options={"require": ["exp", "sub", "jti"]},
            )
        except jwt.InvalidTokenError:
            return Response(status_code=401)
        method = request.headers.get("x-original-method", request.method).upper()
        target = request.headers.get("x-original-uri", "/")
        resource = target.split("?", 1)[0].strip("/")
        purpose = request.headers.get("x-agentcaps-purpose")
        if not allowed(claims, resource, ACTIONS.get(method, "write"), purpose):
            return Response(status_code=403)
        if await client.sismember(REVOKED_SET, claims["jti"]):
            return Response(status_code=403)
        return Response(
            status_code=200, headers={"X-User": claims["sub"], "X-Agent": claims["azp"]}
        )

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/v1/authz", authz, methods=METHODS)]
    )


def verifier_inline() -> Starlette:
    """agentcaps as a library in a bare endpoint: Verifier.verify on the event loop, no service layers.

    The stores come from the environment as for `agentcaps serve`
    (AGENTCAPS_REDIS_URL, AGENTCAPS_MASTER_KEY, AGENTCAPS_REVOCATION_MODE,
    AGENTCAPS_AUDIENCE); in replica mode nothing here waits on I/O, so the
    decision runs inline. The answer is the service's: 200 with its identity
    headers, 401, 403 or 503 as agentcaps.errors.refusal says.
    """
    from contextlib import asynccontextmanager

    import agentcaps
    from agentcaps.errors import NotAllowed, NotAuthenticated, refusal
    from agentcaps.http.gate import identity_headers

    stores = agentcaps.connect()
    ready = getattr(stores.revocations, "wait_ready", None)
    if ready is not None and not ready(30.0):
        raise RuntimeError("the revocation replica did not load within 30 s")
    verifier = stores.verifier(audience=os.environ.get("AGENTCAPS_AUDIENCE"))
    verify = verifier.verify

    async def authz(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Response(status_code=401)
        method = request.headers.get("x-original-method", request.method).upper()
        target = request.headers.get("x-original-uri", "/")
        purpose = request.headers.get("x-agentcaps-purpose") or None
        decision = verify(
            token,
            resource=target.split("?", 1)[0].strip("/"),
            action=ACTIONS.get(method, "write"),
            purpose=purpose,
        )
        if decision.allowed:
            return Response(status_code=200, headers=identity_headers(decision, purpose))
        error = refusal(decision)
        status = (
            401
            if isinstance(error, NotAuthenticated)
            else 403
            if isinstance(error, NotAllowed)
            else 503
        )
        return Response(status_code=status, headers={"X-Agentcaps-Reason": decision.reason.value})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        try:
            yield
        finally:
            stores.close()

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/v1/authz", authz, methods=METHODS)],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("app", choices=["bare", "jwt-redis", "verifier-inline"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    # Workers import this module by name: bench/ must be on their path too.
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    uvicorn.run(
        "apps:" + args.app.replace("-", "_"),
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        access_log=False,
        server_header=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
