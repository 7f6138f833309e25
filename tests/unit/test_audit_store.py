"""The audit stream (RedisAuditLog) on the embedded store: writes, queries, paging, checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from agentcaps.audit import AuditKind, AuditQuery, HashChain, decode, event, pack_fields
from agentcaps.stores.audit import AuditTrail, RedisAuditLog, open_audit
from agentcaps.stores.redis import Stores

NOW = 1_800_000_000.0


def events(count: int, **fields: object) -> list[bytes]:
    fields.setdefault("customer", "acme")
    return [
        pack_fields(event(AuditKind.KEY, NOW + n, op="create", detail=f"e{n}", **fields).fields())
        for n in range(count)
    ]


@pytest.fixture
def log(memory_stores: Stores) -> RedisAuditLog:
    return RedisAuditLog(memory_stores.client)


def details(page_events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.detail for e in page_events]


def test_a_batch_is_stored_once_even_when_sent_again(log: RedisAuditLog) -> None:
    """Resending a batch (its acknowledgement was lost) adds nothing: the head says what is held."""
    batch = HashChain("wa").seal(events(3))
    assert log.append(batch) == 3
    assert log.append(batch) == 0  # says how many were new: none
    assert log.append(batch.split(2)[1]) == 0
    assert log.info()["length"] == 3
    assert log.heads()["wa"].seq == 2 and log.check().ok


def test_a_query_gives_the_newest_matches_oldest_first_and_pages_back(log: RedisAuditLog) -> None:
    """limit takes the newest; `before` continues with older ones; `after` follows newer ones."""
    log.append(HashChain("wa").seal(events(5)))
    page = log.query(AuditQuery(limit=2))
    assert details(page.events) == ["e3", "e4"] and page.before is not None
    older = log.query(AuditQuery(limit=2), before=page.before)
    assert details(older.events) == ["e1", "e2"]
    last = log.query(AuditQuery(limit=2), before=older.before)
    assert details(last.events) == ["e0"] and last.before is None
    chain = HashChain("wb")
    log.append(chain.seal(events(2, customer="globex")))
    newer = log.query(AuditQuery(limit=10), after=page.after)
    assert details(newer.events) == ["e0", "e1"] and newer.after is not None
    assert log.query(AuditQuery(limit=10), after=newer.after).events == []


def test_a_query_filters_by_customer(log: RedisAuditLog) -> None:
    """Only matching events come back; the scan reads past the others."""
    log.append(HashChain("wa").seal(events(3)))
    log.append(HashChain("wb").seal(events(2, customer="globex")))
    page = log.query(AuditQuery(customer="globex"))
    assert [e.customer for e in page.events] == ["globex", "globex"]
    assert page.scanned == 5 and page.complete


def test_a_scan_stops_at_its_cap_and_says_so(memory_stores: Stores) -> None:
    """A query reads at most scan_limit entries: complete is False, and `before` continues."""
    log = RedisAuditLog(memory_stores.client, scan_limit=3)
    log.append(HashChain("wa").seal(events(5)))
    page = log.query(AuditQuery(customer="nobody"))
    assert (page.events, page.scanned, page.complete) == ([], 3, False)
    assert page.before is not None


def test_an_entry_rewritten_in_the_stream_is_named(
    log: RedisAuditLog, memory_stores: Stores
) -> None:
    """Rewriting the stream with one body edited: check() names that event."""
    log.append(HashChain("wa").seal(events(4)))
    client = memory_stores.client
    entries = client.xrange(log.layout.events)
    client.delete(log.layout.events)
    for n, (_entry, fields) in enumerate(entries):
        body = fields[b"e"].replace(b"e2", b"e9") if n == 2 else fields[b"e"]
        client.xadd(log.layout.events, {"e": body, "h": fields[b"h"]})
    report = log.check()
    assert report.first_break is not None and report.first_break.event == "wa:2"


def test_an_entry_deleted_from_the_middle_is_named(
    log: RedisAuditLog, memory_stores: Stores
) -> None:
    """XDEL of one event: the gap names it."""
    log.append(HashChain("wa").seal(events(4)))
    client = memory_stores.client
    victim = client.xrange(log.layout.events)[1][0]
    client.xdel(log.layout.events, victim)
    report = log.check()
    assert report.first_break is not None and report.first_break.event == "wa:1"


def test_every_event_of_a_writer_deleted_is_named_by_its_head(
    log: RedisAuditLog, memory_stores: Stores
) -> None:
    """Deleting the whole stream leaves the heads: the writer's events are missing."""
    log.append(HashChain("wa").seal(events(2)))
    memory_stores.client.delete(log.layout.events)
    report = log.check()
    assert report.first_break is not None and "every event" in report.first_break.problem


