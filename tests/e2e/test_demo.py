"""`agentcaps demo`: the guided tour runs anywhere and tells the whole story."""

from __future__ import annotations

import os
import subprocess
import sys

from agentcaps.decision import Decision, Reason
from agentcaps.demo import provenance, short

CHAIN = (
    "summarizer, delegated by fetcher, delegated by planner, authorized by user alice "
    "of customer acme, for purpose sync on crm/contacts/42"
)


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    return subprocess.run(
        [sys.executable, "-m", "agentcaps", "demo"],
        check=False,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=30,
    )


def test_demo_tells_the_chain_the_denials_and_a_revocation() -> None:
    """The demo exits 0 and shows the provenance chain, each denial reason and `revoked`."""
    result = run_demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert CHAIN in out
    for reason in (
        "resource_denied",
        "action_denied",
        "actor_mismatch",
        "purpose_denied",
        "expired",
    ):
        assert f"reason: {reason}" in out
    revocation = out[out.index("5. ") :]
    assert revocation.count("reason: revoked") == 2 and "ALLOWED  planner" in revocation
    assert all(f"\n{n}. " in out for n in range(1, 6))
    assert "in memory" in out


def test_demo_is_quiet_on_stderr_and_ignores_the_environment() -> None:
    """The demo prints no warnings and runs in memory whatever AGENTCAPS_* says."""
    result = run_demo(AGENTCAPS_REDIS_URL="redis://127.0.0.1:9/0", AGENTCAPS_MASTER_KEY="bad")
    assert (result.returncode, result.stderr) == (0, "")


def test_tokens_are_shortened_for_display() -> None:
    """`short` shows a token's ends and its length, never the whole token."""
    token = "agc_" + "x" * 200 + "tail99"
    shown = short(token)
    assert shown.startswith("agc_") and "tail99" in shown and "210 characters" in shown
    assert len(shown) < 50


def test_provenance_reads_from_the_current_holder_back_to_the_user() -> None:
    """The provenance sentence names the holder, each delegator, the user and the purpose."""
    decision = Decision(
        allowed=True,
        reason=Reason.OK,
        customer="acme",
        user="alice",
        chain=("planner", "fetcher", "summarizer"),
        purposes=("sync",),
    )
    assert provenance(decision, "crm/contacts/42", None) == CHAIN
