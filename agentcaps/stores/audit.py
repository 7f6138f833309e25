"""The audit trail in Redis: one stream entry per event, written a batch at a time by one Lua script.

Layout (its own hash tag, so that on a Cluster the trail lives in its own
slot, away from keys and revocations):

    <ns>:{audit}:events  stream: one entry per event, fields `e` (the body:
                         canonical msgpack, see agentcaps.audit) and `h` (its SHA-256)
    <ns>:{audit}:heads   hash: writer -> "<seq> <hash> <ms>", each writer's last
                         event as written, and when (Redis time)

A batch (one writer's consecutive events) is one EVALSHA: the script skips
events the stream already holds (at or below the writer's head: a batch
resent from the spool is never written twice), XADDs the rest with `MAXLEN ~`,
moves the head and trims by age with `XTRIM MINID ~`, atomically. The
Python side packs one command per batch: a verification's record costs
the writer a few microseconds.

Queries read the stream with XRANGE/XREVRANGE and filter in Python, scanning
at most `scan_limit` entries per query (docs/audit.md). `open_audit` builds a
deployment's trail (Recorder, this log, JSON lines, spool) from its Stores.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis.exceptions import NoScriptError

from agentcaps.audit import (
    AuditPage,
    AuditQuery,
    Batch,
    ChainBreak,
    ChainReport,
    Head,
    StoredEvent,
    UnreadableEvent,
    check_chains,
    decode,
    key_event,
    revocation_event,
)
from agentcaps.config import (
    Settings,
    audit_writer_mode,
    default_state_dir,
    parse_audit,
    redact_url,
)
from agentcaps.errors import StoreUnavailable
from agentcaps.keys import RootKey
from agentcaps.recorder import BaseRecorder, Recorder
from agentcaps.revocation import Revocation
from agentcaps.stores.audit_writer import ProcessRecorder, WriterConfig
from agentcaps.stores.jsonl import JsonLinesLog
from agentcaps.stores.redis import (
    _ERRORS,
    FIRST_USE,
    UNCONFIRMED_REVOCATION,
    Client,
    Stores,
    _unavailable,
    open_client,
    parse_store_url,
)

log = logging.getLogger("agentcaps.audit")

Clock = Callable[[], float]

PAGE = 1000  # entries per XRANGE while scanning
_FIRST_ID = "0-0"
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"
SCRIPT_EVENTS = 256  # events per script call: ~1 ms of Redis time
DEFAULT_SCAN_LIMIT = 200_000  # entries one query reads at most
# Events are written after they happen, so an event's stream id is later than
# its time, give or take the clock skew between writers and Redis.
CLOCK_SKEW = 300.0
# The detail of the key event recorded when a mint creates its owner's first key.
FIRST_USE_DETAIL = FIRST_USE

#   KEYS: events, heads
#   ARGV: writer, first seq, max length, max age (s, 0: none), then the events:
#         their hashes (64 characters each) back to back, their bodies back to
#         back, and the bodies' lengths (4-byte big-endian each, back to back)
_APPEND = """
local head = redis.call('HGET', KEYS[2], ARGV[1])
local have = -1
if head then have = tonumber(string.match(head, '^(%d+)')) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = tonumber(ARGV[2])
local hashes, bodies, lengths = ARGV[5], ARGV[6], ARGV[7]
local h, b = 1, 1
local last, lasthash = nil, nil
local appended = 0
for l = 1, #lengths, 4 do
  local b1, b2, b3, b4 = string.byte(lengths, l, l + 3)
  local n = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if seq > have then
    local hash = string.sub(hashes, h, h + 63)
    redis.call('XADD', KEYS[1], '*', 'e', string.sub(bodies, b, b + n - 1), 'h', hash)
    last, lasthash = seq, hash
    appended = appended + 1
  end
  h = h + 64
  b = b + n
  seq = seq + 1
