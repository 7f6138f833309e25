"""Audit events, their canonical encoding, the hash chains that make a trail tamper-evident, queries."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

import agentcaps
from agentcaps.audit import (
    FIELDS,
    GENESIS,
    AuditEvent,
    AuditKind,
    AuditQuery,
    Batch,
    HashChain,
    Head,
    StoredEvent,
    UnreadableEvent,
    batches_of,
    body_hash,
    body_of,
    check_chains,
    decode,
    event,
    issuer_event,
    key_event,
    mint_event,
    pack_fields,
    parse_time,
    policy_reload_event,
    revocation_event,
    verification_event,
    verification_fields,
)
from agentcaps.decision import Decision, Reason
from agentcaps.revocation import Revocation, RevocationKind, revocation_for
from agentcaps.stores.redis import Stores
from tests.conftest import SCOPE, FakeClock

NOW = 1_800_000_000.0


def seal(events: list[AuditEvent], chain: HashChain | None = None) -> Batch:
    """Events sealed into one writer's chain."""
    chain = chain or HashChain("wtest")
    return chain.seal([pack_fields(e.fields()) for e in events])


def stored(batch: Batch) -> list[StoredEvent]:
    """A batch as a log would hold it, one entry per event."""
    return [
        StoredEvent(f"{i + 1}-0", body, digest)
        for i, (body, digest) in enumerate(zip(batch.bodies, batch.hashes, strict=True))
    ]


def verifications(count: int) -> list[AuditEvent]:
    decision = Decision(True, Reason.OK, "ab" * 16, "k1", "acme", "alice", ("planner",))
    return [
        verification_event(decision, resource=f"crm/{i}", action="read", when=NOW + i)
        for i in range(count)
    ]


# -- what events hold -------------------------------------------------------------


def every_kind_of_event(
    memory_stores: Stores, minter: agentcaps.Minter, verifier: agentcaps.Verifier
) -> tuple[list[AuditEvent], list[str], list[bytes]]:
    """One event of each kind made from real tokens and keys, with the tokens and key bytes used."""
    minted = minter.issue(**SCOPE)  # type: ignore[arg-type]
    child = agentcaps.attenuate(minted.token, delegate_to="fetcher")
    decision = verifier.verify(child, resource="crm/a", action="read")
    key = memory_stores.keys.get(minted.key_id)
    assert key is not None
    revocation = revocation_for(
        agentcaps.decode_unverified(child), revoked_at=int(NOW), max_lifetime=3600,
        reason=f"leaked as {child}", by="acme/alice",
    )  # fmt: skip
    events = [
        verification_event(
            decision,
            resource=f"crm/{child}",
            action="read",
            purpose=child,
            actor=child,
            audience="gw",
            when=NOW,
        ),
        mint_event(NOW, caller="acme/issuer", minted=minted, **SCOPE),  # type: ignore[arg-type]
        issuer_event(NOW, caller="admin", customer="acme", minted=minted, ttl=600),
        revocation_event(NOW, revocation, target=decision),
        key_event(NOW, "revoke", key, caller="admin", why=f"see {minted.token}"),
        policy_reload_event(NOW, "mint", swapped=True, version="v2", previous_version="v1"),
    ]
    return events, [minted.token, child], [key.secret, key.derived]


def test_events_never_hold_a_token_or_key_material(
    memory_stores: Stores, minter: agentcaps.Minter, verifier: agentcaps.Verifier
) -> None:
    """No serialized event (stored body, JSON view) holds `agc_`, a token, or root key bytes."""
    events, tokens, secrets = every_kind_of_event(memory_stores, minter, verifier)
    batch = seal(events)
    assert {e.kind for e in events} == set(AuditKind)
    for body in batch.bodies:
        view = json.dumps(decode(body).to_dict())
        for text in (view, body.decode("latin-1")):
            assert "agc_" not in text
            for token in tokens:
                assert token[4:30] not in text
        for secret in secrets:
            assert secret not in body and secret.hex() not in view
    masked = decode(batch.bodies[0])
    assert masked.resource == "crm/[token]" and masked.purpose == "[token]"


def test_an_event_says_who_did_what_for_whom(
    memory_stores: Stores, minter: agentcaps.Minter, verifier: agentcaps.Verifier
) -> None:
    """A verification carries the decision, chain, delegation ids and request; a mint its scope."""
    events, _tokens, _secrets = every_kind_of_event(memory_stores, minter, verifier)
    verify, mint = decode(seal(events).bodies[0]), events[1]
    assert (verify.allowed, verify.reason, verify.chain) == (True, "ok", ("planner", "fetcher"))
    assert len(verify.delegation_ids) == 1 and verify.token_id == mint.token_id
    assert (verify.customer, verify.user, verify.agent, verify.audience) == (
        "acme", "alice", "fetcher", ("gw",),
    )  # fmt: skip
    assert (mint.resources, mint.actions, mint.ttl, mint.key_id is not None) == (
        ("crm/**",), ("read", "write"), 600, True,
    )  # fmt: skip


