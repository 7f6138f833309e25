"""The audit writer process: sealing, mirrors, the Redis writes and the spool, out of the verifying process.

`ProcessRecorder` is the AuditSink a verifying process uses (the same
caller's side as the thread `Recorder`: pack, append to a queue). A feeder
thread takes what is queued, shows it to observers (metrics stay in this
process), and writes each batch as one length-prefixed frame to a writer
process's stdin: one `os.write`, which releases the GIL. The writer process
(`python -m agentcaps.stores.audit_writer`) is a thread `Recorder` on the
deployment's log, mirrors and spool (as `open_audit` builds them: config
comes over the pipe, never on argv or in the environment, since the store
URL can hold a password); it seals and stores each frame's events, then
acknowledges the frame, with its counters, on a pipe of its own (not its
stdout: `AGENTCAPS_AUDIT=jsonl:-` writes events there).

Durability: nothing is dropped silently.

- A frame is acknowledged once its events are *taken*: in the log, in the
  writer's spool, or held in its memory (counted as `held`). The parent
  keeps every frame until then.
- If the writer process dies, the parent starts another and sends it every
  unacknowledged frame again: a crash may duplicate events (under the new
  writer's chain), never lose them. Spool files of the dead writer are
  adopted by the next writer, as with the thread Recorder.
- If writer processes keep dying without acknowledging anything
  (`MAX_STARTS` in a row, e.g. one that cannot start), the parent logs an
  error once and falls back to a thread `Recorder` in this process, handing
  it everything unacknowledged and queued.
- `close` sends what is queued, closes the pipe (the writer closes its
  Recorder: to the log, or else the spool) and waits for the writer to
  finish; a writer that does not finish in time is killed, and what it had
  not acknowledged goes through the thread fallback (to the log, or the spool).
- The writer process ignores SIGINT and SIGTERM (Ctrl-C reaches the whole
  process group: the parent flushes through it) and exits once its input
  reaches end of file: the parent closed it, or died.

`pending` counts queued, unacknowledged and the writer's own pending events
(spooled or held); `flush` means what `Recorder.flush` means.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import agentcaps
from agentcaps.recorder import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INTERVAL,
    DEFAULT_QUEUE_LIMIT,
    BaseRecorder,
    Clock,
    Recorder,
    write_all,
)

log = logging.getLogger("agentcaps.audit")

MODULE = "agentcaps.stores.audit_writer"
# Writer processes started in a row that died without acknowledging anything
# before the parent gives up on them and writes in a thread of its own.
MAX_STARTS = 3
# Seconds a closing parent gives the writer beyond its own close timeout
# (its last status, its exit).
CLOSE_MARGIN = 2.0
_STATUS_INTERVAL = 0.25  # seconds between the writer's unprompted status reports
# Seconds between the writer's reports when nothing changed: its heartbeat,
# sent by a thread of its own however busy its work is.
_HEARTBEAT = 1.0
# Seconds without a word from the writer (a report) after which it counts as
# hung, once its input is full: killed and replaced (its frames are sent
# again). A busy writer (sending a backlog, adopting a big spool file)
# still reports, and is waited for, as the writer thread would be.
STALL_TIMEOUT = 10.0
_POLL = 0.5  # seconds between looks at whether a writer with a full input still reports
# Seconds a writer must have lived for its death to count as a crash rather
# than as one that cannot start (MAX_STARTS).
_STABLE_AFTER = 5.0
_PIPE_SIZE = 1 << 20  # bytes: a frame or two in flight while the writer works

_LENGTH = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
# Frames to the writer: a length, then a kind and its body.
_CONFIG, _EVENTS, _FLUSH, _CLOSING = b"C", b"E", b"F", b"Z"
_STATUS_KEYS = ("written", "failures", "mirror_errors", "dropped")


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """What a writer process opens: the deployment's targets, as `open_audit` would (no secrets but the URL).

    Sent over the pipe, never on argv or in the environment.
    """

    url: str
    redis: bool
    jsonl: tuple[str, ...] = ()
    spool: str | None = None
    max_len: int = 1_000_000
    max_age: int = 0
    timeout: float = 1.0
    options: dict[str, float] = field(default_factory=dict)  # Recorder options

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> WriterConfig:
        raw = json.loads(data)
        raw["jsonl"] = tuple(raw["jsonl"])
        return cls(**raw)


def _frame(kind: bytes, body: bytes = b"") -> bytes:
    return _LENGTH.pack(len(body) + 1) + kind + body


def _events_frame(packed: Sequence[bytes]) -> bytes:
    # Lengths, then the events back to back: put together in C.
    body = struct.pack(f">I{len(packed)}I", len(packed), *map(len, packed)) + b"".join(packed)
    return _frame(_EVENTS, body)


def _unpack_events(body: memoryview) -> list[bytes]:
    (count,) = _LENGTH.unpack_from(body, 0)
    lengths = struct.unpack_from(f">{count}I", body, 4)
    out = []
    at = 4 + 4 * count
    for n in lengths:
        out.append(bytes(body[at : at + n]))
        at += n
    return out


class WriterStalled(OSError):
    """The writer process takes no input, and has sent no report for STALL_TIMEOUT seconds."""


def _write_within(fd: int, data: bytes, answering: Callable[[], bool]) -> None:
    """Write all of `data` to a non-blocking `fd`; raise WriterStalled if it is full and the writer stops `answering`."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            _, writable, _ = select.select([], [fd], [], _POLL)
            if not writable and not answering():
                raise WriterStalled(
                    f"its input is full and it has not reported for {STALL_TIMEOUT:g} s"
                ) from None