end
if last then
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d %s %d', last, lasthash, now))
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])
local age = tonumber(ARGV[4])
if age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', now - age * 1000))
end
return appended
"""


class AuditLayout:
    """Key names of the audit trail under one namespace."""

    def __init__(self, namespace: str = "agentcaps") -> None:
        base = f"{namespace}:{{audit}}:"
        self.events = base + "events"
        self.heads = base + "heads"


def _entry_ms(entry: str) -> float:
    return int(entry.split("-", 1)[0]) / 1000


def _stored(entry: Any, fields: Any) -> StoredEvent:
    return StoredEvent(
        entry.decode() if isinstance(entry, bytes) else str(entry),
        fields.get(b"e", b""),
        fields.get(b"h", b"").decode("ascii", "replace"),
    )


class RedisAuditLog:
    """The audit stream: an AuditLog to write, and the queries and checks that read it.

    Args:
        client: a Redis client (its timeouts bound each write and read).
        layout: key names.
        max_len: entries kept (approximately: `MAXLEN ~`).
        max_age: seconds entries are kept (approximately: `MINID ~`); 0: no age limit.
        scan_limit: entries one query reads at most.
    """

    def __init__(
        self,
        client: Client,
        *,
        layout: AuditLayout | None = None,
        max_len: int = 1_000_000,
        max_age: int = 0,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> None:
        self._client = client
        self.layout = layout or AuditLayout()
        self._max_len = max_len
        self._max_age = max_age
        self._scan_limit = scan_limit
        self._script = client.register_script(_APPEND)

    # -- writing -----------------------------------------------------------------

    def append(self, batch: Batch) -> int:
        """Store one writer's consecutive events; those the stream already holds are skipped.

        Returns how many were new to the stream (a spool file sent again,
        say after its writer died, is mostly skipped).

        Raises:
            StoreUnavailable: Redis did not take them (none or all of them are stored).
        """
        if not batch.bodies:
            return 0
        events, heads = self.layout.events, self.layout.heads
        calls = [self._args(part) for part in batch.split(SCRIPT_EVENTS)]
        for attempt in (1, 2):
            try:
                # One round trip for the whole batch, as scripts of at most
                # SCRIPT_EVENTS events: Redis serves other clients between them.
                pipe = self._client.pipeline(transaction=False)
                for args in calls:
                    pipe.evalsha(self._script.sha, 2, events, heads, *args)
                return sum(int(n) for n in pipe.execute())
            except NoScriptError:
                # A restarted Redis forgot the script: load it, send the batch
                # again (what was already written is skipped).
                if attempt == 2:
                    raise StoreUnavailable("Redis does not keep the audit script") from None
                try:
                    self._client.script_load(_APPEND)
                except _ERRORS as exc:
                    raise _unavailable(exc) from None
            except _ERRORS as exc:
                raise _unavailable(exc) from None
        raise AssertionError("not reached: the second attempt returns or raises")

    def _args(self, batch: Batch) -> list[Any]:
        # A few arguments for the whole batch, joined in C: per-event work in
        # the client would cost more than sealing the events did.
        return [
            batch.writer,
            batch.first_seq,
            self._max_len,
            self._max_age,
            "".join(batch.hashes),
            b"".join(batch.bodies),
            struct.pack(f">{len(batch.bodies)}I", *map(len, batch.bodies)),
        ]

    # -- reading -----------------------------------------------------------------

    def _range(self, start: str, end: str, count: int, reverse: bool) -> list[StoredEvent]:
        try:
            if reverse:
                raw = self._client.xrevrange(self.layout.events, max=start, min=end, count=count)
            else:
                raw = self._client.xrange(self.layout.events, min=start, max=end, count=count)
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return [_stored(entry, fields) for entry, fields in cast("list[Any]", raw)]

    def scan(
        self,
        *,
        after: str | None = None,
        before: str | None = None,
        until: str | None = None,
        reverse: bool = False,
    ) -> Iterator[StoredEvent]:
        """Every entry after `after` and up to `until` (or before `before`, newest first with `reverse`), paged.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        # Nothing is older than the first possible id or newer than the last;
        # Redis refuses such an exclusive bound rather than answer nothing.
        if (reverse and before == _FIRST_ID) or (not reverse and after == _LAST_ID):
            return
        if reverse:
            start, end = ("(" + before) if before else "+", "-"
        else:
            start, end = ("(" + after) if after else "-", until or "+"
        while True:
            page = self._range(start, end, PAGE, reverse)
            yield from page
            if len(page) < PAGE:
                return
            start = "(" + page[-1].entry

    def query(
        self, query: AuditQuery, *, after: str | None = None, before: str | None = None
    ) -> AuditPage:
        """Events matching `query`, oldest first.

        Without `after`, the newest `query.limit` matches (before `before`, if
        given), and `before` in the answer continues to older ones. With
        `after`, the oldest matches after that entry, and `after` in the
        answer continues from where this page ends (what `--follow` polls
        with). At most `scan_limit` entries are read: `complete` is False
        when the scan stopped there.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        found: list[Any] = []
        scanned = 0
        reverse = after is None
        # Scanning newest first, entries older than `since` (less the skew)
        # cannot hold events from after it.
        floor = (query.since - CLOCK_SKEW) if (reverse and query.since is not None) else None
        last_entry: str | None = None
        newest: str | None = None
        complete = True
        full = False
        for item in self.scan(after=after, before=before, reverse=reverse):
            if scanned >= self._scan_limit:
                complete = False
                break
            if floor is not None and _entry_ms(item.entry) < floor:
                break
            scanned += 1
            last_entry = item.entry
            if newest is None:
                newest = item.entry
            try:
                event = decode(item.body, hash=item.hash, entry=item.entry)
            except UnreadableEvent:
                continue
            if query.matches(event):
                found.append(event)
                if len(found) >= query.limit:
                    full = True
                    break
        if reverse:
            found.reverse()
            more = (found[0].entry if full else last_entry) if (full or not complete) else None
            return AuditPage(
                found, scanned, complete, before=more, after=newest if before is None else None
            )
        return AuditPage(found, scanned, complete, after=last_entry or after)

    def heads(self) -> dict[str, Head]:
        """Each writer's last event as the stream recorded it."""
        try:
            raw = cast("dict[bytes, bytes]", self._client.hgetall(self.layout.heads))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return _heads(raw)

    def _heads_and_last_entry(self) -> tuple[dict[str, Head], str | None]:
        """The heads and the stream's newest entry id, read together (one transaction)."""
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self.layout.heads)
            pipe.xrevrange(self.layout.events, count=1)
            raw, newest = pipe.execute()
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return _heads(raw), (newest[0][0].decode() if newest else None)

    def info(self) -> dict[str, Any]:
        """The stream's length, first entry and what Redis says was ever deleted from it."""
        try:
            raw: dict[str, Any] = self._client.xinfo_stream(self.layout.events)
        except _ERRORS as exc:
            if "no such key" in str(exc).lower():
                return {"length": 0, "first": None, "added": 0, "max_deleted": "0-0"}
            raise _unavailable(exc) from None
        first = raw.get("first-entry")
        deleted = raw.get("max-deleted-entry-id", b"0-0")
        return {
            "length": int(raw.get("length", 0)),
            "first": first[0].decode() if first else None,
            "added": int(raw.get("entries-added", raw.get("length", 0))),
            "max_deleted": deleted.decode() if isinstance(deleted, bytes) else str(deleted),
        }

    def check(self) -> ChainReport:
        """Check every writer's chain over the whole stream (see `agentcaps.audit.check_chains`).

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        info = self.info()
        heads, last = self._heads_and_last_entry()
        trimmed = info["max_deleted"] != "0-0" or info["added"] > info["length"]
        first = info["first"]
        if first is not None:
            trimmed_before = _entry_ms(first)
        else:  # an empty stream: only retention by age may have emptied it
            trimmed_before = time.time() - self._max_age if self._max_age else float("-inf")
        # The stream as it was when the heads were read: what writers add
        # meanwhile is checked next time, not taken for events past a head.
        stored = self.scan(until=last) if last is not None else iter(())
        report = check_chains(stored, heads, trimmed=trimmed, trimmed_before=trimmed_before)
        if first is not None and _entry_id(info["max_deleted"]) > _entry_id(first):
            # Trimming removes a stream's oldest entries only; this was XDEL.
            report.breaks.append(
                ChainBreak(
                    f"entry {info['max_deleted']}",
                    info["max_deleted"],
                    "deleted: Redis records a deletion from the middle of the stream",
                )
            )
        return report


def _heads(raw: dict[bytes, bytes]) -> dict[str, Head]:
    out: dict[str, Head] = {}
    for writer, value in raw.items():
        try:
            seq, digest, ms = value.decode().split(" ")
            out[writer.decode()] = Head(int(seq), digest, int(ms) / 1000)
        except ValueError:
            out[writer.decode()] = Head(-1, "", 0.0)
    return out


def _entry_id(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


# -- a deployment's trail --------------------------------------------------------


@dataclass
class AuditTrail:
    """What a process records its audit events with, and reads them from.

    `recorder` is the AuditSink to give Verifiers and to record other events
    with (a thread `Recorder`, or a `ProcessRecorder` feeding a writer
    process: AGENTCAPS_AUDIT_WRITER); `log` reads the stream (None when
    AGENTCAPS_AUDIT leaves Redis out).
    """

    recorder: BaseRecorder
    log: RedisAuditLog | None
    mirrors: list[JsonLinesLog] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and stop the recorder (what it cannot write goes to the spool), then disconnect."""
        self.recorder.close(timeout)
        for mirror in self.mirrors:
            mirror.close()
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()


