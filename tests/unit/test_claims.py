"""Claims: what a token's caveats say taken together, and the unverified inspect() view."""

from __future__ import annotations

import pytest

from agentcaps import caveats as cv
from agentcaps import signature, wire
from agentcaps.claims import decode_unverified, inspect, summarize
from agentcaps.decision import Reason

D1 = bytes.fromhex("11" * 16)
D2 = bytes.fromhex("22" * 16)
D3 = bytes.fromhex("33" * 16)

PRINCIPAL = cv.Principal("acme", "alice")
AGENT = cv.Agent("planner")
RESOURCES = cv.Resources(("crm/**",))
ACTIONS = cv.Actions(("read", "write"))
PURPOSES = cv.Purposes(("sync", "audit"))
EXPIRES = cv.Expires(1_800_000_600)
BASE = [PRINCIPAL, AGENT, RESOURCES, ACTIONS, PURPOSES, EXPIRES]


def token_of(caveats: list[cv.Caveat], root_key: bytes = bytes(32)) -> str:
    """A correctly signed token carrying `caveats`."""
    identifier = wire.encode_identifier(wire.Identifier("kclaims", bytes(range(16)), 1_800_000_000))
    cids = tuple(c.encode() for c in caveats)
    sig = signature.chain(signature.derive_key(root_key), identifier, cids)
    return wire.encode_token(wire.RawMacaroon(identifier, cids, sig))


def test_a_complete_token_has_no_problem():
    """Principal, agent, scope and expiry together make claims with no problem."""
    claims = summarize(BASE)
    assert claims.problem is None
    assert (claims.customer, claims.user) == ("acme", "alice")
    assert claims.chain == ("planner",)
    assert claims.delegation_ids == ()
    assert claims.expires_at == 1_800_000_600
    assert claims.not_before is None
    assert claims.resources == (RESOURCES,)
    assert claims.actions == {"read", "write"}
    assert claims.purposes == {"sync", "audit"}
    assert claims.audiences is None


def test_second_different_principal_is_a_principal_conflict():
    """A token naming two principals conflicts and never allows anything."""
    assert summarize([*BASE, cv.Principal("acme", "mallory")]).problem is Reason.PRINCIPAL_CONFLICT
    assert summarize([*BASE, cv.Principal("evil", "alice")]).problem is Reason.PRINCIPAL_CONFLICT


def test_repeating_the_same_principal_is_no_conflict():
    """An identical second principal caveat adds nothing and changes nothing."""
    claims = summarize([*BASE, cv.Principal("acme", "alice")])
    assert claims.problem is None
    assert (claims.customer, claims.user) == ("acme", "alice")


def test_second_agent_caveat_is_a_principal_conflict():
    """The first holder is named once; a second agent caveat, even the same name, fails."""
    assert summarize([*BASE, cv.Agent("intruder")]).problem is Reason.PRINCIPAL_CONFLICT
    assert summarize([*BASE, cv.Agent("planner")]).problem is Reason.PRINCIPAL_CONFLICT


def test_agent_caveat_after_a_delegation_never_verifies():
    """The first holder is named before any delegation; an agent caveat after one is a problem."""
    caveats = [PRINCIPAL, cv.Delegate("b", D1), AGENT, RESOURCES, ACTIONS, PURPOSES, EXPIRES]
    assert summarize(caveats).problem in (Reason.MALFORMED, Reason.PRINCIPAL_CONFLICT)
    renamed = [*BASE, cv.Delegate("b", D1), cv.Agent("c")]
    assert summarize(renamed).problem is Reason.PRINCIPAL_CONFLICT


@pytest.mark.parametrize(
    "missing", ["principal", "agent", "expires", "resources", "actions", "purposes"]
)
def test_missing_required_caveat_is_malformed(missing):
    """A token without principal, agent, expiry, resources, actions or purposes never verifies."""
    caveats = [c for c in BASE if c.name != missing]
    assert len(caveats) == len(BASE) - 1
    assert summarize(caveats).problem is Reason.MALFORMED


