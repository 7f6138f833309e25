"""Revocations, the RevocationStore protocol, and the local index a replica keeps.

What can be revoked (DESIGN.md): a token id (with every attenuation of it), a
delegation id (that branch and everything below it), a root key id (every
token it signed), and a customer, a user of a customer or an agent (every token
issued for them, or naming the agent as a holder, at or before that moment).

Every revocation is one entry: a field naming what it touches and a value with
when it happened and when it may be forgotten (no token it touches can still be
valid by then). The store's Redis hash, its event stream and the local index
all hold exactly these fields and values, and one class judges a token against
them: `RevocationIndex`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import msgpack

from agentcaps import caveats as cv
from agentcaps.claims import UnverifiedToken
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
    # One branch of one token's tree: its token id and the delegation ids down
    # to the branch. What a token revoking itself records: a holder can append
    # a delegate caveat with any id, so a bare delegation id from a token's own
    # hand could name another token's branch.
    BRANCH = "branch"
    CUSTOMER = "customer"
    USER = "user"
    AGENT = "agent"
    # An agent name within one customer: what that customer's issuers may
    # revoke (agent names are each customer's own choice; AGENT is global).
    CUSTOMER_AGENT = "customer_agent"


_TAG = {
    RevocationKind.KEY: b"k",
    RevocationKind.TOKEN: b"t",
    RevocationKind.DELEGATION: b"d",
    RevocationKind.BRANCH: b"b",
    RevocationKind.CUSTOMER: b"c",
    RevocationKind.USER: b"u",
    RevocationKind.AGENT: b"a",
    RevocationKind.CUSTOMER_AGENT: b"g",
}
_KIND = {tag[0]: kind for kind, tag in _TAG.items()}
# Entries of these kinds deny outright; the others only tokens issued before.
_ABSOLUTE_TAGS = frozenset(b"ktdb")
_IDS = (RevocationKind.TOKEN, RevocationKind.DELEGATION, RevocationKind.BRANCH)
_BRANCH_TAG = _TAG[RevocationKind.BRANCH][0]
_CUSTOMER_AGENT_TAG = _TAG[RevocationKind.CUSTOMER_AGENT][0]
_ID_BYTES = 16


class TokenFacts(NamedTuple):
    """What revocation judges a verified token by."""

    kid: str
    tid: bytes
    iat: int
    customer: str
    user: str
    delegation_ids: tuple[bytes, ...]
    holders: tuple[str, ...]


def _since_fields(facts: TokenFacts) -> list[bytes]:
    customer = facts.customer.encode()
    fields = [b"c" + customer, b"u" + customer + _SEP + facts.user.encode()]
    holders = dict.fromkeys(facts.holders)
    fields.extend(b"a" + h.encode() for h in holders)
    scope = b"g" + customer + _SEP
    fields.extend(scope + h.encode() for h in holders)
    return fields


def _branch_fields(facts: TokenFacts) -> list[bytes]:
    """The token's branch and every branch above it, within its own token's tree."""
    fields, path = [], b"b" + facts.tid
    for delegation_id in facts.delegation_ids:
        path += delegation_id
        fields.append(path)
    return fields


def fields_for(facts: TokenFacts) -> list[bytes]:
    """Every entry field that could revoke this token: what direct mode asks Redis for."""
    fields = [b"k" + facts.kid.encode(), b"t" + facts.tid]
    fields.extend(b"d" + d for d in facts.delegation_ids)
    fields.extend(_branch_fields(facts))
    fields.extend(_since_fields(facts))
    return fields


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
        if self.kind is RevocationKind.BRANCH:
            right = 2 <= len(self.subject) <= 1 + cv.MAX_LIST_ITEMS
            what = "a token id and the delegation ids down to the branch"
        else:
            arity = 2 if self.kind in (RevocationKind.USER, RevocationKind.CUSTOMER_AGENT) else 1
            right = len(self.subject) == arity
            what = f"{arity} non-empty value(s)"
        if not right or not all(isinstance(s, str) and s for s in self.subject):
            raise InvalidArgument(f"a {self.kind} revocation names {what}")
        if self.kind in _IDS:
            for value in self.subject:
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raw = b""
                if len(raw) != _ID_BYTES or raw.hex() != value:
                    raise InvalidArgument(f"a {self.kind} id is 32 lowercase hex characters")

    def field(self) -> bytes:
        """The entry field, as `fields_for` spells it."""
        tag = _TAG[self.kind]
        if self.kind in _IDS:
            return tag + b"".join(bytes.fromhex(s) for s in self.subject)
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
        if kind in _IDS:
            subject: tuple[str, ...] = tuple(
                body[i : i + _ID_BYTES].hex() for i in range(0, len(body), _ID_BYTES)
            )
        else:
            subject = tuple(part.decode() for part in body.split(_SEP))
        revoked_at, expires_at, reason, by = msgpack.unpackb(value)
        return cls(kind, subject, revoked_at, expires_at, reason, by)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        out: dict[str, object] = {"kind": self.kind.value}
        if self.kind is RevocationKind.BRANCH:
            # The branch's own delegation id, and the path to it from its token.
            out.update(
                token_id=self.subject[0],
                delegation_id=self.subject[-1],
                delegation_ids=list(self.subject[1:]),
            )
        names = {
            RevocationKind.KEY: ("key_id",),
            RevocationKind.TOKEN: ("token_id",),
            RevocationKind.DELEGATION: ("delegation_id",),
            RevocationKind.BRANCH: (),
            RevocationKind.CUSTOMER: ("customer",),
            RevocationKind.USER: ("customer", "user"),
            RevocationKind.AGENT: ("agent",),
            RevocationKind.CUSTOMER_AGENT: ("customer", "agent"),
        }[self.kind]
        out.update(zip(names, self.subject))
        out.update(
            revoked_at=self.revoked_at,
            expires_at=None if self.expires_at == NEVER_EXPIRES else self.expires_at,
            reason=self.reason,
            by=self.by,
        )
        return out


def entry_times(value: bytes) -> tuple[int, int]:
    """(revoked_at, expires_at) of a stored entry value."""
    revoked_at, expires_at, _reason, _by = msgpack.unpackb(value)
    return revoked_at, expires_at


class RevocationStore(Protocol):
    """Where revocations live. `check` raises StoreUnavailable when it cannot know.

    A store may say `local = True` when `check` does no I/O (an in-process
    index): verifiers then decide on an event loop without a thread hop.
    """

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
    """Revocation entries in memory, and the one place a token is judged against them.

    A replica keeps every entry here; direct mode builds a small one from the
    entries Redis returned for a token. Key, token and delegation entries deny
    outright; customer, user and agent entries deny tokens issued at or before
    the revocation. They are kept apart so that a check costs a few dict
    lookups, flat however many entries there are, and skips the customer,
    user and agent lookups entirely while there are none of those.
    """

    __slots__ = ("_absolute", "_branches", "_customer_agents", "_instants", "_since")
    local = True  # a check is a few dict lookups in this process

    def __init__(self) -> None:
        self._absolute: dict[bytes, int] = {}  # field -> expires_at
        self._since: dict[bytes, tuple[int, int]] = {}  # field -> (revoked_at, expires_at)
        # Expiries are kept to the next whole minute (an entry outlives its
        # need by under a minute) and each such minute is one shared int:
        # revocations made in the same minute share it, which keeps the index
        # small when it holds millions of entries.
        self._instants: dict[int, int] = {}
        # Whether any branch entry was ever added: a token's branch fields are
        # built only then (most deployments revoke by token id or key).
        self._branches = False
        self._customer_agents = False  # the same, for one customer's agent entries

    def __len__(self) -> int:
        return len(self._absolute) + len(self._since)

    @classmethod
    def of(cls, entries: Iterable[tuple[bytes, bytes | None]]) -> RevocationIndex:
        """An index of stored (field, value) pairs; pairs with no value are skipped."""
        index = cls()
        for field, value in entries:
            if value is not None:
                index.apply(field, value)
        return index

    def _put(self, field: bytes, revoked_at: int, expires_at: int) -> None:
        minute = -(-expires_at // 60) * 60
        expires_at = self._instants.setdefault(minute, minute)
        if field[0] in _ABSOLUTE_TAGS:
            self._branches = self._branches or field[0] == _BRANCH_TAG
            if self._absolute.get(field, -1) < expires_at:
                self._absolute[field] = expires_at
        else:
            self._customer_agents = self._customer_agents or field[0] == _CUSTOMER_AGENT_TAG
            current = self._since.get(field)
            if current is None or current < (revoked_at, expires_at):
                self._since[field] = (revoked_at, expires_at)

    def apply(self, field: bytes, value: bytes) -> None:
        """Add or refresh one stored entry; a later revocation of the same thing wins."""
        revoked_at, expires_at = entry_times(value)
        self._put(field, revoked_at, expires_at)

    def replace(self, entries: dict[bytes, tuple[int, int]]) -> None:
        """Swap in a whole new set of entries, field -> (revoked_at, expires_at)."""
        fresh = RevocationIndex()
        for field, (revoked_at, expires_at) in entries.items():
            fresh._put(field, revoked_at, expires_at)
        # Attribute stores: a concurrent check sees the old or the new set of
        # each kind, never a half-built one.
        self._absolute, self._since = fresh._absolute, fresh._since
        self._instants, self._branches = fresh._instants, fresh._branches
        self._customer_agents = fresh._customer_agents

    def prune(self, now: float) -> int:
        """Forget entries that can no longer touch a valid token; return how many."""
        stale = [f for f, exp in self._absolute.items() if exp <= now]
        for field in stale:
            self._absolute.pop(field, None)
        stale_since = [f for f, (_, exp) in self._since.items() if exp <= now]
        for field in stale_since:
            self._since.pop(field, None)
        self._instants = {t: t for t in self._instants if t > now}
        return len(stale) + len(stale_since)

    def check(self, facts: TokenFacts) -> Reason | None:
        """The reason an entry denies this token, or None."""
        absolute = self._absolute
        if absolute:
            if b"k" + facts.kid.encode() in absolute:
                return Reason.KEY_REVOKED
            if b"t" + facts.tid in absolute:
                return Reason.REVOKED
            for delegation_id in facts.delegation_ids:
                if b"d" + delegation_id in absolute:
                    return Reason.REVOKED
            if self._branches and facts.delegation_ids:
                for field in _branch_fields(facts):
                    if field in absolute:
                        return Reason.REVOKED
        since = self._since
        if since:
            # The fields of _since_fields, looked up as they are made (no
            # list, no de-duplication): this runs on every verification.
            get, iat, customer = since.get, facts.iat, facts.customer.encode()
            entry = get(b"c" + customer)
            if entry is not None and iat <= entry[0]:
                return Reason.REVOKED
            entry = get(b"u" + customer + _SEP + facts.user.encode())
            if entry is not None and iat <= entry[0]:
                return Reason.REVOKED
            scope = b"g" + customer + _SEP if self._customer_agents else None
            for holder in facts.holders:
                name = holder.encode()
                entry = get(b"a" + name)
                if entry is not None and iat <= entry[0]:
                    return Reason.REVOKED
                if scope is not None:
                    entry = get(scope + name)
                    if entry is not None and iat <= entry[0]:
                        return Reason.REVOKED
        return None


# A root key's entry is kept for good: a verifier that read the key before it
# was revoked keeps it in memory, and only the entry tells it otherwise.
NEVER_EXPIRES = 2**62


def default_expiry(revoked_at: int, max_lifetime: int, leeway: int) -> int:
    """When an entry made at `revoked_at` may be forgotten."""
    return revoked_at + max_lifetime + leeway


def revocation_for(
    token: UnverifiedToken, *, revoked_at: int, max_lifetime: int, reason: str = "", by: str = ""
) -> Revocation:
    """The revocation that takes `token` and everything derived from it.

    That is its branch when it has delegations (the branch it belongs to and
    all below, never its parent or siblings, and within its own token's tree
    only), else its token id. The entry is kept as long as any token it
    touches can live: for a branch, the earliest expiry among the caveats up
    to and including its last delegate caveat (every token of the branch
    carries them); for a token id, the verifiers' lifetime cap, since `token`
    may be a shorter-lived copy of the original.
    """
    ident = token.identifier
    cap = ident.iat + max_lifetime
    last = max((i for i, c in enumerate(token.caveats) if isinstance(c, cv.Delegate)), default=None)
    if last is None:
        return Revocation(RevocationKind.TOKEN, (ident.tid.hex(),), revoked_at, cap, reason, by)
    upto = token.caveats[: last + 1]
    expiries = [c.at for c in upto if isinstance(c, cv.Expires)]
    path = [c.delegation_id.hex() for c in upto if isinstance(c, cv.Delegate)]
    return Revocation(
        RevocationKind.BRANCH,
        (ident.tid.hex(), *path),
        revoked_at,
        min([cap, *expiries]),
        reason,
        by,
    )