def test_events_added_past_a_writers_head_are_a_break(
    log: RedisAuditLog, memory_stores: Stores
) -> None:
    """A forged event, correctly chained after the last one but without its writer's head: added."""
    chain = HashChain("wa")
    log.append(chain.seal(events(3)))
    [forged] = chain.seal(events(1)).events()  # wa:3, linked to wa:2's hash
    memory_stores.client.xadd(log.layout.events, {"e": forged.body, "h": forged.hash})
    report = log.check()
    assert report.first_break is not None and report.first_break.event == "wa:3"
    assert "after the recorded head" in report.first_break.problem


def test_events_written_while_a_check_reads_are_left_for_the_next_check(
    log: RedisAuditLog, memory_stores: Stores
) -> None:
    """The check reads the stream as it was with the heads: a writer going on meanwhile is no break."""
    chain = HashChain("wa")
    log.append(chain.seal(events(2)))
    real_scan = log.scan

    def scan_while_writing(**kwargs: object):  # type: ignore[no-untyped-def]
        log.append(chain.seal(events(2)))  # the writer goes on while the check reads
        return real_scan(**kwargs)  # type: ignore[arg-type]

    log.scan = scan_while_writing  # type: ignore[method-assign]
    report = log.check()
    assert report.ok and report.checked == 2


def test_an_unreadable_entry_is_a_break(log: RedisAuditLog, memory_stores: Stores) -> None:
    """An entry that is not an event (added by hand) breaks the check."""
    log.append(HashChain("wa").seal(events(1)))
    memory_stores.client.xadd(log.layout.events, {"x": "y"})
    assert not log.check().ok


@pytest.fixture
def trail(memory_stores: Stores) -> Iterator[AuditTrail]:
    trail = open_audit(memory_stores)
    yield trail
    trail.close()


def test_the_embedded_store_keeps_its_trail_in_process(
    trail: AuditTrail, memory_stores: Stores
) -> None:
    """On memory:// the trail is a stream in the embedded store, with no spool on disk."""
    assert trail.log is not None
    trail.recorder.record(event(AuditKind.KEY, NOW, op="create", key_id="k1"))
    assert trail.recorder.flush(5)
    [found] = trail.log.query(AuditQuery()).events
    assert found.key_id == "k1" and found.entry is not None and found.id == f"{found.writer}:0"


def test_audit_off_keeps_nothing(memory_stores: Stores) -> None:
    """AGENTCAPS_AUDIT=off: no stream, and the recorder keeps nothing."""
    settings = dataclasses.replace(memory_stores.settings, audit="off")
    trail = open_audit(memory_stores, settings=settings)
    try:
        assert trail.log is None and not trail.recorder.enabled
    finally:
        trail.close()


def test_decoded_entries_carry_where_they_are_stored(log: RedisAuditLog) -> None:
    """An event read back knows its stream entry, writer, number and hashes."""
    batch = HashChain("wa").seal(events(1))
    log.append(batch)
    [item] = list(log.scan())
    found = decode(item.body, hash=item.hash, entry=item.entry)
    assert (found.writer, found.seq, found.hash) == ("wa", 0, batch.hashes[0])
