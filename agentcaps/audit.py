"""Audit events, the AuditLog protocol, and the hash chains that make a stored trail tamper-evident.

An event says who did what, on whose behalf, when and why: a mint, a
verification, a revocation, a key operation, an issuer's creation, a policy
reload. Token ids, key ids and delegation ids appear in events; token values
and key material never do (text that looks like a token is masked).

Each process that records events is one **writer** with its own hash chain:
its events are numbered 0, 1, 2, … (`seq`) and each carries the SHA-256 of
the one before (`prev`). An event is stored as its **body**, the msgpack
array `[1, writer, seq, prev, kind, time, <FIELDS in order>]` (format 1),
and the body's SHA-256 (`hash`): a canonical encoding, hashed as stored, so
that any implementation can check a chain without re-encoding anything.
`check_chains` reads a stored trail in order and names the first event that
was altered, deleted or reordered (docs/audit.md).

Pure: no I/O. The background writer is `agentcaps.recorder`, the Redis
stream `agentcaps.stores.audit`.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import msgpack

from agentcaps.caveats import MAX_RESOURCE_CHARS
from agentcaps.decision import Decision
from agentcaps.keys import RootKey
from agentcaps.mint import MintedToken
from agentcaps.revocation import Revocation, RevocationKind
from agentcaps.wire import mask_tokens

FORMAT = 1
GENESIS = "0" * 64  # the `prev` of a writer's first event

# The request id of the request being served, set by the service's access
# middleware (and the ASGI middleware) and carried into audit events.
REQUEST_ID: ContextVar[str | None] = ContextVar("agentcaps_request_id", default=None)


class AuditKind(StrEnum):
    """What an event records."""

    MINT = "mint"
    VERIFY = "verify"
    REVOKE = "revoke"
    KEY = "key"
    ISSUER = "issuer"
    POLICY_RELOAD = "policy_reload"


# The fields of an event body after its header (format, writer, seq, prev), in
# stored order. Format 1 is fixed: new fields go at the end under a new format.
FIELDS = (
    "kind",
    "time",  # unix seconds (float) when it happened
    "caller",  # who asked: the service token's holder, `cli:<user>`, …
    "customer",  # on whose behalf: the customer …
    "user",  # … and the user
    "agent",  # the agent acting (a token's last holder) or minted for
    "chain",  # the provenance chain, first holder first
    "delegation_ids",
    "token_id",
    "key_id",
    "resource",  # a verification's request
    "action",
    "purpose",
    "actor",
    "audience",  # a verifier's audience name, or a minted token's audiences
    "resources",  # a mint's scope
    "actions",
    "purposes",
    "ttl",
    "expires_at",
    "max_delegations",
    "allowed",
    "reason",  # a decision reason (verify, mint)
    "request_id",
    "latency_us",  # how long the verification took
    "policy_version",
    "policies",  # the policies that decided
    "why",  # a revocation's (or key revocation's) stated reason
    "op",  # key: create/rotate/revoke; revoke: what kind; policy_reload: mint/gateway
    "detail",  # free text: a rotated key's successor, a reload's error, …
)
_HEADER = 4  # format, writer, seq, prev
# A body is a msgpack array of 4 + 30 elements (array 16: its header is 3 bytes);
# packing FIELDS alone gives the same elements after a header of 3 bytes too.
_BODY_HEADER = b"\xdc" + (_HEADER + len(FIELDS)).to_bytes(2, "big")
_FIELDS_HEADER = 3
LIST_FIELDS = frozenset(
    {"chain", "delegation_ids", "audience", "resources", "actions", "purposes", "policies"}
)


# No token allows a longer resource, and names are shorter still.
MAX_CALLER_TEXT = MAX_RESOURCE_CHARS
_CLIPPED = "…[clipped]"


def caller_text(text: str) -> str:
    """Text a caller sent, as an event keeps it: at most MAX_CALLER_TEXT characters, tokens masked.

    Clipped first, so that masking never scans megabytes; a token cut by the
    clip is still token-shaped, and masked.
    """
    if len(text) > MAX_CALLER_TEXT:
        text = text[:MAX_CALLER_TEXT] + _CLIPPED
    return mask_tokens(text)


def _clean(value: Any) -> Any:
    if type(value) is str:
        return mask_tokens(value)
    if type(value) is tuple or type(value) is list:
        return tuple(mask_tokens(v) if type(v) is str else v for v in value)
    return value


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit event; the header (writer, seq, prev, hash, entry) is set once it is stored.

    Build events with the `*_event` functions below, which take ids and
    names only, never a token or a key.
    """

    kind: AuditKind
    time: float
    caller: str | None = None
    customer: str | None = None
    user: str | None = None
    agent: str | None = None
    chain: tuple[str, ...] = ()
    delegation_ids: tuple[str, ...] = ()
    token_id: str | None = None
    key_id: str | None = None
    resource: str | None = None
    action: str | None = None
    purpose: str | None = None
    actor: str | None = None
    audience: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    ttl: int | None = None
    expires_at: int | None = None
    max_delegations: int | None = None
    allowed: bool | None = None
    reason: str | None = None
    request_id: str | None = None
    latency_us: float | None = None
    policy_version: str | None = None
    policies: tuple[str, ...] = ()
    why: str | None = None
    op: str | None = None
    detail: str | None = None
    # Set when the event is read back from a log.
    writer: str | None = field(default=None, compare=False)
    seq: int | None = field(default=None, compare=False)
    prev: str | None = field(default=None, compare=False)
    hash: str | None = field(default=None, compare=False)
    entry: str | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """`writer:seq`: the event's name in reports, stable wherever the event is stored."""
        return f"{self.writer}:{self.seq}"

    def fields(self) -> list[Any]:
        """The FIELDS in stored order, free text that looks like a token masked."""
        return [
            self.kind.value,
            self.time,
            *(_clean(getattr(self, name)) for name in FIELDS[2:]),
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: the header, `at` (ISO 8601, UTC), and every field that is set."""
        out: dict[str, Any] = {}
        if self.writer is not None:
            out.update(id=self.id, writer=self.writer, seq=self.seq, prev=self.prev, hash=self.hash)
        if self.entry is not None:
            out["entry"] = self.entry
        out["kind"] = self.kind.value
        out["time"] = self.time
        out["at"] = iso(self.time)
        for name in FIELDS[2:]:
            value = getattr(self, name)
            if value is None or (name in LIST_FIELDS and not value):
                continue
            out[name] = list(value) if name in LIST_FIELDS else value
        return out

    @classmethod
    def from_dict(cls, view: Mapping[str, Any]) -> AuditEvent:
        """The event of a JSON view (`to_dict`, an API answer, a JSON line).

        Raises:
            KeyError, ValueError, TypeError: not an event's view.
        """
        values = [view.get(name) for name in FIELDS]
        return cls.from_values(
            values,
            writer=view.get("writer"),
            seq=view.get("seq"),
            prev=view.get("prev"),
            hash=view.get("hash"),
            entry=view.get("entry"),
        )

    @classmethod
    def from_values(cls, values: Sequence[Any], **header: Any) -> AuditEvent:
        """The event of a decoded body's fields (FIELDS order)."""
        kwargs: dict[str, Any] = {}
        for name, value in zip(FIELDS, values, strict=False):
            if name in LIST_FIELDS:
                value = tuple(value or ())
            kwargs[name] = value
        kwargs["kind"] = AuditKind(kwargs["kind"])
        return cls(**kwargs, **header)


_EVENT_FIELDS = frozenset(f.name for f in fields(AuditEvent))


def iso(when: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. 2026-11-29T12:00:01.123Z."""
    return (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# -- building events (ids and names only) -------------------------------------


def verification_fields(
    decision: Decision,
    resource: str,
    action: str,
    purpose: str | None,
    actor: str | None,
    audience: str | None,
    seconds: float,
    when: float,
    request_id: str | None,
    policy_version: str | None = None,
    policies: tuple[str, ...] = (),
) -> list[Any]:
    """The FIELDS of a verification, straight from a verifier's hand-off (no AuditEvent is built).

    The request (resource, action, purpose, actor) is the caller's and
    untrusted: token-shaped text in it is masked, and text longer than any
    token could allow is clipped (`caller_text`). Names from the decision
    come from an authentic token.
    """
    if "agc_" in resource or len(resource) > MAX_CALLER_TEXT:
        resource = caller_text(resource)
    if "agc_" in action or len(action) > MAX_CALLER_TEXT:
        action = caller_text(action)
    if purpose is not None and ("agc_" in purpose or len(purpose) > MAX_CALLER_TEXT):
        purpose = caller_text(purpose)
    if actor is not None and ("agc_" in actor or len(actor) > MAX_CALLER_TEXT):
        actor = caller_text(actor)
    chain = decision.chain
    return [
        "verify",
        when,
        None,
        decision.customer,
        decision.user,
        chain[-1] if chain else None,
        chain,
        decision.delegation_ids,
        decision.token_id,
        decision.key_id,
        resource,
        action,
        purpose,
        actor,
        (audience,) if audience is not None else (),
        (),
        (),
        decision.purposes,
        None,
        decision.expires_at,
        None,
        decision.allowed,
        decision.reason,  # a str (StrEnum): packed as its value, without the enum lookup
        request_id,
        seconds * 1e6,
        policy_version,
        policies,
        None,
        None,
        None,
    ]


_packers = threading.local()


def pack_fields(fields: list[Any]) -> bytes:
    """An event's FIELDS packed: the body's tail, without the array header (see HashChain.seal).

    Runs in the verifying thread: one msgpack Packer per thread (a Packer is
    not thread-safe, and making one per call costs more than packing).
    """
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer().pack
    try:
        return pack(fields)[_FIELDS_HEADER:]  # type: ignore[no-any-return]
    except UnicodeEncodeError:
        # Text a caller gave (a resource, say) can hold lone surrogates, which
        # UTF-8 cannot carry: recorded escaped rather than not at all.
        return pack([_encodable(v) for v in fields])[_FIELDS_HEADER:]  # type: ignore[no-any-return]


def _encodable(value: Any) -> Any:
    if type(value) is str:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if type(value) is tuple or type(value) is list:
        return [_encodable(v) for v in value]
    return value


def verification_event(
    decision: Decision,
    *,
    resource: str,
    action: str,
    purpose: str | None = None,
    actor: str | None = None,
    audience: str | None = None,
    seconds: float = 0.0,
    when: float,
    request_id: str | None = None,
    policy_version: str | None = None,
) -> AuditEvent:
    """A verification as an AuditEvent (what the writer stores for a hand-off)."""
    fields_ = verification_fields(
        decision, resource, action, purpose, actor, audience, seconds, when, request_id,
        policy_version,
    )  # fmt: skip
    return AuditEvent.from_values(fields_)


def event(kind: AuditKind, when: float, **fields_: Any) -> AuditEvent:
    """An event of `kind` at `when`; the current request id is added when there is one.

    Raises:
        TypeError: a field that events do not have.
    """
    unknown = set(fields_) - _EVENT_FIELDS
    if unknown:
        raise TypeError(f"audit events have no field(s) {sorted(unknown)}")
    fields_.setdefault("request_id", REQUEST_ID.get())
    for name in LIST_FIELDS & set(fields_):
        fields_[name] = tuple(fields_[name] or ())
    return AuditEvent(kind, when, **fields_)


def mint_event(
    when: float,
    *,
    caller: str | None,
    customer: str,
    user: str,
    agent: str,
    resources: Sequence[str],
    actions: Sequence[str],
    purposes: Sequence[str],
    ttl: int,
    audience: Sequence[str] | None = None,
    max_delegations: int | None = None,
    minted: MintedToken | None = None,
    reason: str | None = None,
    policy_version: str | None = None,
    policies: Sequence[str] = (),
    detail: str | None = None,
) -> AuditEvent:
    """A mint: who asked, for whom, what scope; the token's id and key when it was minted.

    Without `minted` the mint was refused (`reason`, e.g. `policy_denied`).
    """
    return event(
        AuditKind.MINT,
        when,
        caller=caller,
        customer=customer,
        user=user,
        agent=agent,
        chain=(agent,),
        resources=resources,
        actions=actions,
        purposes=purposes,
        audience=audience or (),
        ttl=ttl,
        max_delegations=max_delegations,
        token_id=minted.token_id if minted else None,
        key_id=minted.key_id if minted else None,
        expires_at=minted.expires_at if minted else None,
        allowed=minted is not None,
        reason=reason if minted is None else "ok",
        policy_version=policy_version,
        policies=policies,
        detail=detail,
    )


def issuer_event(
    when: float, *, caller: str | None, customer: str, minted: MintedToken, ttl: int
) -> AuditEvent:
    """An issuer token made for `customer`'s backend."""
    return event(
        AuditKind.ISSUER,
        when,
        caller=caller,
        customer=customer,
        user="issuer",
        agent="issuer",
        token_id=minted.token_id,
        key_id=minted.key_id,
        ttl=ttl,
        expires_at=minted.expires_at,
        allowed=True,
    )


def key_revocation_events(
    when: float, key: RootKey, revocation: Revocation, *, caller: str | None
) -> list[AuditEvent]:
    """A root key revoked, however it was asked for: a key event and a revoke event.

    Both carry the key's owner, so `--customer C --kind revoke` finds it.
    """
    why = revocation.reason or None
    return [
        key_event(when, "revoke", key, caller=caller, why=why),
        revocation_event(when, revocation, owner=key.customer),
    ]


def revocation_event(
    when: float,
    revocation: Revocation,
    *,
    target: Decision | None = None,
    owner: str | None = None,
    note: str | None = None,
) -> AuditEvent:
    """A revocation: what (`op` is its kind), who asked (`caller`), why; `note` adds to the detail.

    `target` is the authentic decision of the token it was made from
    (revoking `{"token": T}`): its id, key, principal and provenance are
    recorded, so that the revocation shows under the right branch of T.
    """
    kind, subject = revocation.kind, revocation.subject
    fields_: dict[str, Any] = {}
    if target is not None:
        fields_.update(
            token_id=target.token_id,
            key_id=target.key_id,
            customer=target.customer,
            user=target.user,
            agent=target.agent,
            chain=target.chain,
            delegation_ids=target.delegation_ids,
        )
    if kind is RevocationKind.TOKEN:
        fields_["token_id"] = subject[0]
    elif kind is RevocationKind.DELEGATION:
        if subject[0] not in fields_.get("delegation_ids", ()):
            fields_["delegation_ids"] = (subject[0],)
    elif kind is RevocationKind.BRANCH:
        fields_["token_id"] = subject[0]
        fields_.setdefault("delegation_ids", subject[1:])
    elif kind is RevocationKind.KEY:
        fields_["key_id"] = subject[0]
        fields_["customer"] = owner  # the key's, when the caller knows it
    elif kind is RevocationKind.CUSTOMER:
        fields_["customer"] = subject[0]
    elif kind is RevocationKind.USER:
        fields_["customer"], fields_["user"] = subject
    elif kind is RevocationKind.AGENT:
        fields_["agent"] = subject[0]
    elif kind is RevocationKind.CUSTOMER_AGENT:
        fields_["customer"], fields_["agent"] = subject
    return event(
        AuditKind.REVOKE,
        when,
        caller=revocation.by or None,
        op=kind.value,
        why=revocation.reason or None,
        expires_at=revocation.expires_at,
        detail=f"revoked {kind.value} {'/'.join(subject)}" + (f"; {note}" if note else ""),
        **fields_,
    )


def key_event(
    when: float,
    op: str,
    key: RootKey,
    *,
    caller: str | None = None,
    why: str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    """A root key operation (`create`, `rotate`, `revoke`) on `key`; never its secret."""
    return event(
        AuditKind.KEY,
        when,
        caller=caller,
        op=op,
        key_id=key.kid,
        customer=key.customer,
        why=why or None,
        detail=detail,
    )


def policy_reload_event(
    when: float,
    policy: str,
    *,
    swapped: bool,
    version: str,
    previous_version: str,
    error: str | None = None,
) -> AuditEvent:
    """A policy reload of the `policy` set (mint or gateway): swapped in, or failed."""
    if error:
        detail = f"reload failed, still running {version}: {error}"
    else:
        detail = f"now running {version} (was {previous_version})"
    return event(
        AuditKind.POLICY_RELOAD,
        when,
        caller="policy-store",
        op=policy,
        policy_version=version,
        allowed=error is None,
        reason=None if error is None else "invalid",
        detail=detail,
    )


# -- the sink a Verifier hands verifications to --------------------------------


class AuditSink(Protocol):
    """Takes audit events off the caller's hands; never blocks on I/O, never raises for an event.

    `verified` is the verifier's hot path: implementations only queue what
    they are given (`agentcaps.recorder.Recorder` does).
    """

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
        """A verification was decided (in `seconds`); record it."""
        ...

    def record(self, event: AuditEvent) -> None:
        """Record any other event."""
        ...


# -- sealing: the hash chain ---------------------------------------------------


class Sealed(NamedTuple):
    """An event in its stored form: its body (canonical msgpack) and the body's SHA-256."""

    writer: str
    seq: int
    body: bytes
    hash: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive sealed events of one writer, numbered `first_seq`, `first_seq + 1`, …"""

    writer: str
    first_seq: int
    bodies: list[bytes]
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.bodies)

    def events(self) -> list[Sealed]:
        """One Sealed per event."""
        first, writer = self.first_seq, self.writer
        return [
            Sealed(writer, first + i, body, digest)
            for i, (body, digest) in enumerate(zip(self.bodies, self.hashes, strict=True))
        ]

    def split(self, size: int) -> list[Batch]:
        """This batch in pieces of at most `size` events."""
        return [
            Batch(
                self.writer,
                self.first_seq + i,
                self.bodies[i : i + size],
                self.hashes[i : i + size],
            )
            for i in range(0, len(self.bodies), size)
        ]


def batches_of(events: Sequence[Sealed]) -> list[Batch]:
    """Sealed events (in order) grouped into batches: runs of one writer's consecutive numbers."""
    out: list[Batch] = []
    for e in events:
        last = out[-1] if out else None
        if last is not None and last.writer == e.writer and last.first_seq + len(last) == e.seq:
            last.bodies.append(e.body)
            last.hashes.append(e.hash)
        else:
            out.append(Batch(e.writer, e.seq, [e.body], [e.hash]))
    return out


def new_writer_id() -> str:
    """A fresh writer (chain) id: `w` + 16 hex characters."""
    return "w" + secrets.token_hex(8)


def body_hash(body: bytes) -> str:
    """SHA-256 of an event body, lowercase hex."""
    return hashlib.sha256(body).hexdigest()


class HashChain:
    """One writer's chain: numbers its events and links each to the hash of the one before.

    Not thread-safe: one writer seals from one thread at a time (the recorder
    holds a lock around it).
    """

    def __init__(self, writer: str | None = None, seq: int = 0, prev: str = GENESIS) -> None:
        self.writer = writer or new_writer_id()
        self.seq = seq  # the next event's number
        self.prev = prev
        self._pack = msgpack.Packer().pack
        # The body up to the writer: the array header, the format, the writer id.
        self._prefix = _BODY_HEADER + self._pack(FORMAT) + self._pack(self.writer)

    def seal(self, packed: list[bytes]) -> Batch:
        """Seal events given as packed FIELDS (`pack_fields`): number them and chain them.

        Each body is the msgpack array [format, writer, seq, prev, *fields],
        put together from its parts (the same bytes msgpack would make of the
        whole list); its hash is the next event's `prev`.
        """
        pack, sha256, prefix = self._pack, hashlib.sha256, self._prefix
        seq, prev = self.seq, self.prev
        first = seq
        bodies: list[bytes] = []
        hashes: list[str] = []
        for tail in packed:
            body = b"".join((prefix, pack(seq), b"\xd9@", prev.encode("ascii"), tail))
            prev = sha256(body).hexdigest()
            bodies.append(body)
            hashes.append(prev)
            seq += 1
        self.seq, self.prev = seq, prev
        return Batch(self.writer, first, bodies, hashes)


class StoredEvent(NamedTuple):
    """An event as a log holds it: where (`entry`, e.g. a stream id), its body and its hash."""

    entry: str
    body: bytes
    hash: str


class UnreadableEvent(ValueError):
    """A stored body that is not an audit event of a known format."""


def body_of(view: Mapping[str, Any]) -> bytes:
    """The stored body of an event from its JSON view (`to_dict`), for checking a copy's chain.

    Raises:
        KeyError, TypeError: the view lacks the header or has the wrong types.
    """
    values = [
        list(view.get(name) or ()) if name in LIST_FIELDS else view.get(name) for name in FIELDS
    ]
    header = [FORMAT, view["writer"], view["seq"], view["prev"]]
    return msgpack.packb([*header, *values])  # type: ignore[no-any-return]


_LAST_TIME = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


def decode(body: bytes, *, hash: str | None = None, entry: str | None = None) -> AuditEvent:
    """The event in a stored body (nothing is checked against its hash here).

    Raises:
        UnreadableEvent: not an audit event of a format this version reads.
    """
    try:
        values = msgpack.unpackb(body, use_list=False, raw=False)
        if type(values) is not tuple or len(values) < _HEADER + 2 or values[0] != FORMAT:
            raise UnreadableEvent("not an audit event of format 1")
        _, writer, seq, prev, _kind, when = values[: _HEADER + 2]
        # What every reader relies on (ids, order, a time that is a date): a
        # stored body that breaks it is unreadable, never an error downstream.
        if type(writer) is not str or type(prev) is not str or type(seq) is not int or seq < 0:
            raise UnreadableEvent("an audit event's header has the wrong types")
        if type(when) not in (int, float) or not 0 <= when < _LAST_TIME:
            raise UnreadableEvent("an audit event's time is not a date")
        return AuditEvent.from_values(
            values[_HEADER:], writer=writer, seq=seq, prev=prev, hash=hash, entry=entry
        )
    except UnreadableEvent:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack and field errors: whatever the bytes, one error
        raise UnreadableEvent(f"not an audit event ({type(exc).__name__})") from None


# -- checking chains -----------------------------------------------------------


class Head(NamedTuple):
    """What a log recorded as a writer's last event when it wrote it: its number, hash and time."""

    seq: int
    hash: str
    time: float


class ChainBreak(NamedTuple):
    """The first sign of tampering found: the event it names and what is wrong."""

    event: str  # writer:seq
    entry: str | None  # where it is (or was) stored, when known
    problem: str


@dataclass
class ChainReport:
    """What `check_chains` found: events checked, each writer's range, every break."""

    checked: int = 0
    writers: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # first, last, count
    breaks: list[ChainBreak] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first_break(self) -> ChainBreak | None:
        return self.breaks[0] if self.breaks else None


def check_chains(
    stored: Iterable[StoredEvent],
    heads: Mapping[str, Head] | None = None,
    *,
    trimmed: bool = True,
    trimmed_before: float | None = None,
) -> ChainReport:
    """Check every writer's chain in a trail read in stored order.

    An event whose body does not hash to its stored hash was altered; one
    whose `prev` is not the hash of the writer's previous event names that
    previous event as altered or replaced; a gap in a writer's numbers names
    the first missing event as deleted; a number that goes back names the
    event as reordered or duplicated. `heads` (each writer's last event as
    recorded beside the trail) catch events deleted from the end of a chain.

    A writer's oldest surviving event may have a number above 0 when
    retention trimmed the ones before: allowed while `trimmed` (the trail
    lost entries from its start), a break otherwise. A head with no events
    left is allowed when it is older than `trimmed_before` (unix seconds).
    """
    report = ChainReport()
    last: dict[str, tuple[int, str, str]] = {}  # writer -> (seq, hash, entry)
    firsts: dict[str, int] = {}
    counts: dict[str, int] = {}
    for item in stored:
        report.checked += 1
        try:
            event = decode(item.body, hash=item.hash, entry=item.entry)
        except UnreadableEvent as exc:
            report.breaks.append(ChainBreak(f"entry {item.entry}", item.entry, str(exc)))
            continue
        writer, seq = event.writer, event.seq
        if type(writer) is not str or type(seq) is not int:
            report.breaks.append(ChainBreak(f"entry {item.entry}", item.entry, "no writer or seq"))
            continue
        name = event.id
        if body_hash(item.body) != item.hash:
            report.breaks.append(
                ChainBreak(name, item.entry, "altered: its contents do not match its hash")
            )
        seen = last.get(writer)
        if seen is None:
            firsts[writer] = seq
            if seq == 0:
                if event.prev != GENESIS:
                    report.breaks.append(
                        ChainBreak(name, item.entry, "altered: a first event must start the chain")
                    )
            elif not trimmed:
                report.breaks.append(
                    ChainBreak(
                        f"{writer}:0",
                        None,
                        f"deleted: events {writer}:0..{seq - 1} are missing and nothing was "
                        "trimmed by retention",
                    )
                )
        else:
            previous_seq, previous_hash, previous_entry = seen
            if seq == previous_seq + 1:
                if event.prev != previous_hash:
                    report.breaks.append(
                        ChainBreak(
                            f"{writer}:{previous_seq}",
                            previous_entry,
                            f"altered or replaced: the next event ({name}) records a different "
                            "hash for it",
                        )
                    )
            elif seq > previous_seq + 1:
                missing = f"{writer}:{previous_seq + 1}"
                span = missing if seq == previous_seq + 2 else f"{missing}..{seq - 1}"
                report.breaks.append(
                    ChainBreak(missing, None, f"deleted: {span} missing before {name}")
                )
            else:
                report.breaks.append(
                    ChainBreak(
                        name,
                        item.entry,
                        f"reordered or duplicated: found after {writer}:{previous_seq}",
                    )
                )
                continue  # keep judging what follows against the furthest point
        last[writer] = (seq, item.hash, item.entry)
        counts[writer] = counts.get(writer, 0) + 1
    for writer, head in sorted((heads or {}).items()):
        seen = last.get(writer)
        if seen is None:
            if trimmed_before is not None and head.time < trimmed_before:
                continue
            report.breaks.append(
                ChainBreak(
                    f"{writer}:{head.seq}",
                    None,
                    f"deleted: every event of writer {writer} is missing",
                )
            )
        elif seen[0] < head.seq:
            span = f"{writer}:{seen[0] + 1}" + (f"..{head.seq}" if head.seq > seen[0] + 1 else "")
            report.breaks.append(
                ChainBreak(f"{writer}:{seen[0] + 1}", None, f"deleted: {span} missing at the end")
            )
        elif seen[0] == head.seq and seen[1] != head.hash:
            report.breaks.append(
                ChainBreak(f"{writer}:{seen[0]}", seen[2], "altered: the recorded head differs")
            )
        elif seen[0] > head.seq:
            # A writer records its head with its events, atomically: events
            # past it were not written by that writer.
            span = f"{writer}:{head.seq + 1}" + (f"..{seen[0]}" if seen[0] > head.seq + 1 else "")
            report.breaks.append(
                ChainBreak(
                    f"{writer}:{head.seq + 1}", None, f"added: {span} after the recorded head"
                )
            )
    if heads is not None:
        for writer in sorted(set(last) - set(heads)):
            report.notes.append(f"writer {writer} has no recorded head (its end is unchecked)")
    for writer, (seq, _hash, _entry) in last.items():
        report.writers[writer] = (firsts[writer], seq, counts.get(writer, 0))
        if firsts[writer] > 0 and trimmed:
            report.notes.append(
                f"writer {writer} starts at {writer}:{firsts[writer]}: earlier events were "
                "trimmed by retention"
            )
    return report


# -- queries -------------------------------------------------------------------

MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events a query wants; every filter given must match.

    `agent` matches the agent acting or any holder in the chain; `since` and
    `until` bound the event's time (unix seconds, inclusive).
    """

    token_id: str | None = None
    delegation_id: str | None = None
    customer: str | None = None
    user: str | None = None
    agent: str | None = None
    kind: AuditKind | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100

    def matches(self, event: AuditEvent) -> bool:
        if self.token_id is not None and event.token_id != self.token_id:
            return False
        if self.delegation_id is not None and self.delegation_id not in event.delegation_ids:
            return False
        if self.customer is not None and event.customer != self.customer:
            return False
        if self.user is not None and event.user != self.user:
            return False
        if self.agent is not None and event.agent != self.agent and self.agent not in event.chain:
            return False
        if self.kind is not None and event.kind is not self.kind:
            return False
        if self.since is not None and event.time < self.since:
            return False
        return self.until is None or event.time <= self.until


class AuditPage(NamedTuple):
    """The answer to a query: matching events in stored order, and where to continue.

    `before`/`after` are cursors for the next page (older / newer); `complete`
    is False when the scan stopped at its cap before the trail's end.
    """

    events: list[AuditEvent]
    scanned: int
    complete: bool
    before: str | None = None
    after: str | None = None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """A time given as unix seconds, ISO 8601 with a zone, or a duration ago (`90s`, `15m`, `2h`, `7d`).

    Raises:
        ValueError: none of those.
    """
    text = text.strip()
    match = _DURATION.match(text)
    try:
        seconds = now - float(match.group(1)) * _UNITS[match.group(2)] if match else float(text)
    except ValueError:
        pass
    else:
        # "nan" compares false with every time: the filter would silently vanish.
        if not math.isfinite(seconds):
            raise ValueError("not a time: it must be a finite number")
        return seconds
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(
            "not a time: give unix seconds, ISO 8601 with a zone "
            "(2026-12-01T10:00:00Z) or a duration ago (15m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        raise ValueError("the time has no zone: add Z for UTC or an offset")
    return when.timestamp()


# -- the store's side ----------------------------------------------------------


class AuditLog(Protocol):
    """Where sealed events are kept, in order. Implementations raise StoreUnavailable when they cannot take them.

    `append` must be idempotent per writer: events numbered at or below what
    the log already holds for their writer are skipped, so a batch whose
    acknowledgement was lost can be sent again (from the spool) safely.
    """

    def append(self, batch: Batch) -> int | None:
        """Store a batch (one writer's consecutive events), in order; how many were new (None: all)."""
        ...
