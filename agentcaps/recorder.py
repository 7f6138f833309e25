"""The Recorder: takes audit events off the hot path, seals them, and writes them in batches.

`Recorder.verified` (what a Verifier calls) packs the event's fields
(msgpack, while they are at hand in the caller's cache), appends them to an
in-memory queue and returns: no lock, no hash, no I/O. A background thread
takes what is queued, seals it into this writer's hash chain (numbers and
SHA-256 links), hands the batch to the mirrors (a JSON-lines file, say) and
writes it to the log (the Redis stream) in one round trip. When the log cannot take a batch, the batch goes to
the **spool**, a local append-only file, and everything after it follows it
there until the spool has been written to the log, in order: the chain's
order is the order events reach the log. Nothing is dropped silently:
`pending` counts every event not yet in the log, a full queue makes the
caller write a batch itself (backpressure instead of loss), and `close`
flushes the queue to the log or the spool.

Spool files from writers that are gone (a crash, a shutdown while the log
was down) are adopted and written to the log by the next writer that opens
the same spool directory; the log skips what it already holds, so nothing is
written twice.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentcaps.audit import (
    REQUEST_ID,
    AuditEvent,
    AuditLog,
    Batch,
    HashChain,
    Sealed,
    UnreadableEvent,
    batches_of,
    decode,
    pack_fields,
    verification_fields,
)
from agentcaps.decision import Decision, Reason
from agentcaps.errors import StoreUnavailable

log = logging.getLogger("agentcaps.audit")

Clock = Callable[[], float]
# What observers (metrics) see of each event: kind, reason, allowed, seconds taken, op.
Observed = tuple[str, str | None, bool | None, float | None, str | None]
# Sees every batch of events in the writer thread.
Observer = Callable[[list[Observed]], None]

DEFAULT_QUEUE_LIMIT = 50_000
# Events per write at most: the writer takes what is queued, up to this. Big
# batches let it keep up with a busy verifier: each write costs it a round
# trip, and a thread waits for the GIL after every blocking call.
DEFAULT_BATCH_SIZE = 2048
# Seconds the writer sleeps between rounds: each round writes what is queued,
# and goes on at once only while a full batch (or a backlog) is left. Going on
# whenever anything was left would, under a steady stream, cost a round trip
# and a GIL hand-off for every event or two that arrived during the last
# write: ten times what the events cost themselves.
DEFAULT_INTERVAL = 0.05
DEFAULT_RETRY_INTERVAL = 1.0  # seconds between attempts while the log is unavailable
_ORPHAN_INTERVAL = 30.0  # seconds between looks for other writers' spool files
_DRAIN_BATCHES = 8  # batches of the queue, then of the backlog, per writer cycle

_request_id = REQUEST_ID.get
_REASONS = {reason: reason.value for reason in Reason}


class Spool:
    """One writer's append-only file of sealed events waiting for the log, oldest first.

    One line per event: `<hash> <base64 body>`. The file is created on first
    use, under an exclusive lock held for the writer's life (so no other
    writer adopts it), and removed once everything in it reached the log. A
    torn last line (a crash mid-write) is ignored.
    """

    SUFFIX = ".spool"

    def __init__(self, directory: Path, writer: str) -> None:
        self.directory = directory
        self.path = directory / f"{writer}{self.SUFFIX}"
        self._fd: int | None = None
        self._offset = 0  # bytes already written to the log
        self._size = 0
        self.pending = 0

    def append(self, batch: Batch) -> None:
        """Add a batch at the end, durably (fsync).

        Raises:
            OSError: the file cannot be created or written.
        """
        if self._fd is None:
            self._open()
        assert self._fd is not None
        data = b"".join(_line(e) for e in batch.events())
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            # Leave no part of the batch behind (a full disk writes some of
            # it): a torn line is skipped when the file is read back, and the
            # caller holds the whole batch instead.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.pending += len(batch)

    def peek(self, count: int) -> tuple[list[Sealed], int]:
        """Up to `count` of the oldest events not yet in the log, and how many bytes they take."""
        if self._fd is None or not self.pending:
            return [], 0
        remaining = self._size - self._offset
        data = os.pread(self._fd, min(remaining, count * 2048 + 4096), self._offset)
        events, used = _parse(data, count)
        if not events and len(data) < remaining:  # one very long line: read it whole
            events, used = _parse(os.pread(self._fd, remaining, self._offset), count)
        if not events:  # nothing readable is left (a torn last line): forget it
            used = remaining
        return events, used

    def advance(self, count: int, used: int) -> None:
        """`count` events (`used` bytes) reached the log; forget the file once all have."""
        self._offset += used
        self.pending -= count
        if (self.pending <= 0 or self._offset >= self._size) and self._fd is not None:
            os.ftruncate(self._fd, 0)
            self._offset = self._size = self.pending = 0

    def close(self) -> None:
        """Release the file: removed when empty, else left for the next writer to adopt."""
        if self._fd is None:
            return
        if not self.pending:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)  # releases the lock
        self._fd = None

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # Our own file, released by close() with events still in it (an
            # event recorded after close follows them): append to it.
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            pass
        else:
            try:
                _lock_within(fd, _ADOPTION_WAIT)
                # Another writer may have adopted it meanwhile: sent it, and
                # removed it. Then it is not ours to append to any more.
                held = os.fstat(fd)
                current = os.stat(self.path) if held.st_nlink else None
            except FileNotFoundError:
                current = None
            except BaseException:
                os.close(fd)
                raise
            if current is not None and (current.st_dev, current.st_ino) == (
                held.st_dev,
                held.st_ino,
            ):
                self._size = held.st_size
                self._fd = fd
                return
            os.close(fd)
        # No file (never made, or adopted and sent by another writer): a new
        # one, with nothing in it waiting.
        self._offset = self._size = self.pending = 0
        # Created under a temporary name and locked before it gets its real
        # one: another writer never sees (and adopts) an unlocked new file.
        temporary = self.path.with_suffix(".new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def orphans(self) -> list[Path]:
        """Other writers' spool files in the directory."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*" + self.SUFFIX) if p != self.path)