def test_empty_caveat_list_is_malformed():
    """A token with no caveats at all allows nothing."""
    assert summarize([]).problem is Reason.MALFORMED


def test_actions_purposes_and_audiences_are_intersected():
    """Every caveat of a kind must hold, so their names intersect."""
    claims = summarize(
        [
            *BASE,
            cv.Actions(("read", "delete")),
            cv.Purposes(("audit", "billing")),
            cv.Audience(("gw1", "gw2")),
            cv.Audience(("gw2", "gw3")),
        ]
    )
    assert claims.actions == {"read"}
    assert claims.purposes == {"audit"}
    assert claims.audiences == {"gw2"}


def test_disjoint_scopes_intersect_to_empty_sets():
    """Narrowing to names the token never had leaves nothing, not the new names."""
    claims = summarize([*BASE, cv.Actions(("delete",)), cv.Purposes(("billing",))])
    assert claims.actions == frozenset()
    assert claims.purposes == frozenset()
    assert claims.problem is None


def test_every_resources_caveat_is_kept_separately():
    """Resource patterns do not intersect as sets: each caveat is kept and must match on its own."""
    narrower = cv.Resources(("crm/contacts/*",))
    claims = summarize([*BASE, narrower])
    assert claims.resources == (RESOURCES, narrower)


def test_earliest_expiry_and_latest_not_before_win():
    """Several time bounds combine to the narrowest window."""
    claims = summarize(
        [
            *BASE,
            cv.Expires(1_800_000_060),
            cv.Expires(1_800_000_900),
            cv.NotBefore(10),
            cv.NotBefore(20),
        ]
    )
    assert claims.expires_at == 1_800_000_060
    assert claims.not_before == 20


def test_delegations_extend_the_chain_in_order_with_their_ids():
    """The chain is the first holder then each delegate, with delegation ids in the same order."""
    claims = summarize([*BASE, cv.Delegate("fetcher", D1), cv.Delegate("tool", D2)])
    assert claims.chain == ("planner", "fetcher", "tool")
    assert claims.delegation_ids == (D1, D2)
    assert claims.problem is None


def test_max_delegations_zero_before_a_delegation_is_a_delegation_limit():
    """A limit of 0 forbids any delegation after it."""
    caveats = [*BASE, cv.MaxDelegations(0), cv.Delegate("b", D1)]
    assert summarize(caveats).problem is Reason.DELEGATION_LIMIT


def test_max_delegations_counts_only_delegations_after_it():
    """Delegations made before the limit was added do not count against it."""
    before = [*BASE, cv.Delegate("b", D1), cv.Delegate("c", D2), cv.MaxDelegations(0)]
    assert summarize(before).problem is None
    one_after = [*BASE, cv.Delegate("b", D1), cv.MaxDelegations(1), cv.Delegate("c", D2)]
    assert summarize(one_after).problem is None
    two_after = [*one_after, cv.Delegate("d", D3)]
    assert summarize(two_after).problem is Reason.DELEGATION_LIMIT


def test_every_max_delegations_caveat_must_hold():
    """A looser later limit cannot lift a stricter earlier one."""
    caveats = [
        *BASE,
        cv.MaxDelegations(1),
        cv.Delegate("b", D1),
        cv.MaxDelegations(5),
        cv.Delegate("c", D2),
    ]
    assert summarize(caveats).problem is Reason.DELEGATION_LIMIT


def test_unknown_caveat_is_reported_as_unknown_caveat():
    """One caveat the verifier does not understand makes the whole token fail."""
    assert summarize([*BASE, cv.UnknownCaveat(b"time < 2030")]).problem is Reason.UNKNOWN_CAVEAT


def test_third_party_caveat_is_reported_as_discharge_missing():
    """Discharges are not supported, so a third-party caveat always fails."""
    third = cv.ThirdPartyCaveat(b"cid", b"vid", b"https://auth.example/")
    assert summarize([*BASE, third]).problem is Reason.DISCHARGE_MISSING


