"""The Recorder: hand-off, batches, the spool when the log fails, flushing, adoption, the pending count."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcaps import recorder as recorder_module
from agentcaps.audit import AuditKind, Batch, StoredEvent, check_chains, decode, event
from agentcaps.decision import Decision, Reason
from agentcaps.errors import StoreUnavailable
from agentcaps.recorder import Recorder, Spool

NOW = 1_800_000_000.0
LONG = 3600.0  # a writer interval no test waits for: only flush() and close() wake it


class FakeLog:
    """An AuditLog in a list, that refuses writes while `up` is False."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.up = True

    def append(self, batch: Batch) -> None:
        if not self.up:
            raise StoreUnavailable("down")
        held = {(b.writer, b.first_seq + i) for b in self.batches for i in range(len(b))}
        fresh = [e for e in batch.events() if (e.writer, e.seq) not in held]
        if fresh:
            self.batches.append(Batch(fresh[0].writer, fresh[0].seq, [e.body for e in fresh],
                                      [e.hash for e in fresh]))  # fmt: skip

    def stored(self) -> list[StoredEvent]:
        return [
            StoredEvent(f"{n}", e.body, e.hash)
            for n, e in enumerate(e for b in self.batches for e in b.events())
        ]

    def kinds(self) -> list[str]:
        return [decode(s.body).detail or "" for s in self.stored()]


def numbered(n: int) -> object:
    """A key event whose detail says its number, so tests can check order."""
    return event(AuditKind.KEY, NOW + n, op="create", key_id="k1", detail=f"e{n}")


@pytest.fixture
def log() -> FakeLog:
    return FakeLog()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    """Recorders a test makes, closed after it."""
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.close(timeout=5)


def make(recorders: list[Recorder], log: FakeLog | None, **options: object) -> Recorder:
    options.setdefault("interval", LONG)
    options.setdefault("retry_interval", 0.01)
    recorder = Recorder(log, **options)  # type: ignore[arg-type]
    recorders.append(recorder)
    return recorder


def test_verified_only_queues_and_the_writer_writes_on_flush(
    log: FakeLog, recorders: list[Recorder]
) -> None:
    """A verification is queued (pending 1, nothing written) until the writer runs."""
    recorder = make(recorders, log)
    decision = Decision(True, Reason.OK, "ab" * 16, "k1", "acme", "alice", ("planner",))
    recorder.verified(decision, "crm/a", "read", None, None, "gw", 1e-5)
    assert recorder.pending == 1 and log.batches == []
    assert recorder.flush(5) is True
    assert recorder.pending == 0
    written = decode(log.batches[0].bodies[0])
    assert (written.kind, written.resource, written.audience) == (
        AuditKind.VERIFY,
        "crm/a",
        ("gw",),
    )


def test_the_writer_writes_in_batches(log: FakeLog, recorders: list[Recorder]) -> None:
    """Ten queued events go out as batches of at most batch_size, in order, numbered 0..9."""
    recorder = make(recorders, log, batch_size=4, queue_limit=100)
    for n in range(10):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder.flush(5)
    assert [len(b) for b in log.batches] == [4, 4, 2]
    assert log.kinds() == [f"e{n}" for n in range(10)]
    assert check_chains(log.stored(), trimmed=False).ok


def test_a_round_goes_on_at_once_only_while_a_full_batch_is_left(
    log: FakeLog, recorders: list[Recorder]
) -> None:
    """The writer's round writes what is queued; it goes on without sleeping only for a full batch."""
    recorder = make(recorders, log, batch_size=4, queue_limit=100)
    for n in range(3):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder._cycle() is False  # three written; the next ones wait for the next round
    assert [len(b) for b in log.batches] == [3]
    for n in range(3, 3 + 8 * 4 + 2):  # a round takes 8 batches: 2 events are left
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder._cycle() is False  # less than a batch left: they wait for the next round
    for n in range(37, 37 + 8 * 4 + 2):  # 2 + 34: a round leaves a full batch
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder._cycle() is True  # a full batch is left: no sleep
    assert recorder._cycle() is False
    assert log.kinds() == [f"e{n}" for n in range(71)]


