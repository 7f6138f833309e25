"""The audit writer process on a real redis-server: order, chains, a killed writer, Redis down, close, fallback."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentcaps.audit import AuditKind, decode, event
from agentcaps.recorder import Recorder
from agentcaps.stores import audit_writer
from agentcaps.stores.audit import AuditTrail, RedisAuditLog, open_audit, open_audit_log
from agentcaps.stores.audit_writer import ProcessRecorder
from agentcaps.stores.redis import Stores
from tests.conftest import RedisServer, real_stores

NOW = 1_800_000_000.0
# A writer that starts and never reads or answers (nor stops for TERM).
SILENT = (sys.executable, "-c", "import signal, time; signal.signal(15, 1); time.sleep(120)")


def numbered(n: int) -> Any:
    return event(AuditKind.KEY, NOW + n, op="create", key_id="k1", detail=f"e{n}")


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll `condition` until it holds; fail (not a timing assertion: a generous bound) if it never does."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def details(log: RedisAuditLog) -> list[str]:
    """Every event's detail in the stream, in stream order."""
    return [decode(item.body).detail or "" for item in log.scan()]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def stores_on(server: RedisServer, spool: Path) -> Stores:
    return real_stores(server, audit_spool=str(spool))


@pytest.fixture
def trails() -> Iterator[list[AuditTrail]]:
    """Trails a test opens, closed after it."""
    opened: list[AuditTrail] = []
    yield opened
    for trail in opened:
        trail.close()


def opened(trails: list[AuditTrail], stores: Stores, **options: Any) -> AuditTrail:
    options.setdefault("retry_interval", 0.05)
    trail = open_audit(stores, **options)
    trails.append(trail)
    return trail


def writing(trail: AuditTrail) -> tuple[ProcessRecorder, int]:
    """The trail's writer process, up (event e0 through it), and its pid."""
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    recorder.record(numbered(0))
    assert recorder.flush(30)
    assert recorder.writer_pid is not None
    return recorder, recorder.writer_pid


def record_while_redis_is_down(
    trail: AuditTrail, server: RedisServer, count: int
) -> ProcessRecorder:
    """The writer process up (event e0 through it), then Redis stopped and events e1…e`count` recorded."""
    recorder, _pid = writing(trail)
    server.stop()
    for n in range(1, count + 1):
        recorder.record(numbered(n))
    return recorder