class _Frames:
    """Reads length-prefixed messages from a pipe: whole ones, as many as have arrived."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def read(self) -> list[bytes] | None:
        """The complete messages that have arrived (waiting for one); None at end of file."""
        while True:
            messages = []
            at = 0
            buffer = self._buffer
            while len(buffer) - at >= 4:
                (length,) = _LENGTH.unpack_from(buffer, at)
                if len(buffer) - at - 4 < length:
                    break
                messages.append(bytes(buffer[at + 4 : at + 4 + length]))
                at += 4 + length
            del buffer[:at]
            if messages:
                return messages
            chunk = os.read(self._fd, _PIPE_SIZE)
            if not chunk:
                return None
            buffer += chunk


def _grow_pipe(fd: int) -> None:
    # Linux: room for a frame or two while the writer is busy (best effort).
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class _Child:
    """One writer process, its pipes, and what it last reported."""

    def __init__(self, command: Sequence[str], config: WriterConfig) -> None:
        ack_read, ack_write = os.pipe()
        # Nothing of the deployment's settings: the configuration comes over
        # the pipe, and the writer has no use for the master key.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
        # The writer imports the agentcaps this process runs, wherever it came from.
        root = str(Path(agentcaps.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [*command, "--status-fd", str(ack_write)],
                stdin=subprocess.PIPE,
                pass_fds=(ack_write,),
                env=env,
            )
        except BaseException:
            os.close(ack_read)
            raise
        finally:
            os.close(ack_write)
        assert self.process.stdin is not None
        self.stdin = self.process.stdin.fileno()
        _grow_pipe(self.stdin)
        os.set_blocking(self.stdin, False)  # a hung writer must not hang its callers
        self.started = self.heard = time.monotonic()
        self.acks = ack_read
        self.reader: threading.Thread | None = None
        self.alive = True
        self.status: dict[str, Any] = {}
        self.through = 0  # the last frame acknowledged
        self.next_frame = 1
        self._stdin_open = True
        self.send(_frame(_CONFIG, config.encode()))

    def send(self, data: bytes) -> bool:
        """Write a frame; False if the writer is gone."""
        if not self.alive or not self._stdin_open:
            return False
        try:
            _write_within(self.stdin, data, lambda: time.monotonic() - self.heard < STALL_TIMEOUT)
        except WriterStalled as exc:
            log.error(
                "audit: the writer process %d is hung (%s); killing it", self.process.pid, exc
            )
            self.kill()
            return False
        except OSError:
            self.alive = False
            return False
        return True

    def end_input(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def kill(self) -> None:
        self.alive = False
        self.end_input()
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _answered(child: _Child, frame: int) -> Callable[[], bool]:
    """Whether `child` acknowledged `frame`, or is gone."""
    return lambda: child.through >= frame or not child.alive


class ProcessRecorder(BaseRecorder):
    """The AuditSink of a process whose writer is another process (see the module's docstring).

    Args:
        config: what the writer process opens.
        fallback: builds the thread Recorder this process writes with when
            writer processes cannot be kept running (its targets: the same
            log, mirrors and spool).
        clock: unix time, stamped on each event when it happens.
        queue_limit: events held in this process before the caller sends a batch itself.
        batch_size: events per frame.
        interval: seconds the feeder sleeps between rounds.
        command: how to start the writer (default: this Python, `-m` this module).
        close_margin: seconds `close` waits beyond its timeout for the writer to finish.
        log_format: the writer's log lines: `json` or `text` (AGENTCAPS_LOG_FORMAT).
    """

    def __init__(
        self,
        config: WriterConfig,
        fallback: Callable[[], Recorder],
        *,
        clock: Clock = time.time,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
        command: Sequence[str] | None = None,
        close_margin: float = CLOSE_MARGIN,
        log_format: str = "text",
    ) -> None:
        if queue_limit < batch_size or batch_size < 1:
            raise ValueError("queue_limit must be at least batch_size, which must be at least 1")
        super().__init__(clock=clock, queue_limit=queue_limit)
        self._config = config
        self._make_fallback = fallback
        self._command = [*(command or (sys.executable, "-m", MODULE)), "--log-format", log_format]
        self._close_margin = close_margin
        self._batch = batch_size
        self._interval = interval
        # Held while taking from the queue and sending (frames go in order);
        # `_state` guards what the acknowledgement reader updates, briefly.
        self._send_lock = threading.RLock()
        self._state = threading.Condition(threading.Lock())
        # Frames sent and not yet acknowledged: [frame number, frame, events].
        self._unacked: deque[list[Any]] = deque()
        self._unacked_events = 0
        self._inflight = 0
        self._child: _Child | None = None
        self._starts = 0  # writers started in a row without an acknowledgement
        self._restarts = 0
        self._totals = dict.fromkeys(_STATUS_KEYS, 0)  # of writers gone
        # Events in spool files of writers gone, until a writer has adopted them.
        self._dead_spooled = 0
        self._fallback: Recorder | None = None
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        with self._send_lock:
            self._ensure_writer()
        self._thread = threading.Thread(target=self._run, name="agentcaps-audit-feed", daemon=True)
        self._thread.start()

    # -- state -----------------------------------------------------------------

    @property
    def writer(self) -> str:
        """The chain id of the writer events go to now ("" until a writer process reported)."""
        if self._fallback is not None:
            return self._fallback.writer
        child = self._child
        return str(child.status.get("writer", "")) if child is not None else ""

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id (None: none runs, e.g. after falling back to a thread)."""
        child = self._child
        return child.process.pid if child is not None and self._fallback is None else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def enabled(self) -> bool:
        return self._config.redis or bool(self._config.jsonl)

    def _reported(self, key: str) -> Any:
        child = self._child
        return child.status.get(key, 0) if child is not None else 0

    @property
    def queued(self) -> int:
        """Events in this process not yet taken by a writer: queued, being sent, unacknowledged."""
        own = len(self._queue) + self._inflight + self._unacked_events
        return own + (self._fallback.queued if self._fallback is not None else 0)

    @property
    def _dead_pending(self) -> int:
        """Events in spool files of writers gone, until a writer (or the fallback) has adopted them."""
        if self._fallback is not None and self._fallback.orphans_checked:
            return 0
        return self._dead_spooled

    @property
    def spool_pending(self) -> int:
        theirs = int(self._reported("spool_pending")) + self._dead_pending
        if self._fallback is not None:
            return self._fallback.spool_pending + theirs
        return theirs

    @property
    def held(self) -> int:
        theirs = self._fallback.held if self._fallback is not None else 0
        return theirs + int(self._reported("held"))

    @property
    def pending(self) -> int:
        own = len(self._queue) + self._inflight + self._unacked_events
        if not self.enabled:
            return own
        theirs = self._fallback.pending if self._fallback is not None else 0
        return own + theirs + int(self._reported("pending")) + self._dead_pending

    @property
    def log_available(self) -> bool:
        if self._fallback is not None:
            return self._fallback.log_available
        return bool(self._reported("log_available")) if self._child is not None else True

    def status(self) -> dict[str, Any]:
        """Counters for /readyz details and metrics: this process's and its writers' together."""
        with self._state:  # a writer's counters move to the totals of writers gone under it
            totals = dict(self._totals)
            for key in _STATUS_KEYS:
                totals[key] += int(self._reported(key))
                if self._fallback is not None:
                    totals[key] += getattr(self._fallback, key)
            spool_pending, held, pending = self.spool_pending, self.held, self.pending
        return {
            "writer": self.writer,
            "pending": pending,
            "queued": self.queued,
            "spooled": spool_pending - held,
            "held": held,
            **totals,
            "log_available": self.log_available,
            "writer_process": self.writer_pid,
            "writer_restarts": self._restarts,
        }

    # -- flushing and closing --------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event recorded so far is in the log, or the log refused them.

        Returns whether everything is in the log. Never raises.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            child: _Child | None = None
            with self._send_lock:
                self._send_queued()
                if self._fallback is None and self._ensure_writer():
                    child = self._child
                    assert child is not None
                    with self._state:
                        frame = child.next_frame
                        child.next_frame += 1
                    child.send(_frame(_FLUSH, _DOUBLE.pack(remaining)))
            if child is None:
                assert self._fallback is not None
                return self._fallback.flush(remaining) and self.pending == 0
            with self._state:
                answered = _answered(child, frame)
                self._state.wait_for(answered, max(deadline - time.monotonic(), 0.0))
                if child.through >= frame:
                    return self.pending == 0
            if time.monotonic() >= deadline:
                return self.pending == 0
            # The writer died before it answered: the next round starts another.

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, let the writer finish (log, or else spool), and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._send_lock:
            # From now on every record() and verified() finds the queue "full"
            # and hands its event on itself (`_spill`).
            self._limit = -1
            self._send_queued()
            child = self._child
            if child is not None:
                child.send(_frame(_CLOSING, _DOUBLE.pack(timeout)))
                child.end_input()
        if child is not None:
            try:
                child.process.wait(timeout + self._close_margin)
            except subprocess.TimeoutExpired:
                log.error(
                    "audit: the writer process %d did not finish in %.1f s; killed, "
                    "its unacknowledged events are written here",
                    child.process.pid,
                    timeout + self._close_margin,
                )
                child.kill()
            self._reader_done(child)
            with self._send_lock:
                if self._unacked or self._queue:
                    self._fall_back("the writer process ended before taking every event")
                    assert self._fallback is not None
                    self._send_queued()
        if self._fallback is not None:
            self._fallback.close(timeout)

    # -- sending ---------------------------------------------------------------

    def _spill(self) -> None:
        """The queue is full (or closed): the caller sends batches itself."""
        try:
            with self._send_lock:
                if self._limit < 0 and self._fallback is None:
                    # An event after close has ended the writer's input:
                    # written here (or spooled) by a closed thread Recorder,
                    # while the writer finishes. (Before that, close has not
                    # yet taken the writer in hand: it sends as ever.)
                    self._fallback = self._make_fallback()
                    self._fallback.close()
                self._send_queued(keep=max(self._limit - self._batch, 0))
        except Exception:  # a verification never fails because its record did
            log.exception("audit: sending a batch from the caller failed")

    def _send_queued(self, keep: int = 0) -> None:
        """Send what is queued, a frame per batch, until `keep` or fewer are left (caller holds the send lock)."""
        while len(self._queue) > keep:
            items = self._take(self._batch)
            self._inflight = len(items)
            try:
                self._show(items)
                if not self.enabled:
                    continue
                packed = [item[0] for item in items]
                if self._fallback is not None or not self._ensure_writer():
                    assert self._fallback is not None
                    self._fallback.enqueue(packed)
                    continue
                entry = [0, _events_frame(packed), len(packed)]
                with self._state:
                    self._unacked.append(entry)
                    self._unacked_events += len(packed)
                self._send_entry(entry)
            finally:
                self._inflight = 0

    def _send_entry(self, entry: list[Any]) -> None:
        """Number a frame for the current writer and write it (a dead writer is replaced later)."""
        child = self._child
        assert child is not None
        with self._state:
            entry[0] = child.next_frame
            child.next_frame += 1
        child.send(entry[1])

    def _ensure_writer(self) -> bool:
        """A live writer process, started (and sent every unacknowledged frame) if need be.

        False when writers cannot be kept running: the thread fallback takes
        over. Caller holds the send lock.
        """
        while True:
            if self._fallback is not None:
                return False
            child = self._child
            if child is not None and child.alive and child.process.poll() is None:
                return True
            if child is not None:
                child.kill()
                self._reader_done(child)
                self._restarts += 1
                log.warning(
                    "audit: the writer process %d ended (%s); starting another, "
                    "which is sent every event not yet taken",
                    child.process.pid,
                    child.process.returncode,
                )
            if self._starts >= MAX_STARTS:
                self._fall_back(
                    f"{self._starts} writer processes in a row ended without taking an event"
                )
                return False
            self._starts += 1
            try:
                child = _Child(self._command, self._config)
            except OSError as exc:
                log.error("audit: cannot start a writer process (%s)", exc)
                self._child = None
                self._starts = MAX_STARTS
                continue
            with self._state:
                self._child = child
            child.reader = threading.Thread(
                target=self._read_acks, args=(child,), name="agentcaps-audit-acks", daemon=True
            )
            child.reader.start()
            for entry in list(self._unacked):
                self._send_entry(entry)

    def _fall_back(self, why: str) -> None:
        """Write in a thread of this process from now on; hand it everything not taken (caller holds the send lock)."""
        if self._fallback is None:
            if why:
                log.error("audit: %s; writing audit events in this process from now on", why)
            self._fallback = self._make_fallback()
        child = self._child
        if child is not None:
            child.kill()  # what it took is in the log or its spool; the rest is handed over
            self._reader_done(child)
        with self._state:
            entries = list(self._unacked)
            self._unacked.clear()
        for entry in entries:
            self._fallback.enqueue(_unpack_events(memoryview(entry[1])[5:]))
            with self._state:
                self._unacked_events -= entry[2]

    # -- acknowledgements -----------------------------------------------------

    def _read_acks(self, child: _Child) -> None:
        """Take a writer's acknowledgements and status reports until it is gone."""
        frames = _Frames(child.acks)
        try:
            while True:
                messages = frames.read()
                if messages is None:
                    break
                child.heard = time.monotonic()
                report = json.loads(messages[-1])
                through = int(report["through"])
                with self._state:
                    child.status = report["status"]
                    if child is self._child and child.status.get("orphans_checked"):
                        # It has looked at every spool file of the writers
                        # gone before it started, and sent them on.
                        self._dead_spooled = 0
                    # Frame numbers are per writer: a replaced writer's late
                    # acknowledgement says nothing of frames sent to the next.
                    if through > child.through and child is self._child:
                        child.through = through
                        while self._unacked and self._unacked[0][0] <= through:
                            self._unacked_events -= self._unacked.popleft()[2]
                    if child is self._child and (
                        child.through > 0 or time.monotonic() - child.started >= _STABLE_AFTER
                    ):
                        self._starts = 0  # it worked: a later death is a crash, not a bad start
                    self._state.notify_all()
        except (OSError, ValueError, KeyError) as exc:
            log.error("audit: unreadable report from the writer process (%s)", exc)
        finally:
            os.close(child.acks)
            with self._state:
                child.alive = False
                # Its counters join those of writers gone; what it left in its
                # spool stays pending until the next writer adopts it.
                for key in _STATUS_KEYS:
                    self._totals[key] += int(child.status.get(key, 0))
                status = child.status
                held = int(status.get("held", 0))
                self._dead_spooled += int(status.get("spool_pending", 0)) - held
                if held:
                    # Taken (acknowledged) but in its memory only: neither
                    # Redis nor its spool had them.
                    self._totals["dropped"] += held
                    log.error(
                        "audit: %d event(s) are lost: the writer process %d ended holding them "
                        "in memory only (neither Redis nor its spool took them)",
                        held,
                        child.process.pid,
                    )
                child.status = {
                    "writer": status.get("writer", ""),
                    "log_available": status.get("log_available", True),
                    "spool_pending": 0,
                    "pending": 0,
                    "held": 0,
                }
                self._state.notify_all()
            self._wake.set()

    def _reader_done(self, child: _Child) -> None:
        """Wait for a gone writer's last reports (its pipe ends with it)."""
        if child.reader is not None and child.reader is not threading.current_thread():
            child.reader.join(5.0)

    # -- the feeder --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._send_lock:
                    if self._fallback is None:
                        self._ensure_writer()
                    self._send_queued()
            except Exception:  # the feeder must outlive one bad batch
                log.exception("audit feeder failed; retrying")
            self._wake.wait(self._interval)
            self._wake.clear()


# -- the writer process ------------------------------------------------------------


def _report(fd: int, lock: threading.Lock, through: int, recorder: Recorder) -> None:
    status = recorder.status()
    status["spool_pending"] = recorder.spool_pending
    message = json.dumps({"through": through, "status": status}).encode()
    with lock, contextlib.suppress(OSError):  # the parent is gone: input ends soon
        write_all(fd, _LENGTH.pack(len(message)) + message)


def serve(input_fd: int, status_fd: int) -> int:
    """The writer process: read frames from `input_fd`, store their events, acknowledge on `status_fd`."""
    from agentcaps.stores.audit import open_writer_recorder

    frames = _Frames(input_fd)
    first = frames.read()
    if not first or first[0][:1] != _CONFIG:
        log.error("audit writer: no configuration on input")
        return 2
    config = WriterConfig.decode(first[0][1:])
    rest = first[1:]
    recorder, closers = open_writer_recorder(config)
    lock = threading.Lock()
    taken = [0]  # frames whose events are taken: what may be acknowledged
    done = threading.Event()

    def report_now_and_then() -> None:
        last: Any = None
        sent = time.monotonic()
        while not done.wait(_STATUS_INTERVAL):
            now = recorder.status()
            if now != last or time.monotonic() - sent >= _HEARTBEAT:
                _report(status_fd, lock, taken[0], recorder)
                last, sent = now, time.monotonic()

    _report(status_fd, lock, 0, recorder)  # ready
    threading.Thread(target=report_now_and_then, daemon=True).start()
    close_timeout = 5.0
    read = 0  # frames read
    try:
        messages: list[bytes] | None = rest or frames.read()
        while messages is not None:
            # Every frame that has arrived, written together: one round trip
            # for a backlog, not one per frame.
            events: list[bytes] = []
            for message in messages:
                kind, body = message[:1], memoryview(message)[1:]
                if kind == _EVENTS:
                    events.extend(_unpack_events(body))
                elif kind == _FLUSH:
                    recorder.write(events)
                    events = []
                    taken[0] = read
                    recorder.flush(_DOUBLE.unpack(body)[0])
                elif kind == _CLOSING:
                    close_timeout = _DOUBLE.unpack(body)[0]
                read += 1
            recorder.write(events)
            taken[0] = read
            _report(status_fd, lock, read, recorder)
            messages = frames.read()
    finally:
        recorder.close(close_timeout)
        done.set()
        _report(status_fd, lock, taken[0], recorder)
        for closer in reversed(closers):
            closer()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agentcaps.stores.audit_writer [--log-format json|text] --status-fd N`: a writer process."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--log-format", choices=("json", "text"), default="text")
    args = parser.parse_args(argv)
    # Ctrl-C, a service manager's TERM and a reload's HUP can reach the whole
    # process group: the parent flushes through them, and ends this process
    # by closing its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the service's reload signal
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        from agentcaps.http.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s agentcaps audit writer[{os.getpid()}]: %(message)s"
            )
        )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return serve(sys.stdin.fileno(), args.status_fd)


if __name__ == "__main__":
    sys.exit(main())
