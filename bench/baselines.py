"""More candidates for the verification table (issue 7): biscuit-python, the bare HMAC chain, one hmac.digest.

bench/verify.py has agentcaps, pymacaroons and PyJWT; bench/run.py times these
next to them, at the same caveat counts, against the same request (resource
crm/contacts/42, action read, purpose sync), and each must allow it (and deny
a wrong resource) before anything is timed.
"""

from __future__ import annotations

import datetime
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

from biscuit_auth import AuthorizerBuilder, Biscuit, BiscuitBuilder, BlockBuilder, KeyPair
from pymacaroons import Macaroon
from timing import Run
from verify import ACTION, AUDIENCE, MANDATORY, PURPOSE, RESOURCE, Caveat, logical_caveats

# --- biscuit-python ------------------------------------------------------------
#
# A biscuit carries the same logical caveats as datalog: the principal, agent and
# delegations as facts, every other caveat as a check. The six mandatory caveats
# (the four of the 4-caveat row) form the authority block; the attenuations are
# appended as blocks grouped as bench/verify.py groups agentcaps' attenuate()
# calls (a new block where a kind repeats), so a biscuit signs as many blocks
# as agentcaps' token had attenuation steps. A `**` glob becomes starts_with, which
# is cheaper than a glob match: that only flatters biscuit.


def _datalog(kind: str, value: Any, expires: datetime.datetime) -> tuple[str, dict[str, Any]]:
    """One caveat as a datalog statement and its parameters."""
    if kind == "principal":
        return "principal({customer}, {user});", {"customer": value[0], "user": value[1]}
    if kind == "agent":
        return "agent({agent});", {"agent": value}
    if kind == "delegate":
        return "delegate({to}, {id});", {"to": value, "id": secrets.token_hex(16)}
    if kind == "expires":
        return "check if time($t), $t < {expires};", {"expires": expires}
    if kind == "audience":
        return "check if audience({audience});", {"audience": value[0]}
    if kind == "resources":
        prefixes = [g.removesuffix("**") for g in value]
        assert all(p.endswith("/") for p in prefixes), value
        alternatives = " or ".join(f"$r.starts_with({{p{i}}})" for i in range(len(prefixes)))
        return (
            f"check if resource($r), {alternatives};",
            {f"p{i}": p for i, p in enumerate(prefixes)},
        )
    # Parameters cannot stand inside a set literal: the members are written as
    # datalog strings (our own constants, JSON-quoted).
    name = {"actions": "operation", "purposes": "purpose"}[kind]
    members = ", ".join(json.dumps(v) for v in value)
    return f"check if {name}($x), {{{members}}}.contains($x);", {}


def _blocks(caveats: Sequence[Caveat]) -> list[list[Caveat]]:
    """The authority block, then one block per attenuation step."""
    head = min(MANDATORY, len(caveats))
    blocks: list[list[Caveat]] = [list(caveats[:head])]
    step: list[Caveat] = []
    for caveat in caveats[head:]:
        if any(kind == caveat[0] for kind, _ in step):
            blocks.append(step)
            step = []
        step.append(caveat)
    if step:
        blocks.append(step)
    return blocks


def biscuit_token(keys: KeyPair, caveats: Sequence[Caveat], ttl: int) -> str:
    """A biscuit with `caveats` (an authority block, then attenuation blocks), base64."""
    expires = datetime.datetime.fromtimestamp(int(time.time()) + ttl, tz=datetime.UTC)
    authority, *steps = _blocks(caveats)
    root = BiscuitBuilder()
    _add(root, authority, expires)
    token = root.build(keys.private_key)
    for step in steps:
        block = BlockBuilder(None)
        _add(block, step, expires)
        token = token.append(block)
    return str(token.to_base64())


def _add(builder: Any, caveats: Sequence[Caveat], expires: datetime.datetime) -> None:
    for k, (kind, value) in enumerate(caveats):
        code, params = _datalog(kind, value, expires)
        # Parameter names must be unique within a block.
        for name in params:
            code = code.replace("{" + name + "}", "{" + f"c{k}_{name}" + "}")
        builder.add_code(code, {f"c{k}_{name}": v for name, v in params.items()})


_AUTHORIZER = (
    "resource({resource}); operation({action}); purpose({purpose}); audience({audience}); "
    "allow if true;"
)


def biscuit_decide(
    token: str, public_key: Any, resource: str = RESOURCE, action: str = ACTION
) -> bool:
    """Parse (every block's signature checked), then authorize the request; raises when denied."""
    parsed = Biscuit.from_base64(token, public_key)
    authorizer = AuthorizerBuilder(
        _AUTHORIZER,
        {"resource": resource, "action": action, "purpose": PURPOSE, "audience": AUDIENCE},
    )
    authorizer.set_time()  # type: ignore[attr-defined]  # in biscuit-python, not its stubs
    return authorizer.build(parsed).authorize() == 0


def biscuit_denies(token: str, public_key: Any, **request: str) -> bool:
    try:
        biscuit_decide(token, public_key, **request)
    except Exception:  # noqa: BLE001 - biscuit_auth signals a denial with its own exceptions
        return True
    return False


def biscuit_candidate(n: int) -> tuple[str, Run]:
    """("biscuit", run) at caveat count `n`, checked to allow and to deny a wrong request."""
    keys = KeyPair()
    token = biscuit_token(keys, logical_caveats(n), 3000)
    public = keys.public_key
    assert biscuit_decide(token, public)
    assert biscuit_denies(token, public, resource="hr/payroll")
    assert biscuit_denies(token, public, action="delete")

    def run(loops: int) -> int:
        tokens = [token] * loops
        decide = biscuit_decide
        start = time.perf_counter_ns()
        for t in tokens:
            decide(t, public)
        return time.perf_counter_ns() - start

    return "biscuit", run


# --- the bare HMAC chain: the floor in Python ------------------------------------


def chain_parts(token: str) -> tuple[bytes, list[bytes], bytes]:
    """An agentcaps token's identifier, caveat ids and signature (pymacaroons reads our wire format)."""
    m = Macaroon.deserialize(token.removeprefix("agc_"))
    return m.identifier_bytes, [c.caveat_id_bytes for c in m.caveats], bytes.fromhex(m.signature)


def hmac_chain(
    derived: bytes, identifier: bytes, caveats: Sequence[bytes], expected: bytes
) -> bool:
    """The libmacaroons chain with hmac.digest (derived key given, as verifiers cache it)."""
    digest = hmac.digest
    sig = digest(derived, identifier, "sha256")
    for caveat in caveats:
        sig = digest(sig, caveat, "sha256")
    return hmac.compare_digest(sig, expected)


def hmac_chain_run(derived: bytes, token: str) -> Run:
    """run(loops): the bare chain over `token`'s own identifier and caveats."""
    identifier, caveats, expected = chain_parts(token)
    assert hmac_chain(derived, identifier, caveats, expected), (
        "the floor must reproduce the signature"
    )

    def run(loops: int) -> int:
        chain = hmac_chain
        start = time.perf_counter_ns()
        for _ in range(loops):
            chain(derived, identifier, caveats, expected)
        return time.perf_counter_ns() - start

    return run


def hmac_digest_run(token: str) -> Run:
    """run(loops): one hmac.digest per iteration, a 32-byte key over a caveat of `token`."""
    _identifier, caveats, _expected = chain_parts(token)
    message = max(caveats, key=len)
    key = secrets.token_bytes(32)

    def run(loops: int) -> int:
        digest = hmac.digest
        start = time.perf_counter_ns()
        for _ in range(loops):
            digest(key, message, "sha256")
        return time.perf_counter_ns() - start

    return run
