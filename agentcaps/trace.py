"""A token's provenance tree, rebuilt from its audit events: `agentcaps audit trace TOKEN_ID`.

The root is the token as minted (for which user of which customer, to which
agent, by whom). Delegations happen offline and leave no event of their own;
verifiers learn them from the chains and delegation ids of the tokens they
see, so each delegation becomes a branch the first time any event shows it.
Every verification and revocation hangs under the branch of the token it was
about, and each branch lists its events and sub-branches in time order.

Pure: events in, a tree (and its text or JSON) out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentcaps.audit import AuditEvent, AuditKind, iso


@dataclass
class Branch:
    """One holder of the token: the root (its first holder) or a delegation to `agent`."""

    agent: str
    path: tuple[str, ...]  # the holders from the first to this one
    delegation_id: str | None = None  # None for the root
    first_seen: float | None = None
    events: list[AuditEvent] = field(default_factory=list)
    children: list[Branch] = field(default_factory=list)

    def child(self, delegation_id: str, agent: str, when: float) -> Branch:
        for branch in self.children:
            if branch.delegation_id == delegation_id:
                if branch.first_seen is None or when < branch.first_seen:
                    branch.first_seen = when
                return branch
        branch = Branch(agent, (*self.path, agent), delegation_id, when)
        self.children.append(branch)
        return branch

    def find(self, delegation_id: str) -> Branch | None:
        if self.delegation_id == delegation_id:
            return self
        for branch in self.children:
            found = branch.find(delegation_id)
            if found is not None:
                return found
        return None

    def items(self) -> list[tuple[float, AuditEvent | Branch]]:
        """Events and sub-branches in time order (a branch at its first sighting)."""
        out: list[tuple[float, AuditEvent | Branch]] = [(e.time, e) for e in self.events]
        out += [(b.first_seen or 0.0, b) for b in self.children]
        out.sort(key=lambda item: (item[0], isinstance(item[1], Branch)))
        return out


@dataclass
class Trace:
    """A token's provenance: its mint and the tree of its holders."""

    token_id: str
    customer: str | None
    user: str | None
    minted: AuditEvent | None
    root: Branch


def _order(event: AuditEvent) -> tuple[float, str, int]:
    return (event.time, event.writer or "", event.seq or 0)


def build_trace(token_id: str, events: Iterable[AuditEvent]) -> Trace:
    """The provenance tree of `token_id` from its events (any order; unrelated ones are skipped)."""
    ordered = sorted(events, key=_order)
    minted = next((e for e in ordered if e.kind is AuditKind.MINT and e.token_id == token_id), None)
    first = minted.agent if minted is not None else None
    if first is None:
        first = next((e.chain[0] for e in ordered if e.token_id == token_id and e.chain), "?")
    customer = minted.customer if minted else None
    user = minted.user if minted else None
    root = Branch(first, (first,))
    by_delegation_id: list[AuditEvent] = []
    for event in ordered:
        if event is minted:
            continue
        if event.token_id == token_id:
            customer = customer or event.customer
            user = user or event.user
            node = root
            if event.chain and event.delegation_ids:
                for holder, delegation_id in zip(
                    event.chain[1:], event.delegation_ids, strict=False
                ):
                    node = node.child(delegation_id, holder, event.time)
            node.events.append(event)
        elif event.kind is AuditKind.REVOKE and event.delegation_ids:
            by_delegation_id.append(event)
    # A branch revoked by its delegation id alone (no token at hand) is placed
    # once the whole tree is known: a branch is often revoked before its
    # holder ever used it, or by a writer whose clock is behind.
    for event in by_delegation_id:
        found = root.find(event.delegation_ids[-1])
        if found is not None:
            found.events.append(event)
    return Trace(token_id, customer, user, minted, root)


# -- text ------------------------------------------------------------------------


def _short(identifier: str | None) -> str:
    return (identifier[:12] + "…") if identifier and len(identifier) > 13 else (identifier or "-")