def test_most_fundamental_problem_is_reported_first():
    """Unknown caveats outrank discharges, which outrank malformed, conflicts and limits."""
    third = cv.ThirdPartyCaveat(b"cid", b"vid", None)
    conflict = cv.Principal("evil", "mallory")
    limit = [cv.MaxDelegations(0), cv.Delegate("b", D1)]
    assert (
        summarize([*BASE, conflict, *limit, third, cv.UnknownCaveat(b"x")]).problem
        is Reason.UNKNOWN_CAVEAT
    )
    assert summarize([*BASE, conflict, *limit, third]).problem is Reason.DISCHARGE_MISSING
    assert summarize([PRINCIPAL, AGENT, conflict, *limit]).problem is Reason.MALFORMED
    assert summarize([*BASE, conflict, *limit]).problem is Reason.PRINCIPAL_CONFLICT
    assert summarize([*BASE, *limit]).problem is Reason.DELEGATION_LIMIT


# --- decode_unverified and inspect ---------------------------------------------------


def test_decode_unverified_returns_identifier_and_typed_caveats():
    """decode_unverified reads the identifier and caveats without any key."""
    token = token_of([*BASE, cv.Delegate("fetcher", D1)])
    unverified = decode_unverified(token)
    assert unverified.identifier == wire.Identifier("kclaims", bytes(range(16)), 1_800_000_000)
    assert unverified.caveats == (*BASE, cv.Delegate("fetcher", D1))
    assert unverified.claims().chain == ("planner", "fetcher")


def test_decode_unverified_marks_third_party_caveats():
    """A caveat carrying a verification id decodes to a ThirdPartyCaveat, not its text."""
    identifier = wire.encode_identifier(wire.Identifier("kclaims", bytes(16), 1))
    cids = tuple(c.encode() for c in BASE) + (ACTIONS.encode(),)
    raw = wire.RawMacaroon(identifier, cids, bytes(32), None, (wire.ThirdParty(6, b"vid", b"loc"),))
    caveats = decode_unverified(wire.encode_token(raw)).caveats
    assert caveats[6] == cv.ThirdPartyCaveat(ACTIONS.encode(), b"vid", b"loc")


def test_inspect_output_is_marked_unverified():
    """inspect says in its output that nothing was verified: verified false and a warning."""
    view = inspect(token_of(BASE))
    assert view["verified"] is False
    assert "UNVERIFIED" in str(view["warning"]).upper()
    assert "unverified" in (inspect.__doc__ or "").lower()


def test_inspect_reads_a_token_whose_signature_is_wrong():
    """inspect never checks a key, so a forged token is shown (and still marked unverified)."""
    token = token_of(BASE, root_key=b"\x01" * 32)
    view = inspect(token)
    assert view["customer"] == "acme"
    assert view["verified"] is False


def test_inspect_shows_the_provenance_and_caveats():
    """inspect reports ids as lowercase hex, the chain, the last holder and every caveat by name."""
    view = inspect(token_of([*BASE, cv.Delegate("fetcher", D1)]))
    assert view["key_id"] == "kclaims"
    assert view["token_id"] == bytes(range(16)).hex()
    assert view["issued_at"] == 1_800_000_000
    assert (view["customer"], view["user"]) == ("acme", "alice")
    assert view["chain"] == ["planner", "fetcher"]
    assert view["agent"] == "fetcher"
    assert view["delegation_ids"] == [D1.hex()]
    assert view["expires_at"] == 1_800_000_600
    assert view["problem"] is None
    caveats = view["caveats"]
    assert isinstance(caveats, list)
    assert [next(iter(c)) for c in caveats] == [
        "principal", "agent", "resources", "actions", "purposes", "expires", "delegate",
    ]  # fmt: skip
    assert caveats[-1] == {"delegate": {"to_agent": "fetcher", "delegation_id": D1.hex()}}


def test_inspect_reports_the_structural_problem():
    """A token that can never verify says why in inspect's `problem`."""
    view = inspect(token_of([*BASE, cv.Principal("evil", "mallory")]))
    assert view["problem"] == "principal_conflict"
