"""Caveat types and their wire codes; what they mean together is in claims.py.

Each caveat is a small immutable value registered under its number (DESIGN.md's
caveat table). Decoding never fails open: an unknown number, a value of the
wrong shape, or a text caveat that is not `ac1:` becomes an `UnknownCaveat`,
which denies every request; a third-party caveat denies until discharges are
supported. Numbers are never reused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeGuard

from agentcaps import wire
from agentcaps.errors import InvalidArgument

MAX_NAME_CHARS = 256
MAX_LIST_ITEMS = 64
MAX_RESOURCE_CHARS = 1024
DELEGATION_ID_BYTES = 16
# Resource patterns in all of a token's resources caveats: a bound on the work
# any holder can make a verifier do by appending patterns (one caveat already
# holds at most MAX_LIST_ITEMS). Each is matched in time linear in its length
# and the resource's; narrowing adds patterns, so there is room for chains.
MAX_RESOURCE_PATTERNS = 256
# Wildcards in one pattern: matching retries at most this many ways per place.
MAX_PATTERN_WILDCARDS = 16
# Single `*` segments in all of a token's patterns with two or more `**`: a run
# with one, between two `**`, is searched with a regex compiled when first
# needed. (Patterns with at most one `**` compile nothing.)
MAX_RESOURCE_STARS = 64


def single_stars(globs: Sequence[str]) -> int:
    """How many single `*` segments the patterns with two or more `**` hold (a `**` is not one)."""
    count = 0
    for glob in globs:
        stars = glob.count("**")
        if stars > 1:
            count += glob.count("*") - 2 * stars
    return count


# Names (customers, users, agents, actions, purposes, audiences) are printable
# text in Python's sense (str.isprintable: no control, format or separator
# characters except the ASCII space), with no surrounding space.


class WrongShape(Exception):
    """A caveat value that does not fit its type; decoding turns it into UnknownCaveat."""


def is_name(value: object) -> TypeGuard[str]:
    """True for a valid name: a str of 1-256 printable characters, no surrounding space."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_NAME_CHARS
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    )


def check_name(value: object, what: str) -> str:
    """Return `value` if it is a valid name, else raise InvalidArgument."""
    if not is_name(value):
        raise InvalidArgument(f"{what} must be 1-{MAX_NAME_CHARS} printable characters")
    return value


def check_names(values: object, what: str) -> tuple[str, ...]:
    """Return a non-empty list of names as a tuple, else raise InvalidArgument."""
    return tuple(check_name(v, what) for v in _checked_list(values, what))


def check_resource_globs(values: object, what: str = "resources") -> tuple[str, ...]:
    """Return a non-empty list of resource patterns as a tuple, else raise InvalidArgument."""
    return tuple(check_resource_glob(v) for v in _checked_list(values, what))


def _checked_list(values: object, what: str) -> list[object] | tuple[object, ...]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InvalidArgument(f"{what} must be a list")
    if not 0 < len(values) <= MAX_LIST_ITEMS:
        raise InvalidArgument(f"{what} must have 1-{MAX_LIST_ITEMS} entries")
    return values


def check_resource_glob(glob: object) -> str:
    """Return `glob` if it is a valid resource pattern, else raise InvalidArgument.

    A pattern is `/`-separated segments: a literal, `*` (exactly one segment)
    or `**` (any number of segments, none included). Empty, `.` and `..`
    segments, and `*` inside a literal, are refused so that a pattern means one
    thing only.
    """
    if (
        type(glob) is not str
        or not 0 < len(glob) <= MAX_RESOURCE_CHARS
        or not glob.isprintable()
        or glob[0] == " "
        or glob[-1] == " "
    ):
        raise InvalidArgument(
            f"resource pattern must be 1-{MAX_RESOURCE_CHARS} printable characters, "
            "no surrounding space"
        )
    wildcards = 0
    for segment in glob.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgument("a resource pattern has an empty, '.' or '..' segment")
        if "*" in segment:
            if segment not in ("*", "**"):
                raise InvalidArgument(
                    "a resource pattern has '*' inside a segment: '*' is a whole segment"
                )
            wildcards += 1
    if wildcards > MAX_PATTERN_WILDCARDS:
        raise InvalidArgument(
            f"a resource pattern has at most {MAX_PATTERN_WILDCARDS} wildcards ('*' or '**')"
        )
    return glob


_BAD_SEGMENTS = frozenset(("", ".", ".."))


