"""Serving with several worker processes, each listening on its own socket (SO_REUSEPORT).

uvicorn's own `--workers` shares one listening socket, and has two problems
for a forward-auth service under keep-alive load: the first worker awake
accepts whole bursts of connections, so the others sit idle; and its shared
socket is made without IPPROTO_TCP, so asyncio never sets TCP_NODELAY and a
response written in two parts waits for the client's delayed ACK (uvicorn
issue #3149, about 40 ms a request). Here every worker binds the port itself
with SO_REUSEPORT, which lets the kernel spread new connections across them,
and with IPPROTO_TCP. Linux lets only processes of the same user share such a
port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from typing import Any

from agentcaps.errors import ConfigError

log = logging.getLogger("agentcaps.http")

_BACKLOG = 2048


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, listening.

    Raises:
        OSError: the address cannot be bound (in use by another user, no such address).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker(host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    sock = listening_socket(host, port)
    config = uvicorn.Config("agentcaps.http.app:create_app", factory=True, **options)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(count: int, host: str, port: int, options: dict[str, Any]) -> int:
    """Run `count` worker processes of the service until SIGTERM or SIGINT; return an exit status.

    Each worker builds its own app, stores and connections from the
    environment (as `create_app()` does). If one worker dies, the others are
    stopped too: a half-served port would fail some requests and not others.
    """
    # Fail here, before any worker starts, if the port cannot be bound.
    try:
        listening_socket(host, port).close()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(host, port, options), name=f"agentcaps-worker-{i}")
        for i in range(count)
    ]
    for worker in workers:
        worker.start()

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                worker.terminate()  # SIGTERM: uvicorn finishes in-flight requests

    def reload(signum: int, frame: object) -> None:
        # Each worker reloads its own policies on SIGHUP; the supervisor,
        # which holds none, passes it on (its default would be to die).
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signum)

    handlers: dict[int, Any] = {signal.SIGTERM: stop, signal.SIGINT: stop}
    sighup = getattr(signal, "SIGHUP", None)  # none on Windows
    if sighup is not None:
        handlers[sighup] = reload
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        status = 0
        while any(w.is_alive() for w in workers):
            for worker in workers:
                worker.join(timeout=0.5)
                if not worker.is_alive() and not stopping:
                    log.error(
                        "worker %s exited (%s); stopping the others", worker.name, worker.exitcode
                    )
                    status = 1
                    stop(signal.SIGTERM, None)
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stderr.flush()
