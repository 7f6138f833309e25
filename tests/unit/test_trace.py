"""A token's provenance tree from its audit events: branches per delegation, events in time order."""

from __future__ import annotations

from agentcaps.audit import AuditEvent, mint_event, revocation_event, verification_event
from agentcaps.decision import Decision, Reason
from agentcaps.mint import MintedToken
from agentcaps.revocation import Revocation, RevocationKind
from agentcaps.trace import Branch, build_trace, render, to_dict

NOW = 1_800_000_000.0
TID = "ab" * 16
D_FETCHER, D_ANALYST, D_SUMMARIZER = "d1" * 16, "d2" * 16, "d3" * 16


def decision(chain: tuple[str, ...], ids: tuple[str, ...], reason: Reason = Reason.OK) -> Decision:
    return Decision(reason is Reason.OK, reason, TID, "k1", "acme", "alice", chain, ids)


def story() -> list[AuditEvent]:
    """Minted for planner; delegated to fetcher (then summarizer) and to analyst; two revocations."""
    minted = MintedToken("agc_x", TID, "k1", int(NOW), int(NOW) + 600)
    fetcher = decision(("planner", "fetcher"), (D_FETCHER,))
    return [
        revocation_event(
            NOW + 9,
            Revocation(
                RevocationKind.DELEGATION, (D_FETCHER,), int(NOW + 9), reason="done", by="x"
            ),
            target=fetcher,
        ),
        mint_event(
            NOW,
            caller="acme/issuer",
            customer="acme",
            user="alice",
            agent="planner",
            resources=["crm/**"],
            actions=["read"],
            purposes=["sync"],
            ttl=600,
            minted=minted,
        ),
        verification_event(
            decision(("planner",), ()), resource="crm/1", action="read", when=NOW + 1
        ),
        verification_event(fetcher, resource="crm/2", action="read", when=NOW + 2),
        verification_event(
            decision(("planner", "analyst"), (D_ANALYST,), Reason.ACTION_DENIED),
            resource="crm/3",
            action="write",
            when=NOW + 3,
        ),
        verification_event(
            decision(("planner", "fetcher", "summarizer"), (D_FETCHER, D_SUMMARIZER)),
            resource="crm/4",
            action="read",
            when=NOW + 4,
        ),
        revocation_event(
            NOW + 5, Revocation(RevocationKind.DELEGATION, (D_ANALYST,), int(NOW + 5))
        ),
        verification_event(
            decision(("planner", "fetcher"), (D_FETCHER,), Reason.REVOKED),
            resource="crm/2",
            action="read",
            when=NOW + 10,
        ),
    ]


def branch(root: Branch, *path: str) -> Branch:
    node = root
    for agent in path:
        node = next(b for b in node.children if b.agent == agent)
    return node


def test_each_event_hangs_under_the_branch_of_its_chain() -> None:
    """Verifications and revocations go under the delegation their token carried."""
    trace = build_trace(TID, story())
    assert trace.minted is not None and (trace.customer, trace.user) == ("acme", "alice")
    root = trace.root
    assert root.agent == "planner" and [e.resource for e in root.events] == ["crm/1"]
    fetcher = branch(root, "fetcher")
    assert fetcher.delegation_id == D_FETCHER and fetcher.path == ("planner", "fetcher")
    assert [(e.kind.value, e.reason) for e in fetcher.events] == [
        ("verify", "ok"), ("revoke", None), ("verify", "revoked"),
    ]  # fmt: skip
    assert [e.resource for e in branch(root, "fetcher", "summarizer").events] == ["crm/4"]
    analyst = branch(root, "analyst")
    assert [(e.kind.value, e.reason) for e in analyst.events] == [
        ("verify", "action_denied"), ("revoke", None),
    ]  # fmt: skip


def test_branches_and_events_are_in_time_order() -> None:
    """A branch appears where it was first seen, among its parent's events."""
    items = build_trace(TID, story()).root.items()
    labels = [i.agent if isinstance(i, Branch) else i.resource for _t, i in items]
    assert labels == ["crm/1", "fetcher", "analyst"]


def test_the_text_shows_the_user_and_each_holder() -> None:
    """The rendered tree names the path user → planner → fetcher, with its events indented under it."""
    lines = render(build_trace(TID, story())).splitlines()
    assert lines[0].startswith(f"token {TID}")
    fetcher = next(i for i, line in enumerate(lines) if "alice → planner → fetcher " in line)
    assert lines[fetcher].startswith("├─ ")
    assert "verify  allowed  read crm/2" in lines[fetcher + 1]
    assert lines[fetcher + 1].startswith("│  ├─ ")
    assert any("alice → planner → fetcher → summarizer" in line for line in lines)
    assert not any("agc_" in line for line in lines)


def test_the_json_tree_nests_branches() -> None:
    """to_dict gives each branch its items: events and sub-branches, in order."""
    tree = to_dict(build_trace(TID, story()))
    kinds = [next(iter(item)) for item in tree["root"]["items"]]
    assert kinds == ["event", "branch", "branch"]
    assert tree["root"]["items"][1]["branch"]["path"] == ["planner", "fetcher"]


def test_unrelated_events_are_left_out() -> None:
    """Events of other tokens (and revocations of branches it never had) are not in its trace."""
    other = Decision(True, Reason.OK, "ee" * 16, "k1", "acme", "bob", ("x",))
    events = [
        *story(),
        verification_event(other, resource="crm/9", action="read", when=NOW),
        revocation_event(NOW, Revocation(RevocationKind.DELEGATION, ("ff" * 16,), int(NOW))),
    ]
    text = render(build_trace(TID, events))
    assert "crm/9" not in text and "ffff" not in text


def test_a_branch_revoked_before_it_was_first_seen_shows_its_revocation() -> None:
    """Revoked by delegation id (no token at hand) before its holder ever verified: still under it."""
    events = [
        revocation_event(
            NOW + 1, Revocation(RevocationKind.DELEGATION, (D_SUMMARIZER,), int(NOW + 1))
        ),
        verification_event(
            decision(
                ("planner", "fetcher", "summarizer"), (D_FETCHER, D_SUMMARIZER), Reason.REVOKED
            ),
            resource="crm/4",
            action="read",
            when=NOW + 2,
        ),
    ]
    summarizer = branch(build_trace(TID, events).root, "fetcher", "summarizer")
    assert [e.kind.value for _t, e in summarizer.items()] == ["revoke", "verify"]  # type: ignore[union-attr]
