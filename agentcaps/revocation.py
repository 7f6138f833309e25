"""Revocations, the RevocationStore protocol, and the local index a replica keeps.

What can be revoked (DESIGN.md): a token id (with every attenuation of it), a
delegation id (that branch and everything below it), a root key id (every
token it signed), and a customer, a user of a customer or an agent (every token
issued for them, or naming the agent as a holder, at or before that moment).

Every revocation is one entry: a field naming what it touches and a value with
when it happened and when it may be forgotten (no token it touches can still be
valid by then). The store's Redis hash, its event stream and the local index
all hold exactly these fields and values, so that there is one way to judge a
token against revocations: `judge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import msgpack

from agentcaps.decision import Reason
from agentcaps.errors import InvalidArgument

# Names are printable (caveats.check_name), so a control character separates
# customer from user without ambiguity.
_SEP = b"\x1f"


class RevocationKind(StrEnum):
    """What a revocation touches; the value is also the field's one-letter tag."""

    KEY = "key"
    TOKEN = "token"
    DELEGATION = "delegation"
    CUSTOMER = "customer"
    USER = "user"
    AGENT = "agent"


_TAG = {
    RevocationKind.KEY: b"k",
    RevocationKind.TOKEN: b"t",
    RevocationKind.DELEGATION: b"d",
    RevocationKind.CUSTOMER: b"c",
    RevocationKind.USER: b"u",
    RevocationKind.AGENT: b"a",
}
_KIND = {tag[0]: kind for kind, tag in _TAG.items()}
_KEY, _TOKEN, _DELEGATION = b"k"[0], b"t"[0], b"d"[0]


class TokenFacts(NamedTuple):
    """What revocation judges a verified token by."""

    kid: str
    tid: bytes
    iat: int
    customer: str
    user: str
    delegation_ids: tuple[bytes, ...]
    holders: tuple[str, ...]


def fields_for(facts: TokenFacts) -> list[bytes]:
    """Every entry field that could revoke this token, key first."""
    fields = [b"k" + facts.kid.encode(), b"t" + facts.tid]
    fields.extend(b"d" + d for d in facts.delegation_ids)
    customer = facts.customer.encode()
    fields.append(b"c" + customer)
    fields.append(b"u" + customer + _SEP + facts.user.encode())
    fields.extend(b"a" + h.encode() for h in dict.fromkeys(facts.holders))
    return fields