def test_events_reach_the_stream_through_a_writer_process_in_order(
    redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """On a real Redis the default writer is a process; its events arrive in order, chains holding."""
    trail = opened(trails, stores_on(redis_server, spool))
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    assert recorder.writer_pid not in (None, os.getpid())
    for n in range(5000):
        recorder.record(numbered(n))
    assert recorder.flush(30)
    assert recorder.pending == 0 and recorder.status()["written"] == 5000
    assert trail.log is not None
    assert details(trail.log) == [f"e{n}" for n in range(5000)]
    report = trail.log.check()
    assert report.ok and report.checked == 5000


def test_a_killed_writer_process_is_replaced_and_no_event_is_lost(
    redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """SIGKILL with frames sent and not acknowledged: a new writer gets them again (duplicates allowed)."""
    trail = opened(trails, stores_on(redis_server, spool), interval=0.01)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder) and recorder.writer_pid is not None
    for n in range(100):
        recorder.record(numbered(n))
    assert recorder.flush(30)
    first = recorder.writer_pid
    os.kill(first, signal.SIGSTOP)  # frames now go into the pipe, and stay unacknowledged
    for n in range(100, 3000):
        recorder.record(numbered(n))
    wait_until(lambda: recorder._unacked_events == 2900)
    os.kill(first, signal.SIGKILL)
    for n in range(3000, 4000):
        recorder.record(numbered(n))
    assert recorder.flush(30)
    assert recorder.writer_pid not in (None, first)
    assert recorder.status()["writer_restarts"] == 1
    assert trail.log is not None
    stored = details(trail.log)
    assert set(stored) == {f"e{n}" for n in range(4000)}
    assert trail.log.check().ok


def test_events_spooled_by_the_writer_while_redis_is_down_reach_it_when_it_returns(
    durable_redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """Redis stopped mid-run: the writer process spools, then sends every event once Redis is back."""
    stores = stores_on(durable_redis_server, spool)
    trail = opened(trails, stores)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    for n in range(50):
        recorder.record(numbered(n))
    assert recorder.flush(30)
    durable_redis_server.stop()
    for n in range(50, 250):
        recorder.record(numbered(n))
    assert not recorder.flush(5)
    status = recorder.status()
    assert status["pending"] == 200 and status["spooled"] == 200 and not status["log_available"]
    assert any(spool.rglob("*.spool"))
    durable_redis_server.start()
    wait_until(lambda: recorder.flush(1))
    assert trail.log is not None
    assert sorted(details(trail.log)) == sorted(f"e{n}" for n in range(250))
    assert trail.log.check().ok


def test_a_clean_close_with_redis_down_leaves_the_events_in_the_spool_for_the_next_writer(
    durable_redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """Closed while Redis is down: nothing is lost; the next writer process adopts the spool file."""
    stores = stores_on(durable_redis_server, spool)
    trail = open_audit(stores, retry_interval=0.05)
    durable_redis_server.stop()
    for n in range(300):
        trail.recorder.record(numbered(n))
    trail.close(timeout=2)
    assert trail.recorder.pending == 300  # in the spool, as the writer process reported
    assert any(spool.rglob("*.spool"))
    durable_redis_server.start()
    later = opened(trails, stores)
    assert isinstance(later.recorder, ProcessRecorder)
    log, close = open_audit_log(stores)
    try:
        wait_until(lambda: len(details(log)) >= 300)
        assert sorted(details(log)) == sorted(f"e{n}" for n in range(300))
        assert log.check().ok
    finally:
        close()


def test_a_writer_that_cannot_start_gives_way_to_a_thread_in_this_process(
    redis_server: RedisServer,
    spool: Path,
    trails: list[AuditTrail],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writers that die at once, several in a row: one error, and a thread Recorder writes everything."""
    caplog.set_level(logging.ERROR, logger="agentcaps.audit")
    dead = (sys.executable, "-c", "raise SystemExit(3)")
    trail = opened(trails, stores_on(redis_server, spool), command=dead, interval=0.01)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    for n in range(1000):
        recorder.record(numbered(n))
    assert recorder.flush(30)
    assert recorder.writer_pid is None and isinstance(recorder._fallback, Recorder)
    assert trail.log is not None
    assert details(trail.log) == [f"e{n}" for n in range(1000)]
    fallbacks = [r for r in caplog.records if "writing audit events in this process" in r.message]
    assert len(fallbacks) == 1


def test_a_writer_that_does_not_finish_on_close_is_killed_and_its_events_written_here(
    redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """close() kills a writer that does not finish in time; what it had not acknowledged goes through the fallback."""
    stores = stores_on(redis_server, spool)
    trail = open_audit(stores, command=SILENT, close_margin=0.5)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    pid = recorder.writer_pid
    assert pid is not None
    for n in range(500):
        recorder.record(numbered(n))
    trail.close(timeout=0.5)
    assert recorder.pending == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    log, close = open_audit_log(stores)
    try:
        assert details(log) == [f"e{n}" for n in range(500)]
    finally:
        close()


def test_the_writer_process_ignores_interrupts_so_the_parent_can_flush_through_them(
    redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """SIGINT, SIGTERM and SIGHUP (which can reach the process group) leave the writer running."""
    trail = opened(trails, stores_on(redis_server, spool))
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    recorder.record(numbered(0))
    assert recorder.flush(30)  # the writer is up, its handlers set
    pid = recorder.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGHUP)  # the service's reload signal, sent to a process group
    recorder.record(numbered(1))
    assert recorder.flush(30)
    assert recorder.writer_pid == pid and recorder.status()["writer_restarts"] == 0
    assert trail.log is not None and details(trail.log) == ["e0", "e1"]


def test_thread_is_used_when_the_setting_says_so(
    redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """AGENTCAPS_AUDIT_WRITER=thread on a real Redis: the thread Recorder, no writer process."""
    stores = stores_on(redis_server, spool)
    settings = dataclasses.replace(stores.settings, audit_writer="thread")
    trail = opened(trails, stores, settings=settings)
    assert type(trail.recorder) is Recorder


def test_the_writer_process_gets_no_deployment_secrets_and_logs_as_the_service_does(
    redis_server: RedisServer,
    spool: Path,
    trails: list[AuditTrail],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its configuration comes over the pipe: no AGENTCAPS_* (the master key) in its environment or argv."""
    monkeypatch.setenv("AGENTCAPS_MASTER_KEY", "aa" * 32)
    stores = real_stores(redis_server, audit_spool=str(spool), log_format="json")
    trail = opened(trails, stores)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder) and recorder.writer_pid is not None
    environ = Path(f"/proc/{recorder.writer_pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"AGENTCAPS_")]
    argv = Path(f"/proc/{recorder.writer_pid}/cmdline").read_bytes().split(b"\0")
    assert b"--log-format" in argv and b"json" in argv
    assert not [a for a in argv if b"redis://" in a]


def test_a_hung_writer_is_killed_and_replaced_and_callers_never_wait_on_it(
    redis_server: RedisServer,
    spool: Path,
    trails: list[AuditTrail],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer that takes no input (stopped here) counts as hung: replaced, its frames sent again."""
    monkeypatch.setattr(audit_writer, "STALL_TIMEOUT", 1.0)
    trail = opened(trails, stores_on(redis_server, spool), interval=0.01, queue_limit=4096)
    recorder, hung = writing(trail)
    os.kill(hung, signal.SIGSTOP)
    try:
        # Far more than the pipe holds, and past the queue limit: callers send
        # frames themselves, and must not block for good on the hung writer.
        for n in range(1, 60_000):
            recorder.record(numbered(n))
        assert recorder.flush(60)
        assert recorder.writer_pid not in (None, hung)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert trail.log is not None
    assert set(details(trail.log)) == {f"e{n}" for n in range(60_000)}


def test_events_a_dead_writer_left_in_its_spool_stay_pending_until_they_reach_redis(
    durable_redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """Killed while Redis is down, the writer's spooled events still count: flush is not True until they arrive."""
    trail = opened(trails, stores_on(durable_redis_server, spool))
    recorder = record_while_redis_is_down(trail, durable_redis_server, 500)
    assert not recorder.flush(3)
    assert recorder.status()["spooled"] == 500
    pid = recorder.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: recorder.writer_pid not in (None, pid))
    assert not recorder.flush(2)
    assert recorder.pending >= 500 and recorder.status()["spooled"] >= 500
    durable_redis_server.start()
    wait_until(lambda: recorder.flush(1), seconds=60)
    assert trail.log is not None
    assert set(details(trail.log)) == {f"e{n}" for n in range(501)}


def test_events_a_dead_writer_held_in_memory_only_are_counted_lost(
    durable_redis_server: RedisServer,
    tmp_path: Path,
    trails: list[AuditTrail],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither Redis nor a spool took them (the spool cannot be written): a writer's death loses them, loudly."""
    caplog.set_level(logging.ERROR, logger="agentcaps.audit")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    trail = opened(trails, stores_on(durable_redis_server, blocked / "spool"))
    recorder = record_while_redis_is_down(trail, durable_redis_server, 200)
    wait_until(lambda: recorder.status()["held"] == 200)
    pid = recorder.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: recorder.status()["dropped"] == 200)
    assert [r for r in caplog.records if "200 event(s) are lost" in r.message]


def test_close_racing_recording_threads_ends_the_writer_process(
    redis_server: RedisServer, spool: Path
) -> None:
    """Events recorded while close() runs never leave a writer process behind, nor lose an event."""
    stores = stores_on(redis_server, spool)
    trail = open_audit(stores, queue_limit=2048, batch_size=256)
    recorder = trail.recorder
    assert isinstance(recorder, ProcessRecorder)
    pid = recorder.writer_pid
    assert pid is not None
    stop = threading.Event()
    counts = [0] * 4

    def record(k: int) -> None:
        while not stop.is_set():
            recorder.record(numbered(k * 10_000_000 + counts[k]))
            counts[k] += 1

    threads = [threading.Thread(target=record, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    trail.close(5.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert recorder.pending == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    log, close = open_audit_log(stores)
    try:
        assert len(set(details(log))) == sum(counts)
    finally:
        close()


def test_a_replaced_writer_shows_in_readyz_and_metrics(
    redis_server: RedisServer, spool: Path, tmp_path: Path
) -> None:
    """The service's /readyz audit line and agentcaps_audit_writer_restarts count writers replaced."""
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from agentcaps.http.app import create_app

    stores = stores_on(redis_server, spool)
    with TestClient(create_app(stores.settings, stores)) as client:
        recorder = client.app.state.service.audit.recorder  # type: ignore[attr-defined]
        assert isinstance(recorder, ProcessRecorder)
        recorder.record(numbered(0))
        assert recorder.flush(30)
        pid = recorder.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        recorder.record(numbered(1))
        assert recorder.flush(30)
        assert "replaced 1 time(s)" in client.get("/readyz").json()["checks"]["audit"]
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        [sample] = families["agentcaps_audit_writer_restarts"].samples
        assert sample.value == 1


# A writer whose every batch takes 2 s (as adopting a big spool file, or a
# slow Redis, would): busy, not hung. Its heartbeat goes on meanwhile.
SLOW = (
    sys.executable,
    "-c",
    (
        "import time, sys\n"
        "from agentcaps import recorder\n"
        "from agentcaps.stores import audit_writer\n"
        "write = recorder.Recorder.write\n"
        "def slow(self, packed):\n"
        "    time.sleep(2)\n"
        "    return write(self, packed)\n"
        "recorder.Recorder.write = slow\n"
        "sys.exit(audit_writer.main())\n"
    ),
)


def test_a_busy_writer_that_still_reports_is_waited_for_not_killed(
    redis_server: RedisServer,
    spool: Path,
    trails: list[AuditTrail],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its input full for longer than the stall timeout, but reporting: the same writer takes every event."""
    monkeypatch.setattr(audit_writer, "STALL_TIMEOUT", 1.0)
    trail = opened(trails, stores_on(redis_server, spool), command=SLOW, interval=0.01)
    recorder, pid = writing(trail)
    for n in range(1, 30_000):  # several MB: far more than the pipe holds
        recorder.record(numbered(n))
    assert recorder.flush(120)
    assert recorder.writer_pid == pid and recorder.status()["writer_restarts"] == 0
    assert trail.log is not None
    assert len(set(details(trail.log))) == 30_000


def test_after_falling_back_to_a_thread_a_dead_writers_spool_is_no_longer_pending_once_sent(
    durable_redis_server: RedisServer, spool: Path, trails: list[AuditTrail]
) -> None:
    """The thread that takes over adopts the dead writer's spool file; pending then reaches 0 and flush is True."""
    trail = opened(trails, stores_on(durable_redis_server, spool), interval=0.01)
    recorder = record_while_redis_is_down(trail, durable_redis_server, 300)
    wait_until(lambda: recorder.status()["spooled"] == 300)
    pid = recorder.writer_pid
    assert pid is not None
    recorder._command = [sys.executable, "-c", "raise SystemExit(3)"]  # no writer starts again
    os.kill(pid, signal.SIGKILL)
    recorder.record(numbered(301))
    wait_until(lambda: recorder.writer_pid is None)  # the thread took over
    assert recorder.pending >= 300
    durable_redis_server.start()
    wait_until(lambda: recorder.flush(1), seconds=60)
    assert recorder.pending == 0
    assert trail.log is not None
    assert set(details(trail.log)) == {f"e{n}" for n in range(302)}
