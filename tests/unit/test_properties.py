"""Hypothesis laws: attenuation never widens, round trips are exact, no input breaks verify."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import agentcaps
from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.decision import Decision
from agentcaps.errors import InvalidToken
from agentcaps.keys import KeyState, RootKey

# Fixed and database-free, so CI sees the same examples on every run.
LAWS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings(LAWS, max_examples=250)

NOW = 1_800_000_000
KEY = RootKey("kproperties", "acme", KeyState.ACTIVE, 0, bytes(range(32)))
AUDIENCE = "gw"

# Small alphabets, so that generated requests often hit what generated tokens allow.
SEGMENTS = ["a", "b"]
ACTIONS = ["read", "write"]
PURPOSES = ["sync", "audit"]
AGENTS = ["planner", "fetcher", "tool"]
AUDIENCES = ["gw", "other"]


class StaticKeys:
    """A KeyStore with one root key, used for minting and verifying."""

    def get(self, kid: str) -> RootKey | None:
        return KEY if kid == KEY.kid else None

    def signing_key(self, customer: str | None) -> RootKey:
        return KEY


class NoRevocations:
    """A RevocationStore with nothing revoked."""

    def check(self, facts: object) -> None:
        return None


def clock_at(now: int):
    return lambda: now


def verifier_at(now: int) -> agentcaps.Verifier:
    return agentcaps.Verifier(StaticKeys(), NoRevocations(), clock=clock_at(now), audience=AUDIENCE)


MINTER = agentcaps.Minter(StaticKeys(), clock=clock_at(NOW))
BASE_TOKEN = MINTER.mint(
    customer="acme",
    user="alice",
    agent="planner",
    resources=["a/**"],
    actions=["read", "write"],
    purposes=["sync"],
    ttl=600,
)
BASE_RAW = wire.decode_token(BASE_TOKEN)


# --- strategies ---------------------------------------------------------------------


def subsets(names: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)


globs = st.lists(st.sampled_from([*SEGMENTS, "*", "**", "**"]), min_size=1, max_size=2).map(
    "/".join
)
resources = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)

mint_args = st.fixed_dictionaries(
    {
        "resources": st.lists(globs, min_size=1, max_size=3),
        "actions": subsets(ACTIONS),
        "purposes": subsets(PURPOSES),
        "ttl": st.integers(200, 600),
    },
    optional={
        "audience": subsets(AUDIENCES),
        "max_delegations": st.integers(0, 2),
        "not_before": st.integers(NOW - 10, NOW + 30),
    },
)

attenuations = (
    st.fixed_dictionaries(
        {},
        optional={
            "resources": st.lists(globs, min_size=1, max_size=3),
            "actions": subsets(ACTIONS),
            "purposes": subsets(PURPOSES),
            "audience": subsets(AUDIENCES),
            "delegate_to": st.sampled_from(AGENTS),
            "max_delegations": st.integers(0, 2),
        },
    )
    .flatmap(
        lambda options: st.one_of(
            st.just(options),
            st.integers(30, 700).map(lambda ttl: {**options, "ttl": ttl}),
            st.integers(NOW, NOW + 700).map(lambda at: {**options, "expires_at": at}),
        )
    )
    .filter(bool)
)

requests = st.fixed_dictionaries(
    {
        "resource": resources,
        "action": st.sampled_from(ACTIONS),
        "purpose": st.none() | st.sampled_from(PURPOSES),
    }
)

# Valid names are printable in Python's sense, with no surrounding space.
names = st.text(min_size=1, max_size=20).filter(
    lambda s: s.isprintable() and s[0] != " " and s[-1] != " "
)
glob_segments = st.one_of(
    st.sampled_from(["*", "**"]),
    names.filter(lambda s: "/" not in s and "*" not in s and s not in (".", "..")),
)
any_globs = st.lists(glob_segments, min_size=1, max_size=4).map("/".join)
name_lists = st.lists(names, min_size=1, max_size=5).map(tuple)
unix_times = st.integers(0, 2**63 - 1)
delegation_ids = st.binary(min_size=16, max_size=16)

typed_caveats = st.one_of(
    unix_times.map(cv.Expires),
    unix_times.map(cv.NotBefore),
    st.builds(cv.Principal, names, names),
    names.map(cv.Agent),
    st.lists(any_globs, min_size=1, max_size=5).map(lambda g: cv.Resources(tuple(g))),
    name_lists.map(cv.Actions),
    name_lists.map(cv.Purposes),
    st.builds(cv.Delegate, names, delegation_ids),
    name_lists.map(cv.Audience),
    st.integers(0, 64).map(cv.MaxDelegations),
)

msgpack_ints = st.integers(-(2**63), 2**64 - 1)
scalars = st.one_of(msgpack_ints, st.text(max_size=30), st.binary(max_size=30))
caveat_values = st.one_of(scalars, st.lists(scalars, max_size=5))


@st.composite
def raw_macaroons(draw) -> wire.RawMacaroon:
    cids = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=10))
    extras = []
    for position in range(len(cids)):
        if draw(st.integers(0, 4)) == 0:
            vid = draw(st.none() | st.binary(min_size=1, max_size=100))
            location = draw(
                st.binary(min_size=1, max_size=100)
                if vid is None
                else st.none() | st.binary(min_size=1, max_size=100)
            )
            extras.append(wire.ThirdParty(position, vid, location))
    return wire.RawMacaroon(
        draw(st.binary(min_size=1, max_size=256)),
        tuple(cids),
        draw(st.binary(min_size=32, max_size=32)),
        draw(st.none() | st.binary(min_size=1, max_size=256)),
        tuple(extras),
    )


# --- attenuation never widens -----------------------------------------------------------


def allowed(token: str, request: dict, now: int) -> bool:
    return verifier_at(now).verify(token, actor=None, **request).allowed


@settings(LAWS, max_examples=300)
@given(
    mint=mint_args,
    steps=st.lists(attenuations, min_size=1, max_size=3),
    request=requests,
    offset=st.integers(0, 150),
)
def test_attenuation_never_widens(mint, steps, request, offset):
    """For any token, attenuations and request: allowed after attenuating implies allowed before."""
    tokens = [MINTER.mint(customer="acme", user="alice", agent="planner", **mint)]
    for options in steps:
        tokens.append(agentcaps.attenuate(tokens[-1], clock=clock_at(NOW), **options))
    now = NOW + offset
    verdicts = [allowed(token, request, now) for token in tokens]
    for before, after in itertools.pairwise(verdicts):
        assert before or not after, (verdicts, steps, request)


@LAWS
@given(request=requests, offset=st.integers(0, 700), extra=typed_caveats)
def test_appending_any_typed_caveat_never_widens(request, offset, extra):
    """Whatever typed caveat a holder appends (even a second principal), nothing new is allowed."""
    raw = wire.decode_token(BASE_TOKEN)
    cid = extra.encode()
    token = wire.encode_token(
        raw._replace(cids=raw.cids + (cid,), signature=signature.extend(raw.signature, cid))
    )
    now = NOW + offset
    assert allowed(BASE_TOKEN, request, now) or not allowed(token, request, now)


# --- round trips ---------------------------------------------------------------------------


@LAWS
@given(raw=raw_macaroons())
def test_v2_binary_round_trips_exactly(raw):
    """decode_macaroon(encode_macaroon(m)) == m for every macaroon, third-party caveats included."""
    data = wire.encode_macaroon(raw)
    assert wire.decode_macaroon(data, wire.Limits(max_token_bytes=10**6)) == raw


@LAWS
@given(raw=raw_macaroons())
def test_token_string_round_trips_exactly(raw):
    """A token string decodes to its fields and re-encodes to the same string."""
    limits = wire.Limits(max_token_bytes=10**6)
    token = wire.encode_token(raw)
    assert wire.decode_token(token, limits) == raw
    assert wire.encode_token(wire.decode_token(token, limits)) == token


@LAWS
@given(
    kid=st.text(min_size=1, max_size=64),
    tid=st.binary(min_size=16, max_size=16),
    iat=st.integers(0, 2**64 - 1),
)
def test_identifier_round_trips_exactly(kid, tid, iat):
    """decode_identifier(encode_identifier(i)) == i for every kid, token id and time."""
    ident = wire.Identifier(kid, tid, iat)
    assert wire.decode_identifier(wire.encode_identifier(ident)) == ident


@LAWS
@given(caveat=typed_caveats)
def test_typed_caveat_round_trips_exactly(caveat):
    """Every valid caveat decodes back to itself from its wire bytes."""
    assert cv.decode(caveat.encode()) == caveat


@LAWS
@given(code=msgpack_ints, value=caveat_values)
def test_caveat_payload_round_trips_exactly(code, value):
    """decode_caveat(encode_caveat(code, value)) == (code, value) for every allowed value."""
    assert wire.decode_caveat(wire.encode_caveat(code, value)) == (code, value)


@LAWS
@given(data=st.binary(max_size=200))
def test_base64url_round_trips_exactly(data):
    """b64decode(b64encode(data)) == data."""
    assert wire.b64decode(wire.b64encode(data)) == data


@LAWS
@given(text=st.text(alphabet="AQgw-_+/= \nAaZz09é", max_size=12))
def test_base64url_has_one_spelling(text):
    """Any text b64decode accepts is exactly what b64encode writes for its bytes."""
    try:
        data = wire.b64decode(text)
    except InvalidToken:
        return
    assert wire.b64encode(data) == text


# --- nothing makes verify raise or allow --------------------------------------------------


def assert_denied_without_raising(token: object) -> Decision:
    decision = verifier_at(NOW).verify(token, resource="a/b", action="read")
    assert isinstance(decision, Decision)
    assert decision.allowed is False
    return decision


def same_macaroon(token: str) -> bool:
    """True when `token` carries the base token's identifier, caveats and signature."""
    try:
        raw = wire.decode_token(token)
    except InvalidToken:
        return False
    return raw._replace(location=None) == BASE_RAW