def test_a_failing_log_sends_events_to_the_spool_then_to_the_log_in_order(
    log: FakeLog, recorders: list[Recorder], tmp_path: Path
) -> None:
    """Log down: events wait in the spool file (pending counts them); log back: all arrive, in order."""
    recorder = make(recorders, log, spool=tmp_path, batch_size=3)
    log.up = False
    for n in range(7):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder.flush(5) is False
    assert recorder.pending == 7 and recorder.spool_pending == 7
    spool_file = tmp_path / f"{recorder.writer}{Spool.SUFFIX}"
    assert len(spool_file.read_bytes().splitlines()) == 7
    log.up = True
    for n in range(7, 9):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    assert recorder.flush(5) is True
    assert recorder.pending == 0
    assert log.kinds() == [f"e{n}" for n in range(9)]
    assert check_chains(log.stored(), trimmed=False).ok
    assert spool_file.read_bytes() == b""


def test_close_writes_everything_queued_to_the_log(log: FakeLog, tmp_path: Path) -> None:
    """Closing flushes the queue: nothing recorded before close is left behind."""
    recorder = Recorder(log, spool=tmp_path, interval=LONG)
    for n in range(5):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    recorder.close()
    assert log.kinds() == [f"e{n}" for n in range(5)]
    assert list(tmp_path.iterdir()) == []


def test_events_recorded_after_close_are_still_written(log: FakeLog) -> None:
    """A record() after close is written by its caller, not queued for a thread that is gone."""
    recorder = Recorder(log, interval=LONG)
    recorder.close()
    recorder.record(numbered(0))  # type: ignore[arg-type]
    assert log.kinds() == ["e0"]


def test_close_with_the_log_down_leaves_a_spool_the_next_writer_sends(
    log: FakeLog, tmp_path: Path, recorders: list[Recorder]
) -> None:
    """Shutdown while the log is down: events stay in the spool; the next writer sends them once."""
    log.up = False
    first = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    for n in range(4):
        first.record(numbered(n))  # type: ignore[arg-type]
    first.close(timeout=1)
    left = list(tmp_path.glob("*" + Spool.SUFFIX))
    assert len(left) == 1 and log.batches == []
    log.up = True
    second = make(recorders, log, spool=tmp_path)
    second.record(numbered(4))  # type: ignore[arg-type]
    assert second.flush(5)
    assert sorted(log.kinds()) == [f"e{n}" for n in range(5)]
    assert not left[0].exists()
    assert check_chains(log.stored(), trimmed=False).ok
    assert {b.writer for b in log.batches} == {first.writer, second.writer}


def test_an_event_recorded_after_a_close_with_the_log_down_joins_the_spool(
    log: FakeLog, tmp_path: Path, recorders: list[Recorder]
) -> None:
    """A request finishing during shutdown appends to the spool close() left; it never replaces it."""
    log.up = False
    first = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    for n in range(5):
        first.record(numbered(n))  # type: ignore[arg-type]
    first.close(timeout=1)
    first.record(numbered(5))  # type: ignore[arg-type]
    assert first.pending == 6 and first.dropped == 0
    log.up = True
    second = make(recorders, log, spool=tmp_path)
    assert second.flush(5) and second.pending == 0
    assert sorted(log.kinds()) == [f"e{n}" for n in range(6)]
    assert check_chains(log.stored(), trimmed=False).ok