def describe(event: AuditEvent) -> str:
    """One line for an event in a trace."""
    when = iso(event.time)
    if event.kind is AuditKind.VERIFY:
        verdict = "allowed" if event.allowed else f"denied ({event.reason})"
        parts = [when, "verify", verdict, f"{event.action} {event.resource}"]
        if event.purpose:
            parts.append(f"purpose {event.purpose}")
        if event.actor:
            parts.append(f"actor {event.actor}")
        if event.audience:
            parts.append(f"at {','.join(event.audience)}")
        if event.request_id:
            parts.append(f"request {event.request_id}")
        if event.policy_version and not event.allowed and event.reason == "policy_denied":
            parts.append(f"policy {event.policy_version}")
        if event.latency_us is not None:
            parts.append(f"({event.latency_us:.1f} µs)")
        return "  ".join(parts)
    if event.kind is AuditKind.REVOKE:
        parts = [when, "revoke", event.detail or str(event.op)]
        if event.caller:
            parts.append(f"by {event.caller}")
        if event.why:
            parts.append(f"why {event.why!r}")
        return "  ".join(parts)
    return "  ".join([when, event.kind.value, event.detail or ""]).rstrip()


def _heading(trace: Trace) -> list[str]:
    lines = [f"token {trace.token_id}  customer {trace.customer or '?'}  user {trace.user or '?'}"]
    minted = trace.minted
    if minted is None:
        lines.append("minted: no mint event found (older than retention, or minted elsewhere)")
        return lines
    scope = [
        f"agent {minted.agent}",
        f"key {minted.key_id}",
        f"ttl {minted.ttl} s",
        f"resources {','.join(minted.resources)}",
        f"actions {','.join(minted.actions)}",
        f"purposes {','.join(minted.purposes)}",
    ]
    if minted.audience:
        scope.append(f"audience {','.join(minted.audience)}")
    if minted.max_delegations is not None:
        scope.append(f"max delegations {minted.max_delegations}")
    if minted.policy_version:
        scope.append(f"policy {minted.policy_version}")
    lines.append(f"minted {iso(minted.time)} by {minted.caller or '?'}")
    lines.append("  " + "  ".join(scope))
    return lines


def _label(trace: Trace, branch: Branch) -> str:
    path = " → ".join([trace.user or "?", *branch.path])
    if branch.delegation_id is None:
        return path
    return f"{path}  (delegation {_short(branch.delegation_id)}, first seen {iso(branch.first_seen or 0)})"


def render(trace: Trace) -> str:
    """The tree as text: the user, then each holder's branch, events in time order."""
    lines = _heading(trace)
    lines.append(_label(trace, trace.root))

    def walk(branch: Branch, indent: str) -> None:
        items = branch.items()
        for n, (_when, item) in enumerate(items):
            last = n == len(items) - 1
            lead = indent + ("└─ " if last else "├─ ")
            if isinstance(item, Branch):
                lines.append(lead + _label(trace, item))
                walk(item, indent + ("   " if last else "│  "))
            else:
                lines.append(lead + describe(item))

    walk(trace.root, "")
    return "\n".join(lines)


def to_dict(trace: Trace) -> dict[str, Any]:
    """The tree as JSON: each branch with its `items` (events and branches) in time order."""

    def branch(b: Branch) -> dict[str, Any]:
        return {
            "agent": b.agent,
            "path": list(b.path),
            "delegation_id": b.delegation_id,
            "first_seen": b.first_seen,
            "items": [
                {"branch": branch(item)} if isinstance(item, Branch) else {"event": item.to_dict()}
                for _when, item in b.items()
            ],
        }

    return {
        "token_id": trace.token_id,
        "customer": trace.customer,
        "user": trace.user,
        "minted": trace.minted.to_dict() if trace.minted else None,
        "root": branch(trace.root),
    }