def test_base_token_is_allowed():
    """The token the mutation laws start from is itself allowed."""
    assert verifier_at(NOW).verify(BASE_TOKEN, resource="a/b", action="read").allowed


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_is_never_allowed(text):
    """No text, with or without the prefix, makes verify raise or allow."""
    assert_denied_without_raising(text)
    assert_denied_without_raising("agc_" + text)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_behind_the_prefix_are_never_allowed(data):
    """Arbitrary bytes, base64url-encoded behind `agc_`, never make verify raise or allow."""
    assert_denied_without_raising("agc_" + wire.b64encode(data))
    assert_denied_without_raising("agc_" + wire.b64encode(b"\x02" + data))


@FUZZ
@given(position=st.integers(0, len(wire.encode_macaroon(BASE_RAW)) * 8 - 1))
def test_bit_flips_of_a_valid_token_are_never_allowed(position):
    """Flipping any single bit of a valid token's bytes never yields an allowed token."""
    data = bytearray(wire.encode_macaroon(BASE_RAW))
    data[position // 8] ^= 1 << (position % 8)
    assert_denied_without_raising("agc_" + wire.b64encode(bytes(data)))


@FUZZ
@given(length=st.integers(0, len(wire.encode_macaroon(BASE_RAW)) - 1))
def test_truncations_of_a_valid_token_are_never_allowed(length):
    """Every proper prefix of a valid token, as bytes or as text, is denied."""
    data = wire.encode_macaroon(BASE_RAW)
    assert_denied_without_raising("agc_" + wire.b64encode(data[:length]))
    assert_denied_without_raising(BASE_TOKEN[: 4 + length])


@FUZZ
@given(
    position=st.integers(0, len(wire.encode_macaroon(BASE_RAW))),
    inserted=st.binary(min_size=1, max_size=8),
    deleted=st.integers(0, 4),
)
def test_insertions_and_deletions_in_a_valid_token_are_never_allowed(position, inserted, deleted):
    """Splicing bytes into a valid token never makes verify raise or allow another macaroon."""
    data = wire.encode_macaroon(BASE_RAW)
    mutated = "agc_" + wire.b64encode(data[:position] + inserted + data[position + deleted :])
    decision = verifier_at(NOW).verify(mutated, resource="a/b", action="read")
    assert isinstance(decision, Decision)
    assert not decision.allowed or same_macaroon(mutated)


@FUZZ
@given(
    position=st.integers(0, len(BASE_TOKEN) - 1),
    replacement=st.text(min_size=0, max_size=3),
    deleted=st.integers(0, 2),
)
def test_text_edits_of_a_valid_token_are_never_allowed(position, replacement, deleted):
    """Editing the token string never makes verify raise, nor allow unless nothing changed."""
    mutated = BASE_TOKEN[:position] + replacement + BASE_TOKEN[position + deleted :]
    assume(mutated != BASE_TOKEN)
    decision = verifier_at(NOW).verify(mutated, resource="a/b", action="read")
    assert isinstance(decision, Decision)
    assert not decision.allowed or same_macaroon(mutated)


ac1_payloads = st.one_of(
    st.binary(max_size=40),
    st.tuples(msgpack_ints, caveat_values).map(lambda cv_: wire.packb(list(cv_))),
).map(lambda payload: b"ac1:" + wire.b64encode(payload).encode("ascii"))


@FUZZ
@given(cids=st.lists(st.one_of(st.binary(min_size=1, max_size=40), ac1_payloads), max_size=6))
def test_correctly_signed_arbitrary_caveats_never_make_verify_raise(cids):
    """Whatever correctly signed caveat bytes a holder appends, verify returns a Decision."""
    cids = tuple(cids)
    token = wire.encode_token(
        BASE_RAW._replace(
            cids=BASE_RAW.cids + cids,
            signature=signature.chain(KEY.derived, BASE_RAW.identifier, BASE_RAW.cids + cids),
        )
    )
    decision = verifier_at(NOW).verify(token, resource="a/b", action="read")
    assert isinstance(decision, Decision)
    if decision.allowed:
        assert all(not isinstance(cv.decode(c), cv.UnknownCaveat) for c in cids)