def judge(
    facts: TokenFacts, fields: Sequence[bytes], revoked_at: Sequence[int | None]
) -> Reason | None:
    """The reason the found entries deny this token, or None.

    `revoked_at[i]` is when the entry for `fields[i]` was made, None if there
    is none. Key, token and delegation entries deny outright; customer, user
    and agent entries deny tokens issued at or before that second.
    """
    for field, at in zip(fields, revoked_at):
        if at is None:
            continue
        tag = field[0]
        if tag == _KEY:
            return Reason.KEY_REVOKED
        if tag == _TOKEN or tag == _DELEGATION or facts.iat <= at:
            return Reason.REVOKED
    return None


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: what it touches, when, why, by whom, and until when it matters.

    `subject` is (token id hex,), (delegation id hex,), (key id,), (customer,),
    (customer, user) or (agent,). `expires_at` None lets the store choose: its
    maximum token lifetime after `revoked_at`.
    """

    kind: RevocationKind
    subject: tuple[str, ...]
    revoked_at: int
    expires_at: int | None = None
    reason: str = ""
    by: str = ""

    def __post_init__(self) -> None:
        arity = 2 if self.kind is RevocationKind.USER else 1
        if len(self.subject) != arity or not all(isinstance(s, str) and s for s in self.subject):
            raise InvalidArgument(f"a {self.kind} revocation names {arity} non-empty value(s)")
        if self.kind in (RevocationKind.TOKEN, RevocationKind.DELEGATION):
            try:
                raw = bytes.fromhex(self.subject[0])
            except ValueError:
                raise InvalidArgument(f"a {self.kind} id is 32 lowercase hex characters") from None
            if len(raw) != 16 or raw.hex() != self.subject[0]:
                raise InvalidArgument(f"a {self.kind} id is 32 lowercase hex characters")

    def field(self) -> bytes:
        """The entry field, as `fields_for` spells it."""
        tag = _TAG[self.kind]
        if self.kind in (RevocationKind.TOKEN, RevocationKind.DELEGATION):
            return tag + bytes.fromhex(self.subject[0])
        return tag + _SEP.join(s.encode() for s in self.subject)

    def value(self) -> bytes:
        """The entry value: msgpack [revoked_at, expires_at, reason, by]."""
        if self.expires_at is None:
            raise ValueError("the store sets expires_at before writing")
        return msgpack.packb([self.revoked_at, self.expires_at, self.reason, self.by])  # type: ignore[no-any-return]

    @classmethod
    def from_entry(cls, field: bytes, value: bytes) -> Revocation:
        """Rebuild a revocation from a stored field and value."""
        kind = _KIND[field[0]]
        body = field[1:]
        if kind in (RevocationKind.TOKEN, RevocationKind.DELEGATION):
            subject: tuple[str, ...] = (body.hex(),)
        else:
            subject = tuple(part.decode() for part in body.split(_SEP))
        revoked_at, expires_at, reason, by = msgpack.unpackb(value)
        return cls(kind, subject, revoked_at, expires_at, reason, by)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        out: dict[str, object] = {"kind": self.kind.value}
        names = {
            RevocationKind.KEY: ("key_id",),
            RevocationKind.TOKEN: ("token_id",),
            RevocationKind.DELEGATION: ("delegation_id",),
            RevocationKind.CUSTOMER: ("customer",),
            RevocationKind.USER: ("customer", "user"),
            RevocationKind.AGENT: ("agent",),
        }[self.kind]
        out.update(zip(names, self.subject))
        out.update(
            revoked_at=self.revoked_at,
            expires_at=self.expires_at,
            reason=self.reason,
            by=self.by,
        )
        return out


def entry_times(value: bytes) -> tuple[int, int]:
    """(revoked_at, expires_at) of a stored entry value."""
    revoked_at, expires_at, _reason, _by = msgpack.unpackb(value)
    return revoked_at, expires_at


class RevocationStore(Protocol):
    """Where revocations live. `check` raises StoreUnavailable when it cannot know."""

    def check(self, facts: TokenFacts) -> Reason | None:
        """The reason a revocation denies this token, or None."""
        ...

    def revoke(self, revocation: Revocation) -> Revocation:
        """Record a revocation; return it as stored. Acknowledged only once durable."""
        ...

    def list(self) -> list[Revocation]:
        """Every live revocation."""
        ...


class RevocationIndex:
    """An in-memory copy of the revocation entries: what a replica checks locally.

    Entries are kept as field -> (revoked_at, expires_at); expired ones are
    dropped by `prune`. Checking a token costs a handful of dict lookups, so it
    stays flat however many entries there are.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, field: bytes, value: bytes) -> None:
        """Add or refresh one entry; a later revocation of the same thing wins."""
        revoked_at, expires_at = entry_times(value)
        current = self._entries.get(field)
        if current is None or current < (revoked_at, expires_at):
            self._entries[field] = (revoked_at, expires_at)

    def replace(self, entries: dict[bytes, tuple[int, int]]) -> None:
        """Swap in a whole new set of entries at once (after a full reload)."""
        self._entries = entries

    def prune(self, now: float) -> int:
        """Forget entries that can no longer touch a valid token; return how many."""
        expired = [f for f, (_, exp) in self._entries.items() if exp <= now]
        for field in expired:
            self._entries.pop(field, None)
        return len(expired)

    def check(self, facts: TokenFacts) -> Reason | None:
        """The reason an entry denies this token, or None."""
        entries = self._entries
        fields = fields_for(facts)
        found = [entries.get(f) for f in fields]
        return judge(facts, fields, [None if e is None else e[0] for e in found])


def default_expiry(revoked_at: int, max_lifetime: int, leeway: int) -> int:
    """When an entry made at `revoked_at` may be forgotten."""
    return revoked_at + max_lifetime + leeway