def spool_directory(settings: Settings, url: str) -> Path:
    """The spool directory of one deployment: per store URL, so a spool only ever reaches its own store."""
    base = (
        Path(settings.audit_spool) if settings.audit_spool else default_state_dir() / "audit-spool"
    )
    return base / hashlib.sha256(redact_url(url).encode()).hexdigest()[:16]


def open_audit_log(
    stores: Stores, *, settings: Settings | None = None
) -> tuple[RedisAuditLog, Callable[[], None]]:
    """The audit stream of `stores`' deployment, to read (queries, checks), and its closer."""
    settings = settings or stores.settings
    if stores.memory:
        return RedisAuditLog(stores.client, max_age=settings.audit_max_age), lambda: None
    client, close = open_client(parse_store_url(stores.url), max(settings.redis_timeout, 1.0))
    return RedisAuditLog(
        client, max_len=settings.audit_max_len, max_age=settings.audit_max_age
    ), close


# Recorder options a writer process's Recorder takes, and those the feeder takes.
_WRITER_OPTIONS = ("queue_limit", "batch_size", "interval", "retry_interval")
_PROCESS_ONLY = ("command", "close_margin")
_FEEDER_OPTIONS = ("queue_limit", "batch_size", "interval", *_PROCESS_ONLY)


def open_writer_recorder(config: WriterConfig) -> tuple[Recorder, list[Callable[[], None]]]:
    """A writer process's thread Recorder on the targets `config` names (as `open_audit` opens them), and its closers."""
    closers: list[Callable[[], None]] = []
    redis_log: RedisAuditLog | None = None
    if config.redis:
        client, close = open_client(parse_store_url(config.url), config.timeout)
        closers.append(close)
        redis_log = RedisAuditLog(client, max_len=config.max_len, max_age=config.max_age)
    mirrors = [JsonLinesLog(target) for target in config.jsonl]
    closers.extend(mirror.close for mirror in mirrors)
    primary: Any = redis_log
    rest = mirrors
    if primary is None and mirrors:
        primary, rest = mirrors[0], mirrors[1:]
    options: dict[str, Any] = dict(config.options)
    for name in ("queue_limit", "batch_size"):
        if name in options:
            options[name] = int(options[name])
    spool = Path(config.spool) if config.spool is not None else None
    return Recorder(primary, mirrors=rest, spool=spool, **options), closers


