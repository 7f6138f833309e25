"""Caveat types: wire codes, decoding that never fails open, resource globs and name rules."""

from __future__ import annotations

import functools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcaps import caveats as cv
from agentcaps import wire
from agentcaps.errors import InvalidArgument, MalformedToken

DELEGATION_ID = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")

ONE_OF_EACH = [
    cv.Expires(1_800_000_600),
    cv.NotBefore(1_800_000_000),
    cv.Principal("acme", "alice"),
    cv.Agent("planner"),
    cv.Resources(("crm/**", "mail/*/inbox")),
    cv.Actions(("read", "write")),
    cv.Purposes(("sync",)),
    cv.Delegate("fetcher", DELEGATION_ID),
    cv.Audience(("crm-gateway", "mail-gateway")),
    cv.MaxDelegations(2),
]


def ac1(code: object, value: object) -> bytes:
    """An `ac1:` caveat id for any msgpack-able code and value."""
    payload = msgpack.packb([code, value], use_bin_type=True)
    return b"ac1:" + wire.b64encode(payload).encode("ascii")


def test_registry_holds_exactly_the_ten_caveat_types_of_the_design_table():
    """Codes 1-10 map to the types DESIGN.md names, and nothing else is registered."""
    names = {code: cls.name for code, cls in cv.REGISTRY.items()}
    assert names == {
        1: "expires",
        2: "not_before",
        3: "principal",
        4: "agent",
        5: "resources",
        6: "actions",
        7: "purposes",
        8: "delegate",
        9: "audience",
        10: "max_delegations",
    }


@pytest.mark.parametrize("caveat", ONE_OF_EACH, ids=lambda c: c.name)
def test_each_caveat_type_round_trips_through_the_wire(caveat):
    """encode then decode gives an equal caveat, registered under its own code."""
    cid = caveat.encode()
    assert cid.startswith(b"ac1:")
    assert wire.decode_caveat(cid) == (caveat.code, caveat.wire_value())
    assert cv.decode(cid) == caveat
    assert cv.REGISTRY[caveat.code] is type(caveat)


@pytest.mark.parametrize(
    ("caveat", "value"),
    [
        (cv.Expires(5), 5),
        (cv.NotBefore(6), 6),
        (cv.Principal("acme", "alice"), ["acme", "alice"]),
        (cv.Agent("planner"), "planner"),
        (cv.Resources(("a/*",)), ["a/*"]),
        (cv.Actions(("read",)), ["read"]),
        (cv.Purposes(("sync",)), ["sync"]),
        (cv.Delegate("b", DELEGATION_ID), ["b", DELEGATION_ID]),
        (cv.Audience(("gw",)), ["gw"]),
        (cv.MaxDelegations(0), 0),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_each_caveat_type_writes_the_value_shape_of_the_design_table(caveat, value):
    """The msgpack value of each type is the one DESIGN.md's table gives."""
    assert caveat.encode() == ac1(caveat.code, value)


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (1, "1800000000"),
        (1, -1),
        (1, 2**63),
        (1, [1]),
        (2, b"\x01"),
        (2, -5),
        (3, "acme"),
        (3, ["acme"]),
        (3, ["acme", "alice", "bob"]),
        (3, ["acme", 7]),
        (3, ["", "alice"]),
        (3, ["acme", " alice"]),
        (4, ["planner"]),
        (4, ""),
        (4, "planner\n"),
        (4, "a\x00b"),
        (4, "x" * 257),
        (4, b"planner"),
        (5, "crm/**"),
        (5, []),
        (5, ["crm//x"]),
        (5, ["crm/a*"]),
        (5, ["crm/**", 5]),
        (5, ["crm/*"] * 65),
        (6, "read"),
        (6, []),
        (6, [b"read"]),
        (7, "sync"),
        (7, []),
        (7, [" sync"]),
        (8, "fetcher"),
        (8, ["fetcher"]),
        (8, ["fetcher", DELEGATION_ID[:15]]),
        (8, ["fetcher", DELEGATION_ID + b"\x00"]),
        (8, ["fetcher", DELEGATION_ID.hex()]),
        (8, [b"fetcher", DELEGATION_ID]),
        (8, ["", DELEGATION_ID]),
        (9, "gw"),
        (9, []),
        (9, [7]),
        (10, -1),
        (10, 65),
        (10, "3"),
        (10, [3]),
    ],
)
def test_wrong_shape_for_a_known_code_decodes_to_unknown_caveat(code, value):
    """A registered code carrying a value of the wrong shape never decodes to that type."""
    cid = ac1(code, value)
    caveat = cv.decode(cid)
    assert caveat == cv.UnknownCaveat(cid)
    assert caveat.encode() == cid


@pytest.mark.parametrize("code", [0, 11, 12, 63, 64, 1000, -1, -2, 2**32])
def test_unknown_code_decodes_to_unknown_caveat(code):
    """A code that is not registered (reserved 11-63 included) becomes an UnknownCaveat."""
    cid = ac1(code, "anything")
    assert cv.decode(cid) == cv.UnknownCaveat(cid)