def is_canonical_resource(resource: str) -> bool:
    """True for a resource a pattern can match: printable, no empty, '.' or '..' segments."""
    if not 0 < len(resource) <= MAX_RESOURCE_CHARS or not resource.isprintable():
        return False
    return _BAD_SEGMENTS.isdisjoint(resource.split("/"))


def _segments(glob: str) -> list[str]:
    """The pattern's segments, with each run of `**` as one (`**/**` means `**`)."""
    out: list[str] = []
    for segment in glob.split("/"):
        if not (segment == "**" and out and out[-1] == "**"):
            out.append(segment)
    return out


Matcher = Callable[[str], bool]


def glob_matcher(glob: str) -> Matcher:
    """A function of a canonical resource that says whether `glob` matches it.

    The shapes nearly every pattern has (`crm/contacts/42`, `crm/**`) are
    plain string tests. A pattern with at most one `**` is compared segment
    by segment in place: what comes before the `**` at the start, what comes
    after it at the end; no search, no regex. Only a pattern with two or more
    `**` searches (`_ManyStarGlob`); the few regexes that takes are compiled
    when first needed and kept in a bounded cache shared by every token, so
    that the patterns a holder appends cost this process no memory beyond it.
    """
    segments = _segments(glob)
    stars = segments.count("**")
    if stars == 0 and "*" not in segments:
        return lambda resource: resource == glob  # these segments exactly
    if stars == 1 and segments[-1] == "**" and "*" not in segments:
        prefix = "/".join(segments[:-1])
        if not prefix:
            return lambda resource: True  # `**`: every resource
        below = prefix + "/"
        return lambda resource: resource == prefix or resource.startswith(below)
    if stars == 0:
        return lambda resource: _fits_exactly(segments, resource.split("/"))
    if stars == 1:
        split = segments.index("**")
        head, tail = segments[:split], segments[split + 1 :]
        return lambda resource: _fits_ends(head, tail, resource.split("/"))
    return _ManyStarGlob(segments).matches


def _fits(run: Sequence[str], parts: list[str], start: int) -> bool:
    """Whether `run` (literals and `*`) matches the segments from `start` on (they must exist)."""
    for offset, segment in enumerate(run):
        if segment != "*" and segment != parts[start + offset]:
            return False
    return True


def _fits_exactly(run: Sequence[str], parts: list[str]) -> bool:
    return len(parts) == len(run) and _fits(run, parts, 0)


def _fits_ends(head: Sequence[str], tail: Sequence[str], parts: list[str]) -> bool:
    """`head`, then any number of segments (`**`), then `tail`."""
    end = len(parts) - len(tail)
    return end >= len(head) and _fits(head, parts, 0) and _fits(tail, parts, end)


class _ManyStarGlob:
    """A pattern with two or more `**`, matched without a backtracking regex.

    A regex would try every way of sharing segments among the `**`s: time
    exponential in their number, which any token holder could set off. The
    pattern is cut at its `**`s into runs of fixed length instead: the first
    run must match at the start and the last at the end (compared in place),
    and each run between at its leftmost place after the one before
    (leftmost never hurts the runs that follow): a run of literals is found
    with `str.find`, one with `*` by a regex search (`_run_search`).
    """

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, segments: Sequence[str]) -> None:
        runs: list[list[str]] = [[]]
        for segment in segments:
            if segment == "**":
                runs.append([])
            else:
                runs[-1].append(segment)
        self._head, self._tail = runs[0], runs[-1]
        self._middle = [_run_finder(run) for run in runs[1:-1]]

    def matches(self, resource: str) -> bool:
        parts = resource.split("/")
        head, tail = self._head, self._tail
        end = len(parts) - len(tail)
        if end < len(head) or not _fits(head, parts, 0) or not _fits(tail, parts, end):
            return False
        # In "/" + resource + "/", the slash before segment i is at i plus
        # the length of the segments before it.
        text = "/" + resource + "/"
        at = len(head) + sum(map(len, parts[: len(head)]))
        limit = end + sum(map(len, parts[:end]))
        for find in self._middle:
            at = find(text, at, limit)
            if at < 0:
                return False
        return True


# Finds a run in "/" + resource + "/" starting at or after the slash at `at`
# and ending by the slash at `limit`; returns the slash after it, or -1.
_Finder = Callable[[str, int, int], int]


def _run_finder(run: Sequence[str]) -> _Finder:
    if "*" not in run:
        needle = "/" + "/".join(run) + "/"

        def find(text: str, at: int, limit: int) -> int:
            found = text.find(needle, at, limit + 1)
            return found if found < 0 else found + len(needle) - 1

        return find
    source = "".join("/[^/]+" if s == "*" else "/" + re.escape(s) for s in run) + "(?=/)"

    def search(text: str, at: int, limit: int) -> int:
        found = _run_search(source)(text, at, limit + 1)
        return -1 if found is None else found.end()

    return search