def test_a_spool_write_that_fails_part_way_leaves_nothing_half_written(
    log: FakeLog, tmp_path: Path, recorders: list[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-batch: the batch is held in memory (counted), not counted as spooled and then lost."""
    recorder = make(recorders, log, spool=tmp_path)
    log.up = False
    recorder.record(numbered(0))  # type: ignore[arg-type]
    recorder.flush(1)
    assert recorder.status()["spooled"] == 1
    real_write = os.write
    calls: list[int] = []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # part of it, then no room
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    for n in range(1, 4):
        recorder.record(numbered(n))  # type: ignore[arg-type]
    recorder.flush(1)
    monkeypatch.setattr(os, "write", real_write)
    assert calls and recorder.pending == 4 and recorder.dropped == 0
    [spool] = tmp_path.glob("*" + Spool.SUFFIX)
    assert len(spool.read_bytes().splitlines()) == 1  # the first event only, whole
    log.up = True
    assert recorder.flush(5) and recorder.pending == 0
    assert log.kinds() == [f"e{n}" for n in range(4)]
    assert check_chains(log.stored(), trimmed=False).ok


def test_a_full_queue_makes_the_caller_write_instead_of_dropping(
    log: FakeLog, recorders: list[Recorder]
) -> None:
    """Past queue_limit, record() writes a batch itself: memory stays bounded, nothing is lost."""
    recorder = make(recorders, log, queue_limit=8, batch_size=4)
    for n in range(20):
        recorder.record(numbered(n))  # type: ignore[arg-type]
        assert recorder.queued <= 8
    assert log.batches  # written by the callers, before any flush
    assert recorder.flush(5)
    assert log.kinds() == [f"e{n}" for n in range(20)]


def test_without_a_spool_events_wait_in_memory_and_are_counted(
    log: FakeLog, recorders: list[Recorder]
) -> None:
    """No spool (memory://): a refused batch waits in memory, pending says so, and it is sent later."""
    recorder = make(recorders, log)
    log.up = False
    recorder.record(numbered(0))  # type: ignore[arg-type]
    recorder.flush(1)
    status = recorder.status()
    assert recorder.pending == 1 and status["failures"] >= 1
    assert (status["held"], status["spooled"]) == (1, 0)  # in memory, not in a spool file
    log.up = True
    assert recorder.flush(5) and log.kinds() == ["e0"]


def test_observers_see_every_event(log: FakeLog, recorders: list[Recorder]) -> None:
    """An observer (metrics) gets kind, reason, allowed, seconds and op of each event."""
    seen: list[tuple[object, ...]] = []
    recorder = make(recorders, log)
    recorder.observe(seen.extend)
    decision = Decision(False, Reason.REVOKED, "ab" * 16, "k1", "acme", "alice", ("p",))
    recorder.verified(decision, "crm/a", "read", None, None, None, 2e-5)
    recorder.record(numbered(1))  # type: ignore[arg-type]
    assert recorder.flush(5)
    assert seen == [
        ("verify", Reason.REVOKED, False, 2e-5, None),
        ("key", None, None, None, "create"),
    ]


def test_without_a_log_nothing_is_kept_but_observers_still_count(recorders: list[Recorder]) -> None:
    """AGENTCAPS_AUDIT=off: no log, nothing pending, metrics still fed."""
    seen: list[object] = []
    recorder = make(recorders, None)
    recorder.observe(seen.extend)
    recorder.record(numbered(0))  # type: ignore[arg-type]
    assert recorder.flush(5) and recorder.pending == 0 and len(seen) == 1


def test_a_torn_last_spool_line_is_ignored(tmp_path: Path, log: FakeLog) -> None:
    """A spool file whose last line was cut short (a crash mid-write) gives back its whole lines."""
    log.up = False
    first = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    for n in range(3):
        first.record(numbered(n))  # type: ignore[arg-type]
    first.close(timeout=1)
    path = next(tmp_path.glob("*" + Spool.SUFFIX))
    path.write_bytes(path.read_bytes() + b"deadbeef AAAA")  # no newline: torn
    log.up = True
    second = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    try:
        assert second.flush(5)
        assert log.kinds() == ["e0", "e1", "e2"]
    finally:
        second.close()


def test_a_request_text_utf8_cannot_carry_is_recorded_escaped(
    log: FakeLog, recorders: list[Recorder]
) -> None:
    """A lone surrogate in a caller's resource: the verification is recorded (escaped), never raised."""
    recorder = make(recorders, log)
    decision = Decision(False, Reason.RESOURCE_DENIED, "ab" * 16, "k1", "acme", "alice", ("a",))
    recorder.verified(decision, "crm/\udcff", "read", None, None, None, 1e-5)
    assert recorder.flush(5)
    [stored] = log.stored()
    assert decode(stored.body).resource == "crm/\\udcff"


def test_a_late_event_racing_an_adoption_of_the_spool_starts_a_new_file(
    log: FakeLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer sends and removes the spool just as a late event reopens it: the event
    goes to a new file the next writer sends, not into the removed one."""
    log.up = False
    first = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    for n in range(3):
        first.record(numbered(n))  # type: ignore[arg-type]
    first.close(timeout=1)
    log.up = True
    real_flock = recorder_module.fcntl.flock
    adopters: list[Recorder] = []

    def adopt_first(fd: int, operation: int) -> None:
        if not adopters:  # the late event has opened the file and is about to lock it
            adopters.append(Recorder(log, spool=tmp_path, interval=LONG))
            assert adopters[0].flush(5)
        real_flock(fd, operation)

    monkeypatch.setattr(recorder_module.fcntl, "flock", adopt_first)
    first.record(numbered(3))  # type: ignore[arg-type]
    monkeypatch.setattr(recorder_module.fcntl, "flock", real_flock)
    adopters[0].close()
    assert first.dropped == 0 and log.kinds() == ["e0", "e1", "e2"]
    last = Recorder(log, spool=tmp_path, interval=LONG)
    assert last.flush(5)
    last.close()
    assert log.kinds() == ["e0", "e1", "e2", "e3"]
    assert check_chains(log.stored(), trimmed=False).ok


def test_late_events_while_an_adopter_holds_the_spool_are_held_not_dropped(
    log: FakeLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After close the queue limit is gone; what memory may hold is not: nothing is dropped."""
    log.up = False
    first = Recorder(log, spool=tmp_path, interval=LONG, retry_interval=0.01)
    first.record(numbered(0))  # type: ignore[arg-type]
    first.close(timeout=1)
    [spool] = tmp_path.glob("*" + Spool.SUFFIX)
    monkeypatch.setattr(recorder_module, "_ADOPTION_WAIT", 0.05)
    adopter = os.open(spool, os.O_RDWR)
    try:
        recorder_module.fcntl.flock(adopter, recorder_module.fcntl.LOCK_EX)  # another writer's
        for n in range(1, 4):
            first.record(numbered(n))  # type: ignore[arg-type]
    finally:
        os.close(adopter)
    status = first.status()
    assert first.dropped == 0 and status["held"] == 3 and first.pending == 4
    # Once the adopter lets go (its own attempt failed: the file stays), the
    # next late event takes what memory held to the spool with it, in order.
    first.record(numbered(4))  # type: ignore[arg-type]
    assert first.status()["held"] == 0 and first.spool_pending == 5
    log.up = True
    last = Recorder(log, spool=tmp_path, interval=LONG)
    assert last.flush(5)
    last.close()
    assert log.kinds() == ["e0", "e1", "e2", "e3", "e4"]
    assert check_chains(log.stored(), trimmed=False).ok


def test_a_spool_file_sent_again_counts_only_what_the_log_did_not_hold(
    memory_stores: object, tmp_path: Path
) -> None:
    """A dead writer's file is adopted from its start; what it had sent already is skipped, not counted as written."""
    from agentcaps.stores.audit import RedisAuditLog

    class Flaky:
        takes = 0  # batches the log takes before it goes down again

        def __init__(self, log: RedisAuditLog) -> None:
            self.log = log

        def append(self, batch: Batch) -> int | None:
            if self.takes <= 0:
                raise StoreUnavailable("down")
            self.takes -= 1
            return self.log.append(batch)

    stream = RedisAuditLog(memory_stores.client)  # type: ignore[attr-defined]
    log = Flaky(stream)
    first = Recorder(log, spool=tmp_path, batch_size=10, interval=LONG, retry_interval=0.01)  # type: ignore[arg-type]
    for n in range(50):
        first.record(numbered(n))  # type: ignore[arg-type]
    assert not first.flush(0.5) and first.spool_pending == 50
    log.takes = 2  # two batches of the spool get through, then the log is down again
    first.flush(1)
    assert first.written == 20 and first.spool_pending == 30
    os.close(first._spool._fd)  # type: ignore[union-attr]  # it dies: its lock goes, its file stays
    first._spool._fd = None  # type: ignore[union-attr]
    log.takes = 1000
    adopter = Recorder(log, spool=tmp_path, interval=LONG)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while any(tmp_path.glob("*" + Spool.SUFFIX)) and time.monotonic() < deadline:
        adopter._wake.set()
        time.sleep(0.05)
    adopter.close()
    assert not any(tmp_path.glob("*" + Spool.SUFFIX))
    assert stream.info()["length"] == 50 and adopter.written == 30