@pytest.mark.parametrize(
    "cid",
    [b"time < 2030", b"account = 3735928559", b"ac2:kgaRpHJlYWQ", b"AC1:kgaRpHJlYWQ", b"\x00\xff"],
)
def test_non_ac1_caveat_text_decodes_to_unknown_caveat(cid):
    """Text caveats from other systems are not understood, so they decode to UnknownCaveat."""
    caveat = cv.decode(cid)
    assert isinstance(caveat, cv.UnknownCaveat)
    assert caveat.cid == cid


def test_ac1_caveat_with_malformed_payload_raises_malformed_token():
    """A broken `ac1:` payload is a malformed token, not merely an unknown caveat."""
    with pytest.raises(MalformedToken):
        cv.decode(b"ac1:!!!")
    with pytest.raises(MalformedToken):
        cv.decode(ac1(6, [1.5]))


def test_decode_cached_returns_the_same_caveat_as_decode():
    """Memoised decoding is the same function of the bytes."""
    for caveat in ONE_OF_EACH:
        cid = caveat.encode()
        assert cv.decode_cached(cid) == cv.decode(cid) == caveat
        assert cv.decode_cached(cid) == caveat
    assert cv.decode_cached(b"time < 2030") == cv.UnknownCaveat(b"time < 2030")


def test_caveat_types_are_immutable():
    """Caveats are frozen values."""
    with pytest.raises(AttributeError):
        cv.Expires(5).at = 6  # type: ignore[misc]


# --- resource globs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "resource", "matches"),
    [
        ("crm/contacts/42", "crm/contacts/42", True),
        ("crm/contacts/42", "crm/contacts/420", False),
        ("crm/contacts/42", "crm/contacts/42/notes", False),
        ("crm/contacts/42", "crm/contacts", False),
        ("crm/*", "crm/contacts", True),
        ("crm/*", "crm/contacts/42", False),
        ("crm/*", "crm", False),
        ("crm/*/42", "crm/contacts/42", True),
        ("crm/*/42", "crm/a/b/42", False),
        ("*", "crm", True),
        ("*", "crm/contacts", False),
        ("crm/**", "crm", True),
        ("crm/**", "crm/contacts", True),
        ("crm/**", "crm/contacts/42/notes", True),
        ("crm/**", "crmx", False),
        ("crm/**", "crmx/contacts", False),
        ("crm/**", "mail/crm", False),
        ("**", "crm", True),
        ("**", "a/b/c/d", True),
        ("crm/**/notes", "crm/notes", True),
        ("crm/**/notes", "crm/contacts/42/notes", True),
        ("crm/**/notes", "crm/contacts/42/notes/1", False),
        ("**/notes", "notes", True),
        ("**/notes", "a/notes", True),
        ("**/notes", "a/notesx", False),
        ("*/**", "crm", True),
        ("*/*/**", "crm", False),
        ("crm", "CRM", False),
        ("a.b", "axb", False),
        ("a+b", "aab", False),
        ("a(b)?", "a", False),
        ("a(b)?", "a(b)?", True),
        ("[ab]", "a", False),
        ("a|b", "a", False),
        ("a\\d", "a1", False),
    ],
)
def test_resource_glob_semantics(glob, resource, matches):
    """'/' separates segments, '*' is one segment, '**' any number (zero too), the rest literal."""
    assert cv.Resources((glob,)).matches(resource) is matches


def _reference_match(glob: list[str], resource: list[str]) -> bool:
    """Glob semantics by the book: '*' one segment, '**' any number, the rest literal."""

    @functools.cache
    def match(g: int, r: int) -> bool:
        if g == len(glob):
            return r == len(resource)
        if glob[g] == "**":
            return match(g + 1, r) or (r < len(resource) and match(g, r + 1))
        if r == len(resource):
            return False
        return (glob[g] == "*" or glob[g] == resource[r]) and match(g + 1, r + 1)

    return match(0, 0)


@settings(max_examples=2000, deadline=None)
@given(
    glob=st.lists(st.sampled_from(["a", "b", "*", "**"]), min_size=1, max_size=7),
    resource=st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=8),
)
def test_resource_globs_match_as_the_book_says(glob, resource):
    """Patterns with one `**` (a regex) and with several (runs) both follow the semantics."""
    expected = _reference_match(glob, resource)
    assert cv.Resources(("/".join(glob),)).matches("/".join(resource)) is expected


def test_many_stars_cannot_make_matching_backtrack_without_end():
    """A token holder's `**/**/…` or `**/a/**/a/…` pattern is decided, not explored path by path.

    A backtracking regex takes years on these (exponential in the stars);
    this test finishing at all is what it checks.
    """
    resource = "/".join(["a"] * 500)
    for glob in ("crm/" + "**/" * 200 + "x", "**/a/" * 100 + "b", "**/" + "a/**/" * 60 + "b"):
        assert not cv.Resources((glob,)).matches(resource)
    assert cv.Resources(("**/a/" * 100 + "**",)).matches(resource)


