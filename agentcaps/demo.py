"""`agentcaps demo`: a guided tour of minting, offline delegation, verification and revocation.

Written for someone who has never heard of macaroons. Everything runs in this
process on the in-memory store, with a clock the tour controls, so it needs
no server and no setup and always tells the same story.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import agentcaps
from agentcaps import caveats as cv
from agentcaps.config import Settings
from agentcaps.decision import Decision, Reason
from agentcaps.errors import NothingPersistsWarning
from agentcaps.revocation import Revocation, RevocationKind

if TYPE_CHECKING:
    from agentcaps.stores.redis import Stores

# What each reason means, in the tour's words.
EXPLAIN = {
    Reason.OK: "every check passed",
    Reason.RESOURCE_DENIED: "the token does not cover this resource",
    Reason.ACTION_DENIED: "the token does not allow this action",
    Reason.PURPOSE_DENIED: "the token was not issued for this purpose",
    Reason.ACTOR_MISMATCH: "the caller is not the agent holding the token",
    Reason.EXPIRED: "the token's time is up",
    Reason.REVOKED: "an admin revoked this token's delegation branch",
}


def short(token: str) -> str:
    """A token shortened for display: its start, its end and its length."""
    return f"{token[:14]}…{token[-6:]} ({len(token)} characters)"


def plain(caveat: cv.Caveat, now: float) -> str:
    """One caveat in words, for the tour."""
    if isinstance(caveat, cv.Principal):
        return f"user {caveat.user} of customer {caveat.customer}"
    if isinstance(caveat, cv.Expires):
        seconds = int(caveat.at - now)
        return f"in {seconds // 60} min" if seconds % 60 == 0 else f"in {seconds} s"
    if isinstance(caveat, cv.Delegate):
        return f"handed to {caveat.to_agent} (delegation id {caveat.delegation_id.hex()[:8]}…)"
    value = caveat.describe()
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def provenance(decision: Decision, resource: str, purpose: str | None) -> str:
    """The provenance chain in words, current holder first.

    e.g. "summarizer, delegated by fetcher, delegated by planner, authorized by
    user alice of customer acme, for purpose sync on crm/contacts/42".
    """
    holders = list(reversed(decision.chain))
    words = [holders[0], *(f"delegated by {h}" for h in holders[1:])]
    words.append(f"authorized by user {decision.user} of customer {decision.customer}")
    purposes = purpose or ", ".join(decision.purposes)
    return ", ".join(words) + f", for purpose {purposes} on {resource}"


class _Tour:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.sections = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def section(self, title: str) -> None:
        self.sections += 1
        self.say()
        self.say(f"{self.sections}. {title}")

    def decide(
        self,
        verifier: agentcaps.Verifier,
        label: str,
        token: str,
        *,
        resource: str,
        action: str,
        purpose: str | None = "sync",
        actor: str | None = None,
        show_chain: bool = False,
    ) -> Decision:
        decision = verifier.verify(
            token, resource=resource, action=action, purpose=purpose, actor=actor
        )
        verdict = "ALLOWED" if decision.allowed else "DENIED "
        meaning = EXPLAIN.get(decision.reason, "")
        self.say(f"   {verdict}  {label}")
        self.say(
            f"            reason: {decision.reason.value}" + (f" ({meaning})" if meaning else "")
        )
        if show_chain and decision.allowed:
            self.say(f"            chain:  {provenance(decision, resource, purpose)}")
        return decision


def run(out: TextIO | None = None) -> int:
    """Tell the tour on `out` (default stdout); return the exit status."""
    out = out or sys.stdout
    tour = _Tour(out)
    start = float(int(time.time()))

    def clock() -> float:
        return start  # the tour's "now" stands still, so its story never changes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingPersistsWarning)
        stores = agentcaps.connect("memory://", settings=Settings(), clock=clock)
    try:
        _tell(tour, stores, clock, start)
    finally:
        stores.close()
    return 0


def _tell(tour: _Tour, stores: Stores, clock: Callable[[], float], start: float) -> None:
    say = tour.say
    say("agentcaps demo: capability tokens for AI agents")
    say()
    say("An AI agent acting for a person should carry a visitor badge, not a master key:")
    say("who it acts for, what it may touch, why, and until when. agentcaps tokens are")
    say("such badges (macaroons): signed by the issuer, checked by any gateway, and")
    say("narrowed by whoever holds them, offline, before passing them on.")
    say("This tour runs in memory, in this process: nothing is stored or sent anywhere.")

    tour.section("The issuer mints a token")
    say('   acme\'s backend asks for a token: agent "planner" may read and write anything')
    say('   under crm/, on behalf of user alice, for the purpose "sync", for 10 minutes.')
    planner = stores.minter(clock=clock).mint(
        customer="acme",
        user="alice",
        agent="planner",
        resources=["crm/**"],
        actions=["read", "write"],
        purposes=["sync"],
        ttl=600,
    )
    say(f"   planner's token:    {short(planner)}")
    say("   It is signed with acme's root key, which only agentcaps holds.")

    tour.section("planner delegates to fetcher, offline")
    say("   planner needs contacts fetched. Without any key or network call, it adds")
    say("   restrictions to its own token: only crm/contacts/*, only read, only 60 seconds,")
    say('   and hands it to "fetcher". Restrictions can be added, never removed: the new')
    say("   token can do less than planner's, never more.")
    fetcher = agentcaps.attenuate(
        planner,
        resources=["crm/contacts/*"],
        actions=["read"],
        ttl=60,
        delegate_to="fetcher",
        clock=clock,
    )
    say(f"   fetcher's token:    {short(fetcher)}")

    tour.section("fetcher delegates to summarizer, offline again")
    say("   fetcher passes on only what summarizer needs: crm/contacts/42.")
    summarizer = agentcaps.attenuate(
        fetcher, resources=["crm/contacts/42"], delegate_to="summarizer", clock=clock
    )
    say(f"   summarizer's token: {short(summarizer)}")
    say("   Inside, it is a list of restrictions (caveats), each one sealed onto the last;")
    say("   every one of them must hold:")
    added_by: dict[int, str] = {}
    for who, token in (("issuer", planner), ("planner", fetcher), ("fetcher", summarizer)):
        count = len(agentcaps.decode_unverified(token).caveats)
        added_by.update({i: who for i in range(len(added_by), count)})
    for i, caveat in enumerate(agentcaps.decode_unverified(summarizer).caveats):
        say(f"     {f'[{added_by[i]}]':<10} {caveat.name}: {plain(caveat, start)}")

    verifier = stores.verifier(clock=clock)
    tour.section("A gateway checks requests, locally")
    say("   For each request the gateway checks the signature chain and every restriction")
    say("   in microseconds, without calling the issuer. Allowed requests come with the")
    say("   provenance chain: who acts, who delegated, and for whom.")
    tour.decide(
        verifier,
        "summarizer reads crm/contacts/42 for sync",
        summarizer,
        resource="crm/contacts/42",
        action="read",
        actor="summarizer",
        show_chain=True,
    )
    tour.decide(
        verifier,
        "fetcher reads crm/contacts/7 for sync",
        fetcher,
        resource="crm/contacts/7",
        action="read",
        actor="fetcher",
        show_chain=True,
    )
    say()
    say("   And requests the tokens do not allow:")
    tour.decide(
        verifier,
        "summarizer reads crm/contacts/43 (another contact)",
        summarizer,
        resource="crm/contacts/43",
        action="read",
    )
    tour.decide(
        verifier,
        "summarizer writes crm/contacts/42",
        summarizer,
        resource="crm/contacts/42",
        action="write",
    )
    tour.decide(
        verifier,
        'someone calling as "mallory" presents summarizer\'s token',
        summarizer,
        resource="crm/contacts/42",
        action="read",
        actor="mallory",
    )
    tour.decide(
        verifier,
        'summarizer reads crm/contacts/42 for purpose "marketing"',
        summarizer,
        resource="crm/contacts/42",
        action="read",
        purpose="marketing",
    )
    later = stores.verifier(clock=lambda: start + 120)
    tour.decide(
        later,
        "fetcher reads crm/contacts/7, two minutes later",
        fetcher,
        resource="crm/contacts/7",
        action="read",
    )
    tour.decide(
        later,
        "planner reads crm/contacts/7, two minutes later (its 10 minutes are not up)",
        planner,
        resource="crm/contacts/7",
        action="read",
    )

    tour.section("An admin revokes fetcher's branch")
    branch = verifier.verify(fetcher, resource="crm/contacts/7", action="read").delegation_ids[-1]
    say("   fetcher misbehaves. Every delegation has its own id; revoking fetcher's")
    say(f"   (delegation id {branch[:8]}…) cuts off fetcher and everything it handed on,")
    say("   and leaves planner alone. Gateways see it at their next check.")
    stores.revocations.revoke(
        Revocation(
            RevocationKind.DELEGATION,
            (branch,),
            int(start),
            reason="demo: fetcher misbehaved",
            by="admin",
        )
    )
    tour.decide(
        verifier, "fetcher reads crm/contacts/7", fetcher, resource="crm/contacts/7", action="read"
    )
    tour.decide(
        verifier,
        "summarizer reads crm/contacts/42",
        summarizer,
        resource="crm/contacts/42",
        action="read",
    )
    tour.decide(
        verifier,
        "planner reads crm/contacts/42",
        planner,
        resource="crm/contacts/42",
        action="read",
        show_chain=True,
    )

    say()
    say("Next: `agentcaps --help`. With a Redis (AGENTCAPS_REDIS_URL) the same commands")
    say("mint, attenuate, verify and revoke for real; `agentcaps doctor` checks that Redis.")
