"""JSON lines for log shippers: every event as one line, a copy whose chain `audit verify --jsonl` checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agentcaps.audit import AuditKind, check_chains, event
from agentcaps.errors import ConfigError
from agentcaps.stores.audit import open_audit
from agentcaps.stores.jsonl import read_jsonl
from agentcaps.stores.redis import Stores

NOW = 1_800_000_000.0


def record(stores: Stores, target: Path, count: int) -> None:
    settings = dataclasses.replace(stores.settings, audit=f"redis,jsonl:{target}")
    trail = open_audit(stores, settings=settings)
    try:
        for n in range(count):
            trail.recorder.record(event(AuditKind.KEY, NOW + n, op="create", key_id=f"k{n}"))
    finally:
        trail.close()


def test_every_event_is_one_json_line_with_its_chain(memory_stores: Stores, tmp_path: Path) -> None:
    """With redis,jsonl:FILE each event is a JSON object per line, carrying writer, seq, prev and hash."""
    target = tmp_path / "audit.jsonl"
    record(memory_stores, target, 3)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(v["kind"], v["key_id"], v["seq"]) for v in lines] == [
        ("key", "k0", 0),
        ("key", "k1", 1),
        ("key", "k2", 2),
    ]
    assert lines[1]["prev"] == lines[0]["hash"]
    assert check_chains(read_jsonl(target), trimmed=False).ok


def test_an_edited_json_line_is_named(memory_stores: Stores, tmp_path: Path) -> None:
    """Changing a field in the JSON copy breaks its chain at that event."""
    target = tmp_path / "audit.jsonl"
    record(memory_stores, target, 3)
    lines = target.read_text().splitlines()
    view = json.loads(lines[1])
    view["key_id"] = "k9"
    lines[1] = json.dumps(view)
    target.write_text("\n".join(lines) + "\n")
    report = check_chains(read_jsonl(target), trimmed=False)
    assert report.first_break is not None and report.first_break.event == f"{view['writer']}:1"


def test_a_line_that_is_not_an_event_is_a_break(tmp_path: Path) -> None:
    """Garbage in the copy is reported, not skipped."""
    target = tmp_path / "audit.jsonl"
    target.write_text('{"kind": "mint"}\nnot json\n')
    assert len(check_chains(read_jsonl(target), trimmed=True).breaks) == 2


@pytest.mark.parametrize(
    "line",
    [
        b'{"writer": "w", "seq": 18446744073709551616, "prev": "0", "kind": "key", "time": 1}',
        b"[" * 100_000,
        b'{"kind": "\\xff\\xfe"}'.replace(b"\\xff\\xfe", b"\xff\xfe"),
    ],
)
def test_a_line_no_reader_can_take_is_an_unreadable_event(tmp_path: Path, line: bytes) -> None:
    """Numbers msgpack cannot carry, nesting past the parser, bytes that are not UTF-8: a break, not a crash."""
    target = tmp_path / "odd.jsonl"
    target.write_bytes(line + b"\n")
    report = check_chains(read_jsonl(target), trimmed=True)
    assert report.checked == 1 and len(report.breaks) == 1


def test_a_json_lines_record_that_cannot_be_written_stops_the_start(
    memory_stores: Stores, tmp_path: Path
) -> None:
    """JSON lines as the only target are the record: an unwritable file is refused at once."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    settings = dataclasses.replace(memory_stores.settings, audit=f"jsonl:{blocked}/audit.jsonl")
    with pytest.raises(ConfigError, match="cannot write audit lines"):
        open_audit(memory_stores, settings=settings)