def test_resources_caveat_matches_when_any_one_glob_matches():
    """Within one resources caveat the globs are alternatives."""
    caveat = cv.Resources(("crm/contacts/*", "mail/**"))
    assert caveat.matches("crm/contacts/1")
    assert caveat.matches("mail/inbox/7")
    assert not caveat.matches("crm/deals/1")


@pytest.mark.parametrize(
    "glob",
    [
        "crm",
        "crm/*",
        "crm/**",
        "**",
        "*",
        "*/x/**/y",
        "crm/contacts/42",
        "a b/c",
        "ü/ñ",
        "x" * 1024,
    ],
)
def test_valid_resource_globs_are_accepted(glob):
    """Literal segments, whole-segment '*' and '**' make a valid pattern."""
    assert cv.check_resource_glob(glob) == glob


@pytest.mark.parametrize(
    "glob",
    [
        "",
        "/",
        "/crm",
        "crm/",
        "crm//x",
        ".",
        "..",
        "crm/./x",
        "crm/../x",
        "crm/..",
        "./crm",
        "crm/a*",
        "crm/*a",
        "crm/a*b",
        "crm/***",
        "crm/**x",
        "crm\n",
        "crm/\x00",
        "x" * 1025,
        " crm/*",
        "crm/* ",
        None,
        5,
        b"crm/*",
        ["crm/*"],
    ],
)
def test_invalid_resource_globs_are_rejected(glob):
    """Empty, '.' and '..' segments, '*' inside a literal and non-strings are refused."""
    with pytest.raises(InvalidArgument):
        cv.check_resource_glob(glob)


@pytest.mark.parametrize(
    ("resource", "canonical"),
    [
        ("crm/contacts/42", True),
        ("crm", True),
        ("crm/*", True),  # a literal '*' in a request is just a character
        ("", False),
        ("/crm", False),
        ("crm/", False),
        ("crm//42", False),
        ("crm/./42", False),
        ("crm/../hr", False),
        ("crm/\n", False),
        ("x" * 1025, False),
    ],
)
def test_is_canonical_resource(resource, canonical):
    """Only resources without empty, '.' or '..' segments (and printable) can be matched."""
    assert cv.is_canonical_resource(resource) is canonical


# --- names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["planner", "a", "user@example.com", "a b", "Ünïcødé", "x" * 256])
def test_valid_names_are_accepted(name):
    """Names are 1-256 printable characters without surrounding space."""
    assert cv.check_name(name, "agent") == name


@pytest.mark.parametrize(
    "name",
    ["", " a", "a ", "\ta", "a\n", "a\x00b", "a\x1fb", "a\x7fb", "x" * 257, None, 7, b"a", ["a"]],
)
def test_invalid_names_are_rejected(name):
    """Empty, padded, control-character, over-long and non-string names are refused."""
    with pytest.raises(InvalidArgument):
        cv.check_name(name, "agent")


def test_name_lists_must_be_non_empty_lists_of_names():
    """check_names takes a list or tuple of 1-64 valid names, never a bare string."""
    assert cv.check_names(["read", "write"], "actions") == ("read", "write")
    assert cv.check_names(("read",), "actions") == ("read",)
    assert len(cv.check_names(["a"] * 64, "actions")) == 64
    for bad in ("read", [], ["a"] * 65, ["read", ""], None, {"read"}, b"read"):
        with pytest.raises(InvalidArgument):
            cv.check_names(bad, "actions")


def test_a_pattern_holds_at_most_16_wildcards():
    """Matching retries at most that many ways per place: more is refused, minted or decoded."""
    cv.check_resource_glob("/".join(["*"] * 15 + ["**"]))
    seventeen = "/".join(["*"] * 16 + ["**"])
    with pytest.raises(InvalidArgument, match="at most 16 wildcards"):
        cv.check_resource_glob(seventeen)
    assert isinstance(cv.decode(_resources_cid(seventeen)), cv.UnknownCaveat)


def _resources_cid(glob: str) -> bytes:
    return wire.encode_caveat(cv.Resources.code, [glob])


def test_patterns_of_at_most_one_double_star_and_literal_runs_compile_nothing(monkeypatch):
    """What any holder can append is matched by comparing segments, or found with str.find."""
    import re as regex

    monkeypatch.setattr(regex, "compile", None)
    cases = [
        ("crm/*/notes/**/x", "crm/a/notes/b/c/x", True),
        ("**/*/z", "a/b/z", True),
        ("*/*", "a", False),
        ("**/a/**/b/**", "x/a/y/b", True),
        ("**/a/b/**/c", "a/x/b/c", False),
        ("a/**/b/c/**/d", "a/b/c/d", True),
    ]
    for glob, resource, expected in cases:
        assert cv.Resources((glob,)).matches(resource) is expected, (glob, resource)