# How long an event recorded after close waits for a writer that is adopting
# this writer's spool to finish with it (it then follows in a new file).
_ADOPTION_WAIT = 5.0


def _lock_within(fd: int, seconds: float) -> None:
    """Lock `fd` exclusively, waiting up to `seconds` for another holder to let go.

    Raises:
        OSError: still held after `seconds`.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`; os.write may write less (a full disk) before it fails.

    Raises:
        OSError: not all of it could be written.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("the spool file takes no more bytes")
        view = view[written:]


def _new(batch: Batch, taken: int | None) -> int:
    """The events of `batch` its log took as new (a log that does not say: all)."""
    return len(batch) if taken is None else taken


def _line(sealed: Sealed) -> bytes:
    return sealed.hash.encode() + b" " + base64.b64encode(sealed.body) + b"\n"


def _parse(data: bytes, count: int) -> tuple[list[Sealed], int]:
    """Complete lines of `data` as sealed events (at most `count`), and the bytes they took."""
    events: list[Sealed] = []
    used = 0
    while len(events) < count:
        end = data.find(b"\n", used)
        if end < 0:
            break  # a torn or unfinished line
        line = data[used:end]
        used = end + 1
        digest, _, encoded = line.partition(b" ")
        try:
            body = base64.b64decode(encoded, validate=True)
            event = decode(body)
        except (ValueError, UnreadableEvent):
            log.error("audit spool: skipping a line that is not an event")
            continue
        assert event.writer is not None and event.seq is not None
        events.append(Sealed(event.writer, event.seq, body, digest.decode("ascii", "replace")))
    return events, used


def _adopt(path: Path) -> int | None:
    """An open, locked descriptor of a spool file whose writer is gone; None if it still lives."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class BaseRecorder:
    """The caller's side every recorder shares (the AuditSink): pack an event, append it to a queue.

    No lock, no hash, no I/O in the caller: a writer (a thread, or a writer
    process fed by a thread, see agentcaps.stores.audit_writer) takes the
    queue from there. A queue past its limit makes the caller call `_spill`.
    """

    def __init__(self, *, clock: Clock, queue_limit: int) -> None:
        self._clock = clock
        self._limit = queue_limit
        self._queue: deque[Any] = deque()
        self._observers: list[Observer] = []

    # -- the caller's side (AuditSink) ----------------------------------------

    def verified(
        self,
        decision: Decision,
        resource: str,
        action: str,
        purpose: str | None,
        actor: str | None,
        audience: str | None,
        seconds: float,
        policy_version: str | None = None,
        policies: tuple[str, ...] = (),
    ) -> None:
        """Queue a verification: the hot path (its fields packed while they are at hand, one append)."""
        packed = pack_fields(
            verification_fields(
                decision, resource, action, purpose, actor, audience, seconds, self._clock(),
                _request_id(), policy_version, policies,
            )
        )  # fmt: skip
        queue = self._queue
        # Only plain values in the queued tuple (the reason as its text): the
        # garbage collector stops tracking such tuples, however many wait.
        queue.append((packed, "verify", _REASONS[decision.reason], decision.allowed, seconds, None))
        if len(queue) > self._limit:
            self._spill()

    def record(self, event: AuditEvent) -> None:
        """Queue any event."""
        latency = event.latency_us / 1e6 if event.latency_us is not None else None
        self._queue.append(
            (pack_fields(event.fields()), event.kind.value, event.reason, event.allowed, latency,
             event.op)
        )  # fmt: skip
        if len(self._queue) > self._limit:
            self._spill()

    def observe(self, observer: Observer) -> None:
        """Call `observer` with every batch of events, in the writer thread (e.g. metrics)."""
        self._observers.append(observer)

    def _spill(self) -> None:
        raise NotImplementedError

    def _show(self, items: list[Any]) -> None:
        """Show the observers (metrics) a batch of queued items; never raises.

        Events packed elsewhere (`(packed,)`, from a verifying process) were
        shown to observers there.
        """
        if not self._observers:
            return
        seen = [item[1:] for item in items if len(item) > 1]
        for observer in self._observers:
            try:
                observer(seen)
            except Exception:  # metrics must never cost an event
                log.exception("audit observer failed")

    def _take(self, count: int) -> list[Any]:
        """Up to `count` queued items, oldest first (the writer's side)."""
        queue = self._queue
        out = []
        try:
            for _ in range(count):
                out.append(queue.popleft())
        except IndexError:
            pass
        return out

    # -- what /readyz, metrics and the CLI read --------------------------------

    @property
    def writer(self) -> str:
        """The chain id of the writer events go to now."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        raise NotImplementedError

    @property
    def enabled(self) -> bool:
        """Whether events are kept anywhere (a log or a mirror)."""
        raise NotImplementedError

    @property
    def queued(self) -> int:
        """Events recorded and not yet taken by the writer."""
        raise NotImplementedError

    @property
    def spool_pending(self) -> int:
        """Events waiting in spool files and in memory for the log."""
        raise NotImplementedError

    @property
    def held(self) -> int:
        """Events waiting in memory only: refused by the log, and no spool could take them."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Events recorded but not yet in the log."""
        raise NotImplementedError

    @property
    def log_available(self) -> bool:
        """False while the log is refusing writes."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """Counters for /readyz details and metrics."""
        raise NotImplementedError

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event recorded so far is in the log; whether it is. Never raises."""
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer; what it cannot write to the log goes to the spool. Idempotent."""
        raise NotImplementedError


class Recorder(BaseRecorder):
    """The AuditSink of a process: queue in the caller, seal and write in a background thread.

    Args:
        log: where events are kept (None: nowhere; observers still see them).
        mirrors: logs that get every sealed event as well (JSON lines for log
            shippers), best effort: a failure is logged and counted, and
            never holds the log back.
        spool: the directory for this writer's spool file (None: none; on
            memory:// the log does not fail).
        clock: unix time, stamped on each event when it happens.
        writer: this writer's chain id (default: a fresh one).
        queue_limit: events held in memory before the caller writes a batch itself.
        batch_size: events per write.
        interval: seconds the writer sleeps between rounds (see DEFAULT_INTERVAL).
        retry_interval: seconds between attempts while the log fails.
    """

    def __init__(
        self,
        log: AuditLog | None,
        *,
        mirrors: Sequence[AuditLog] = (),
        spool: Path | None = None,
        clock: Clock = time.time,
        writer: str | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ) -> None:
        if queue_limit < batch_size or batch_size < 1:
            raise ValueError("queue_limit must be at least batch_size, which must be at least 1")
        super().__init__(clock=clock, queue_limit=queue_limit)
        self._log = log
        self._mirrors = tuple(mirrors)
        self._chain = HashChain(writer)
        self._spool = Spool(spool, self._chain.writer) if spool is not None else None
        self._capacity = queue_limit  # `_limit` drops to -1 at close; this does not
        self._batch = batch_size
        self._interval = interval
        self._retry_interval = retry_interval
        self._lock = threading.RLock()
        self._stranded: list[Batch] = []  # neither in the log nor in the spool (last resort)
        self._inflight = 0
        self._retry_at = 0.0  # monotonic time of the next attempt at the log
        self._orphans_at = 0.0
        self._orphans_pending = 0
        self._orphans_checked = False  # a look at other writers' spool files has completed
        self._closed = False
        self.written = 0  # events the log took
        self.spooled = 0  # events that went through the spool
        self.failures = 0  # writes the log refused
        self.mirror_errors = 0
        self.dropped = 0
        self._wake = threading.Event()
        self._idle = threading.Event()  # set by the writer after each round of work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentcaps-audit", daemon=True)
        self._thread.start()

    @property
    def writer(self) -> str:
        """This writer's chain id."""
        return self._chain.writer

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    @property
    def enabled(self) -> bool:
        """Whether events are kept anywhere (a log or a mirror)."""
        return self._log is not None or bool(self._mirrors)

    # -- state ---------------------------------------------------------------

    # -- events packed elsewhere (a writer process's input) ---------------------

    def write(self, packed: list[bytes]) -> None:
        """Seal and store events packed elsewhere (`pack_fields`), now, in the caller's thread.

        On return each of them is in the log, in the spool, or held in
        memory (`held`): what a writer process acknowledges. Observers do
        not see them (they saw them where they were recorded).

        Raises:
            Exception: whatever sealing or the log raised other than
                StoreUnavailable (the events may then be in no log at all).
        """
        with self._lock:
            for start in range(0, len(packed), self._batch):
                self._process([(tail,) for tail in packed[start : start + self._batch]])

    def enqueue(self, packed: list[bytes]) -> None:
        """Queue events packed elsewhere, as `record` does (observers do not see them)."""
        self._queue.extend((tail,) for tail in packed)
        if len(self._queue) > self._limit:
            self._spill()

    @property
    def queued(self) -> int:
        return len(self._queue) + self._inflight

    @property
    def spool_pending(self) -> int:
        """Events waiting in spool files (this writer's and adopted ones) and in memory for the log."""
        own = self._spool.pending if self._spool is not None else 0
        return own + self._orphans_pending + self.held

    @property
    def held(self) -> int:
        """Events waiting in memory only: refused by the log, and no spool could take them."""
        return sum(len(b) for b in self._stranded)

    @property
    def orphans_checked(self) -> bool:
        """Whether a look at other, gone writers' spool files (adopting them) has completed."""
        return self._orphans_checked

    @property
    def pending(self) -> int:
        """Events recorded but not yet in the log (queued, being written, or spooled)."""
        if self._log is None:
            return self.queued if self.enabled else 0
        return self.queued + self.spool_pending

    @property
    def log_available(self) -> bool:
        """False while the log is refusing writes (events go to the spool)."""
        return time.monotonic() >= self._retry_at

    def status(self) -> dict[str, Any]:
        """Counters for /readyz details and metrics."""
        return {
            "writer": self.writer,
            "pending": self.pending,
            "queued": self.queued,
            "spooled": self.spool_pending - self.held,
            "held": self.held,
            "written": self.written,
            "failures": self.failures,
            "mirror_errors": self.mirror_errors,
            "dropped": self.dropped,
            "log_available": self.log_available,
            "orphans_checked": self.orphans_checked,
        }

    # -- flushing and closing --------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event recorded so far is in the log, or the log refused them.

        Returns whether everything is in the log (else what is left waits in
        the spool, counted in `pending`). Never raises.
        """
        deadline = time.monotonic() + timeout
        failures = self.failures
        while True:
            if not self.queued:
                with self._lock:  # a batch taken from the queue is stored before this returns
                    settled = not self.queued
                if settled and (
                    not self.spool_pending
                    or self.failures > failures  # the log was tried, and refused
                    or self._retry_at > deadline  # and will not be tried again in time
                ):
                    return self.pending == 0
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._thread.is_alive():
                return self.pending == 0
            self._idle.clear()
            self._wake.set()
            self._idle.wait(min(remaining, 0.05))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer; write what is queued to the log, or else to the spool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # From now on every record() and verified() finds the queue "full" and
        # writes its own event: nothing recorded after close waits for a thread.
        self._limit = -1
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue:
                self._process(self._take(self._batch))
            self._retry_at = 0.0  # one last attempt at the log, whatever the backoff
            while self.spool_pending and time.monotonic() < deadline:
                if not self._drain_once():
                    break
            if self._spool is not None:
                self._spool.close()
            if self._stranded:
                lost = sum(len(b) for b in self._stranded)
                self.dropped += lost
                log.error(
                    "audit: %d event(s) could not be stored in the log or a spool and are lost",
                    lost,
                )
                self._stranded.clear()
            elif self.spool_pending:
                log.warning(
                    "audit: %d event(s) stay in the spool at %s; the next writer sends them on",
                    self.spool_pending,
                    self._spool.directory if self._spool is not None else "-",
                )

    # -- the writer ------------------------------------------------------------

    def _spill(self) -> None:
        """The queue is full: the caller writes batches itself until there is room again."""
        try:
            with self._lock:
                while self._queue and len(self._queue) > self._limit - self._batch:
                    self._process(self._take(self._batch))
                if self._closed and self._spool is not None:
                    # An event after close that went to the spool: let go of
                    # the file again, for the next writer to adopt.
                    self._spool.close()
        except Exception:  # a verification never fails because its record did
            log.exception("audit: writing a batch from the caller failed")

    def _process(self, items: list[Any]) -> None:
        """Seal a batch, show it to observers and mirrors, and store it (caller holds the lock)."""
        if not items:
            return
        self._inflight = len(items)
        try:
            self._show(items)
            if not self.enabled:
                return
            batch = self._chain.seal([item[0] for item in items])
            for mirror in self._mirrors:
                try:
                    mirror.append(batch)
                except Exception as exc:  # noqa: BLE001 - best effort by design: counted and logged
                    self.mirror_errors += len(batch)
                    log.error(
                        "audit mirror failed (%s): %d event(s)", type(exc).__name__, len(batch)
                    )
            if self._log is not None:
                self._store(batch)
        finally:
            self._inflight = 0

    def _store(self, batch: Batch) -> None:
        """To the log if it is up and nothing is waiting before these; else behind what waits."""
        assert self._log is not None
        if not self.spool_pending and self.log_available:
            try:
                taken = self._log.append(batch)
            except StoreUnavailable as exc:
                self._failed(exc)
            else:
                self.written += _new(batch, taken)
                return
        self._to_backlog(batch)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.log_available:
            log.warning("audit: the log refuses events (%s); spooling them until it is back", exc)
        self._retry_at = time.monotonic() + self._retry_interval

    def _to_backlog(self, batch: Batch) -> None:
        if self._spool is not None:
            try:
                # What memory holds is older than `batch`: it goes first, now
                # that the spool may take it again (after close, this is the
                # only way held events still reach a file).
                while self._stranded:
                    self._spool.append(self._stranded[0])
                    self.spooled += len(self._stranded.pop(0))
                self._spool.append(batch)
            except OSError as exc:
                log.error(
                    "audit: cannot write the spool %s (%s); holding events in memory",
                    self._spool.path,
                    exc.strerror,
                )
            else:
                self.spooled += len(batch)
                return
        self._stranded.append(batch)
        while sum(len(b) for b in self._stranded) > self._capacity and len(self._stranded) > 1:
            lost = self._stranded.pop(0)
            self.dropped += len(lost)
            log.error(
                "audit: %d event(s) lost: neither the log nor a spool took them, and memory is full",
                len(lost),
            )

    def _drain_once(self) -> bool:
        """Send one batch of what waits (spool first, then memory) to the log; False if it failed."""
        assert self._log is not None
        if self._spool is not None and self._spool.pending:
            events, used = self._spool.peek(self._batch)
            new = 0
            try:
                for batch in batches_of(events):
                    new += _new(batch, self._log.append(batch))
            except StoreUnavailable as exc:
                self._failed(exc)
                return False
            self._spool.advance(len(events), used)
            self.written += new
            return True
        if self._stranded:
            batch = self._stranded[0]
            try:
                taken = self._log.append(batch)
            except StoreUnavailable as exc:
                self._failed(exc)
                return False
            self._stranded.pop(0)
            self.written += _new(batch, taken)
        return True

    def _adopt_orphans(self) -> None:
        """Send other, gone writers' spool files to the log (each writer's chain on its own)."""
        assert self._spool is not None and self._log is not None
        self._orphans_at = time.monotonic() + _ORPHAN_INTERVAL
        for path in self._spool.orphans():
            fd = _adopt(path)
            if fd is None:
                continue  # its writer lives: it sends them itself
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
                events, _used = _parse(data, len(data))
                self._orphans_pending = len(events)
                for whole in batches_of(events):
                    for batch in whole.split(self._batch):
                        try:
                            taken = self._log.append(batch)
                        except StoreUnavailable as exc:
                            self._failed(exc)
                            self._orphans_at = 0.0  # look again once the log is back
                            return
                        self._orphans_pending -= len(batch)
                        # A dead writer's file is sent from its start: the
                        # part it had sent already is skipped, not counted.
                        self.written += _new(batch, taken)
                log.info("audit: sent %d event(s) from the spool file %s", len(events), path.name)
                path.unlink()
            finally:
                self._orphans_pending = 0
                os.close(fd)
        self._orphans_checked = True

    def _cycle(self) -> bool:
        """Write some of what is queued, then some of what waits; True when there is more to do now.

        "Now": a full batch queued, or a backlog the log takes; a partial
        batch waits for the next round (`interval`), or for `flush`.
        """
        # A few batches of each per cycle: under a steady stream of new events
        # the spool must still drain (new events go behind it).
        for _ in range(_DRAIN_BATCHES):
            if not self._queue:
                break
            with self._lock:
                self._process(self._take(self._batch))
        if self._log is None or not self.log_available:
            return len(self._queue) >= self._batch
        with self._lock:
            # A few batches of the backlog per cycle, then back to the queue:
            # new events go behind the backlog, so it shrinks while the log
            # takes more than arrives.
            for _ in range(_DRAIN_BATCHES):
                if not self.spool_pending or not self._drain_once():
                    break
            if (
                self._spool is not None
                and not self.spool_pending
                and self.log_available
                and time.monotonic() >= self._orphans_at
            ):
                self._adopt_orphans()
            return len(self._queue) >= self._batch or (
                bool(self.spool_pending) and self.log_available
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                busy = self._cycle()
            except Exception:  # the writer must outlive one bad batch
                log.exception("audit writer failed; retrying")
                self._stop.wait(self._retry_interval)
            if not busy:
                self._idle.set()
                self._wake.wait(self._interval)
                self._wake.clear()