def test_event_refuses_fields_events_do_not_have() -> None:
    """`event()` names an unknown field instead of dropping it."""
    with pytest.raises(TypeError, match="token"):
        event(AuditKind.MINT, NOW, token="agc_x")


def test_a_body_is_the_msgpack_array_of_its_header_and_fields() -> None:
    """The stored body is exactly msgpack [1, writer, seq, prev, *FIELDS], whatever the seq."""
    chain = HashChain("wcanon", seq=300)
    e = verifications(1)[0]
    batch = chain.seal([pack_fields(e.fields())])
    body = batch.bodies[0]
    assert body == msgpack.packb([1, "wcanon", 300, GENESIS, *e.fields()])
    assert batch.hashes[0] == body_hash(body) and chain.prev == body_hash(body)
    assert len(msgpack.unpackb(body)) == 4 + len(FIELDS)


def test_a_json_view_gives_back_the_stored_body() -> None:
    """`body_of(to_dict())` re-encodes an event exactly: a JSON copy keeps its chain."""
    batch = seal(verifications(3))
    for body, digest in zip(batch.bodies, batch.hashes, strict=True):
        view = json.loads(json.dumps(decode(body, hash=digest).to_dict()))
        assert body_of(view) == body
        assert AuditEvent.from_dict(view) == decode(body)


# -- the hash chain ------------------------------------------------------------------


def test_an_intact_chain_checks_out() -> None:
    """Consecutive events, each linked to the last: no break."""
    report = check_chains(stored(seal(verifications(5))), trimmed=False)
    assert report.ok and report.writers == {"wtest": (0, 4, 5)} and report.checked == 5


def test_an_edited_event_is_named() -> None:
    """A body changed after sealing no longer matches its hash: that event is the first break."""
    entries = stored(seal(verifications(5)))
    edited = entries[2].body.replace(b"crm/2", b"crm/9")
    entries[2] = entries[2]._replace(body=edited)
    report = check_chains(entries, trimmed=False)
    assert report.first_break is not None
    assert report.first_break.event == "wtest:2" and "altered" in report.first_break.problem


def test_an_edited_event_with_a_recomputed_hash_is_named_by_its_successor() -> None:
    """Recomputing an edited event's hash breaks the next link, which names the edited event."""
    entries = stored(seal(verifications(5)))
    edited = entries[2].body.replace(b"crm/2", b"crm/9")
    entries[2] = entries[2]._replace(body=edited, hash=body_hash(edited))
    report = check_chains(entries, trimmed=False)
    assert report.first_break is not None and report.first_break.event == "wtest:2"
    assert "wtest:3" in report.first_break.problem


def test_a_deleted_event_is_named() -> None:
    """A gap in a writer's numbers names the first missing event."""
    entries = stored(seal(verifications(5)))
    del entries[1]
    report = check_chains(entries, trimmed=False)
    assert report.first_break is not None
    assert report.first_break.event == "wtest:1" and "deleted" in report.first_break.problem


def test_reordered_events_are_named() -> None:
    """An event that comes after a later one of its writer is named as reordered."""
    entries = stored(seal(verifications(5)))
    entries[1], entries[3] = entries[3], entries[1]
    report = check_chains(entries, trimmed=False)
    assert report.first_break is not None
    assert report.first_break.event == "wtest:1" and "deleted" in report.first_break.problem
    assert any("reordered" in b.problem for b in report.breaks)


def test_events_deleted_from_the_end_are_named_by_the_heads() -> None:
    """A chain shorter than its recorded head lost its last events."""
    batch = seal(verifications(5))
    entries = stored(batch)[:3]
    heads = {"wtest": Head(4, batch.hashes[4], NOW)}
    report = check_chains(entries, heads, trimmed=False)
    assert report.first_break is not None
    assert report.first_break.event == "wtest:3" and "at the end" in report.first_break.problem


def test_writers_interleaved_in_one_trail_are_checked_apart() -> None:
    """Two writers' events interleave in the stream; each chain is followed on its own."""
    a, b = seal(verifications(3), HashChain("wa")), seal(verifications(3), HashChain("wb"))
    mixed = [x for pair in zip(stored(a), stored(b), strict=True) for x in pair]
    report = check_chains(mixed, trimmed=False)
    assert report.ok and set(report.writers) == {"wa", "wb"}


def test_a_chain_may_start_late_only_when_the_trail_was_trimmed() -> None:
    """Retention removes a trail's oldest entries: allowed when trimmed, a break when not."""
    entries = stored(seal(verifications(5)))[2:]
    assert check_chains(entries, trimmed=True).ok
    report = check_chains(entries, trimmed=False)
    assert report.first_break is not None and report.first_break.event == "wtest:0"


def test_batches_of_groups_runs_of_one_writers_numbers() -> None:
    """Sealed events regroup into batches of consecutive numbers per writer."""
    a, b = seal(verifications(3), HashChain("wa")), seal(verifications(2), HashChain("wb"))
    groups = batches_of(a.events() + b.events())
    assert [(g.writer, g.first_seq, len(g)) for g in groups] == [("wa", 0, 3), ("wb", 0, 2)]
    assert [len(p) for p in a.split(2)] == [2, 1]