def open_audit(
    stores: Stores,
    *,
    clock: Clock = time.time,
    settings: Settings | None = None,
    **options: Any,
) -> AuditTrail:
    """The audit trail of `stores`' deployment, as AGENTCAPS_AUDIT (`settings.audit`) says.

    `redis` writes the store's stream (on memory:// an in-process one, with
    no spool); `jsonl:-` or `jsonl:PATH` writes JSON lines; `off` records
    nowhere, though the recorder still feeds its observers (metrics).
    AGENTCAPS_AUDIT_WRITER (`settings.audit_writer`) says who seals and
    writes: a writer process (`ProcessRecorder`, the default on a real
    Redis) or a thread of this one (`Recorder`). `options` go to the
    Recorder (e.g. `retry_interval`; a writer process gets `queue_limit`,
    `batch_size`, `interval` and `retry_interval`, never `writer`: each
    writer process starts a chain of its own).

    Raises:
        ConfigError: a bad AGENTCAPS_AUDIT, AGENTCAPS_AUDIT_WRITER or store URL.
    """
    settings = settings or stores.settings
    targets = parse_audit(settings.audit)
    mode = audit_writer_mode(settings.audit_writer, targets, stores.memory)
    closers: list[Callable[[], None]] = []
    redis_log: RedisAuditLog | None = None
    spool: Path | None = None
    if targets.redis:
        if stores.memory:
            client: Client = stores.client
        else:
            # A client of its own: a batch may take longer than a verification's timeout.
            client, close = open_client(
                parse_store_url(stores.url), max(settings.redis_timeout, 1.0)
            )
            closers.append(close)
            spool = spool_directory(settings, stores.url)
        redis_log = RedisAuditLog(
            client, max_len=settings.audit_max_len, max_age=settings.audit_max_age
        )
    mirrors = [JsonLinesLog(target) for target in targets.jsonl]
    primary: Any = redis_log
    rest = mirrors
    if primary is None and mirrors:
        primary, rest = mirrors[0], mirrors[1:]
        # The record itself: a file it cannot write stops the start, rather
        # than every event being lost (and counted) from the first one on.
        primary.open_now()

    recorder_options = {k: v for k, v in options.items() if k not in _PROCESS_ONLY}

    def thread_recorder() -> Recorder:
        return Recorder(primary, mirrors=rest, spool=spool, clock=clock, **recorder_options)

    recorder: BaseRecorder
    if mode == "process":
        config = WriterConfig(
            url=stores.url,
            redis=targets.redis,
            jsonl=targets.jsonl,
            spool=str(spool) if spool is not None else None,
            max_len=settings.audit_max_len,
            max_age=settings.audit_max_age,
            timeout=max(settings.redis_timeout, 1.0),
            options={k: float(v) for k, v in options.items() if k in _WRITER_OPTIONS},
        )
        process_options = {k: v for k, v in options.items() if k in _FEEDER_OPTIONS}
        recorder = ProcessRecorder(
            config, thread_recorder, clock=clock, log_format=settings.log_format, **process_options
        )
    else:
        recorder = thread_recorder()

    def unrecorded(key: RootKey, why: str) -> None:
        # A key made by a mint, or by a call that then failed: recorded here
        # (with the request id), since no caller records it.
        recorder.record(key_event(clock(), "create", key, detail=why))

    closers.append(stores.keys.on_unrecorded_key(unrecorded))

    def unconfirmed(revocation: Revocation) -> None:
        recorder.record(revocation_event(clock(), revocation, note=UNCONFIRMED_REVOCATION))

    closers.append(stores.store.on_unrecorded_revocation(unconfirmed))
    return AuditTrail(recorder, redis_log, mirrors, closers)