@functools.lru_cache(maxsize=1024)
def _run_search(source: str) -> Callable[[str, int, int], re.Match[str] | None]:
    """The compiled search of a run with `*`, shared by every token (bounded)."""
    return re.compile(source).search


def _str_list(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        raise WrongShape
    try:
        return check_names(value, "value")
    except InvalidArgument:
        raise WrongShape from None


def _str(value: object) -> str:
    if not is_name(value):
        raise WrongShape
    return value


def _unix_time(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise WrongShape
    return value


class Caveat:
    """Base of every caveat: a wire code and a value."""

    __slots__ = ()
    code: ClassVar[int]
    name: ClassVar[str]

    def wire_value(self) -> object:
        """The msgpack value this caveat carries."""
        raise NotImplementedError

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        """Build from a decoded msgpack value. Raises WrongShape."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The caveat id as it goes into a macaroon."""
        return wire.encode_caveat(self.code, self.wire_value())

    def describe(self) -> object:
        """A JSON-ready value for people reading a token."""
        return self.wire_value()


REGISTRY: dict[int, type[Caveat]] = {}


def register(cls: type[Caveat]) -> type[Caveat]:
    """Register a caveat type under its code; a code is registered once, ever."""
    if cls.code in REGISTRY:
        raise RuntimeError(f"caveat code {cls.code} is registered twice")
    REGISTRY[cls.code] = cls
    return cls


@dataclass(frozen=True, slots=True)
class _Instant(Caveat):
    """A caveat whose value is one moment, in unix seconds."""

    at: int

    def wire_value(self) -> object:
        return self.at

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        return cls(_unix_time(value))


@register
@dataclass(frozen=True, slots=True)
class Expires(_Instant):
    """The token is valid only before `at` (unix seconds)."""

    code: ClassVar[int] = 1
    name: ClassVar[str] = "expires"


@register
@dataclass(frozen=True, slots=True)
class NotBefore(_Instant):
    """The token is valid only from `at` (unix seconds) on."""

    code: ClassVar[int] = 2
    name: ClassVar[str] = "not_before"


@register
@dataclass(frozen=True, slots=True)
class Principal(Caveat):
    """The customer and user the token acts for; a second, different one conflicts."""

    code: ClassVar[int] = 3
    name: ClassVar[str] = "principal"
    customer: str
    user: str

    def wire_value(self) -> object:
        return [self.customer, self.user]

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        if type(value) is not list or len(value) != 2:
            raise WrongShape
        return cls(_str(value[0]), _str(value[1]))

    def describe(self) -> object:
        return {"customer": self.customer, "user": self.user}


@register
@dataclass(frozen=True, slots=True)
class Agent(Caveat):
    """The agent the token was minted for, its first holder; there is only one."""

    code: ClassVar[int] = 4
    name: ClassVar[str] = "agent"
    agent: str

    def wire_value(self) -> object:
        return self.agent

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        return cls(_str(value))


@register
@dataclass(frozen=True, slots=True)
class Resources(Caveat):
    """The request's resource must match one of these patterns."""

    code: ClassVar[int] = 5
    name: ClassVar[str] = "resources"
    globs: tuple[str, ...]
    # Built on the first match, not on decoding: a token is decoded before
    # its expiry, audience and actor are judged.
    _matchers: tuple[Matcher, ...] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def matches(self, resource: str) -> bool:
        """True when `resource` (canonical) matches one of the patterns."""
        matchers = self._matchers
        if matchers is None:
            matchers = tuple(glob_matcher(glob) for glob in self.globs)
            object.__setattr__(self, "_matchers", matchers)  # the same value in any thread
        for matches in matchers:
            if matches(resource):
                return True
        return False

    def wire_value(self) -> object:
        return list(self.globs)

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        if type(value) is not list:
            raise WrongShape
        try:
            return cls(check_resource_globs(value))
        except InvalidArgument:
            raise WrongShape from None


@register
@dataclass(frozen=True, slots=True)
class Actions(Caveat):
    """The request's action must be one of these."""

    code: ClassVar[int] = 6
    name: ClassVar[str] = "actions"
    actions: tuple[str, ...]

    def wire_value(self) -> object:
        return list(self.actions)

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        return cls(_str_list(value))


@register
@dataclass(frozen=True, slots=True)
class Purposes(Caveat):
    """A declared purpose must be one of these; with none declared, the purposes
    common to all such caveats must not be empty."""

    code: ClassVar[int] = 7
    name: ClassVar[str] = "purposes"
    purposes: tuple[str, ...]

    def wire_value(self) -> object:
        return list(self.purposes)

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        return cls(_str_list(value))


@register
@dataclass(frozen=True, slots=True)
class Delegate(Caveat):
    """The holder hands the token to `to_agent`; `delegation_id` names this branch."""

    code: ClassVar[int] = 8
    name: ClassVar[str] = "delegate"
    to_agent: str
    delegation_id: bytes

    def wire_value(self) -> object:
        return [self.to_agent, self.delegation_id]

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        if type(value) is not list or len(value) != 2:
            raise WrongShape
        agent, delegation_id = value
        if type(delegation_id) is not bytes or len(delegation_id) != DELEGATION_ID_BYTES:
            raise WrongShape
        return cls(_str(agent), delegation_id)

    def describe(self) -> object:
        return {"to_agent": self.to_agent, "delegation_id": self.delegation_id.hex()}


@register
@dataclass(frozen=True, slots=True)
class Audience(Caveat):
    """The verifier's own audience name must be one of these."""

    code: ClassVar[int] = 9
    name: ClassVar[str] = "audience"
    audiences: tuple[str, ...]

    def wire_value(self) -> object:
        return list(self.audiences)

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        return cls(_str_list(value))


@register
@dataclass(frozen=True, slots=True)
class MaxDelegations(Caveat):
    """At most `limit` delegate caveats may follow this one."""

    code: ClassVar[int] = 10
    name: ClassVar[str] = "max_delegations"
    limit: int

    def wire_value(self) -> object:
        return self.limit

    @classmethod
    def from_wire(cls, value: object) -> Caveat:
        if type(value) is not int or not 0 <= value <= MAX_LIST_ITEMS:
            raise WrongShape
        return cls(value)


@dataclass(frozen=True, slots=True)
class UnknownCaveat(Caveat):
    """A caveat this verifier does not understand; a token carrying one never verifies."""

    code: ClassVar[int] = -1  # not a wire code: unknown caveats keep their bytes
    name: ClassVar[str] = "unknown"
    cid: bytes

    def wire_value(self) -> object:
        return self.cid

    def encode(self) -> bytes:
        return self.cid

    def describe(self) -> object:
        try:
            return self.cid.decode("utf-8")
        except UnicodeDecodeError:
            return self.cid.hex()


@dataclass(frozen=True, slots=True)
class ThirdPartyCaveat(Caveat):
    """A caveat that needs a discharge macaroon; until discharges are supported it never verifies."""

    code: ClassVar[int] = -2  # not a wire code: third-party caveats are the macaroon's own
    name: ClassVar[str] = "third_party"
    cid: bytes
    vid: bytes | None
    location: bytes | None

    def wire_value(self) -> object:
        return self.cid

    def encode(self) -> bytes:
        return self.cid

    def describe(self) -> object:
        return {
            "cid": self.cid.hex(),
            "location": self.location.decode("utf-8", "replace") if self.location else None,
        }


def decode(cid: bytes) -> Caveat:
    """The typed caveat for a caveat id; unknown text, codes and shapes give UnknownCaveat.

    Raises:
        MalformedToken: an `ac1:` caveat whose payload is not valid canonical msgpack.
    """
    payload = wire.decode_caveat(cid)
    if payload is None:
        return UnknownCaveat(cid)
    code, value = payload
    cls = REGISTRY.get(code)
    if cls is None:
        return UnknownCaveat(cid)
    try:
        return cls.from_wire(value)
    except WrongShape:
        return UnknownCaveat(cid)


DECODED: dict[bytes, Caveat] = {}
DECODED_MAX = 8192
# Caveats that recur across tokens are short; a long one is decoded every time,
# so that the cache's memory stays bounded by its entry count.
DECODED_MAX_BYTES = 256


def decode_cached(cid: bytes) -> Caveat:
    """`decode`, memoised by the exact caveat bytes.

    Decoding is a pure function of the bytes, so a hit can never change a
    decision; the cache only spares the msgpack work for caveats that recur
    across tokens (the same scope, principal and agent). It is bounded and
    simply emptied when full.
    """
    caveat = DECODED.get(cid)
    if caveat is None:
        caveat = decode(cid)
        if len(cid) <= DECODED_MAX_BYTES:
            if len(DECODED) >= DECODED_MAX:
                DECODED.clear()
            DECODED[cid] = caveat
    return caveat