# -- queries ---------------------------------------------------------------------------


def test_a_query_matches_every_filter_given() -> None:
    """Token id, delegation id, customer, user, agent (acting or in the chain), kind and time."""
    decision = Decision(
        True, Reason.OK, "ab" * 16, "k1", "acme", "alice", ("planner", "fetcher"), ("cd" * 16,)
    )
    e = verification_event(decision, resource="crm/a", action="read", when=NOW)
    assert AuditQuery(token_id="ab" * 16, delegation_id="cd" * 16, customer="acme").matches(e)
    assert AuditQuery(agent="planner").matches(e) and AuditQuery(agent="fetcher").matches(e)
    assert AuditQuery(kind=AuditKind.VERIFY, since=NOW, until=NOW).matches(e)
    for miss in (
        AuditQuery(token_id="00" * 16), AuditQuery(customer="globex"), AuditQuery(user="bob"),
        AuditQuery(agent="writer"), AuditQuery(kind=AuditKind.MINT), AuditQuery(since=NOW + 1),
        AuditQuery(until=NOW - 1), AuditQuery(delegation_id="ee" * 16),
    ):  # fmt: skip
        assert not miss.matches(e), miss


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1800000000", NOW),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),
        ("2027-01-15T10:00:00+02:00", 1_800_000_000.0),
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("7d", NOW - 7 * 86400),
    ],
)
def test_times_are_unix_seconds_iso_8601_or_a_duration_ago(text: str, expected: float) -> None:
    """parse_time reads the three spellings the API and CLI accept."""
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "2027-01-15T08:00:00",
        "5 minutes",
        "nan",
        "inf",
        "-inf",
        "1e999",
        "9" * 400 + "d",
    ],
)
def test_a_time_that_is_none_of_those_is_refused(text: str) -> None:
    """A naive ISO time or free text is a ValueError with a hint."""
    with pytest.raises(ValueError):
        parse_time(text, NOW)


def test_revocation_events_name_what_was_revoked() -> None:
    """Each revocation kind lands in the field a query filters on."""
    cases: list[tuple[Revocation, dict[str, Any]]] = [
        (Revocation(RevocationKind.TOKEN, ("ab" * 16,), 1), {"token_id": "ab" * 16}),
        (Revocation(RevocationKind.DELEGATION, ("cd" * 16,), 1), {"delegation_ids": ("cd" * 16,)}),
        (Revocation(RevocationKind.KEY, ("k1",), 1), {"key_id": "k1"}),
        (Revocation(RevocationKind.USER, ("acme", "bob"), 1), {"customer": "acme", "user": "bob"}),
        (Revocation(RevocationKind.AGENT, ("crawler",), 1, reason="r", by="admin"),
         {"agent": "crawler", "why": "r", "caller": "admin"}),
    ]  # fmt: skip
    for revocation, expected in cases:
        e = revocation_event(NOW, revocation)
        assert e.op == revocation.kind.value
        for name, value in expected.items():
            assert getattr(e, name) == value, (revocation, name)


def test_event_times_come_from_the_clock_given(clock: FakeClock) -> None:
    """Events are stamped with the time they are built with, not the machine's clock."""
    assert policy_reload_event(clock(), "gateway", swapped=False, version="v", previous_version="v",
                               error="bad").time == clock()  # fmt: skip


def test_verification_fields_follow_the_field_order() -> None:
    """The verifier's fast path lays its fields out exactly as FIELDS says."""
    decision = Decision(False, Reason.RESOURCE_DENIED, "ab" * 16, "k1", "acme", "alice", ("p",))
    values = verification_fields(decision, "crm/a", "read", "sync", "p", "gw", 1e-5, NOW, "r1")
    named = dict(zip(FIELDS, values, strict=True))
    assert (named["kind"], named["reason"], named["resource"], named["request_id"]) == (
        "verify", "resource_denied", "crm/a", "r1",
    )  # fmt: skip
    assert named["latency_us"] == pytest.approx(10.0)


@pytest.mark.parametrize("when", [1e20, float("nan"), float("inf"), -1.0, "x", None])
def test_a_body_whose_time_is_not_a_date_is_unreadable_and_a_chain_break(when: Any) -> None:
    """Correctly chained but with a time no reader can show: unreadable (skipped by queries), a break for verify."""
    fields = list(event(AuditKind.KEY, NOW, op="create", key_id="k1").fields())
    fields[FIELDS.index("time")] = when
    batch = HashChain("wbad").seal([pack_fields(fields)])
    [sealed] = batch.events()
    with pytest.raises(UnreadableEvent):
        decode(sealed.body)
    report = check_chains([StoredEvent("1-0", sealed.body, sealed.hash)], trimmed=False)
    assert not report.ok and "not a date" in report.breaks[0].problem
