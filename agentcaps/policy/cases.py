"""Policy test cases: TOML files of mint and gateway requests with their expected decisions.

`agentcaps policy test DIR` runs every `DIR/tests/*.toml`. A file holds
`[[mint]]` and `[[gateway]]` cases, and optionally `[defaults.mint]` and
`[defaults.gateway]` tables that every case of that kind starts from. Each
case has a `name`, an `expect` ("allow" or "deny"), optionally `decided_by`
(the ids of the deciding policies, exactly; `[]` for a default deny), and the
request's fields. docs/policy.md documents the format.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcaps.decision import Decision, Reason
from agentcaps.policy.decision import PolicyDecision
from agentcaps.policy.gateway import GatewayPolicy
from agentcaps.policy.mint import MintGrant, MintIssuer, PolicyEngine

DEFAULT_NOW = 1_800_000_000
DEFAULT_TOKEN_ID = "00" * 16

_COMMON = {"name": str, "expect": str, "decided_by": list}
_MINT_FIELDS: dict[str, Any] = {
    **_COMMON,
    "issuer": str,
    "admin": bool,
    "customer": str,
    "user": str,
    "agent": str,
    "resources": list,
    "actions": list,
    "purposes": list,
    "audience": list,
    "ttl": int,
    "max_delegations": int,
    "now": int,
    "token_id": str,
}
_MINT_REQUIRED = ("user", "agent", "resources", "actions", "purposes", "ttl")
_GATEWAY_FIELDS: dict[str, Any] = {
    **_COMMON,
    "chain": list,
    "customer": str,
    "user": str,
    "resource": str,
    "action": str,
    "purpose": str,
    "purposes": list,
    "token_age": int,
    "now": int,
}
_GATEWAY_REQUIRED = ("chain", "customer", "user", "resource", "action")
_FIELDS = {"mint": _MINT_FIELDS, "gateway": _GATEWAY_FIELDS}
_REQUIRED = {"mint": _MINT_REQUIRED, "gateway": _GATEWAY_REQUIRED}


class CaseError(Exception):
    """A test case that cannot be run as written."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case (or of a file that could not be read: `name` is then empty)."""

    file: str
    name: str
    passed: bool
    message: str = ""

    @property
    def label(self) -> str:
        return f"{self.file}: {self.name}" if self.name else self.file

    def line(self) -> str:
        """`PASS  file: name` or `FAIL  file: name: why`."""
        if self.passed:
            return f"PASS  {self.label}"
        return f"FAIL  {self.label}: {self.message}"


def case_files(directory: Path) -> list[Path]:
    """`directory/tests/*.toml`, in name order."""
    tests = directory / "tests"
    return sorted(p for p in tests.glob("*.toml") if p.is_file()) if tests.is_dir() else []


def run_case_files(
    files: Sequence[Path], mint: PolicyEngine | None, gateway: GatewayPolicy | None
) -> list[CaseResult]:
    """Run every case of `files`; a file that does not read is one failed result."""
    results: list[CaseResult] = []
    for path in files:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            results.append(CaseResult(path.name, "", False, f"cannot read it: {exc}"))
            continue
        results.extend(run_document(path.name, document, mint, gateway))
    return results


def run_document(
    file: str,
    document: Mapping[str, Any],
    mint: PolicyEngine | None,
    gateway: GatewayPolicy | None,
) -> list[CaseResult]:
    """Run the cases of one parsed TOML document."""
    unknown = set(document) - {"mint", "gateway", "defaults"}
    if unknown:
        return [CaseResult(file, "", False, f"unknown tables: {', '.join(sorted(unknown))}")]
    defaults = document.get("defaults", {})
    if (
        not isinstance(defaults, dict)
        or set(defaults) - {"mint", "gateway"}
        or not all(isinstance(table, dict) for table in defaults.values())
    ):
        return [
            CaseResult(
                file, "", False, "[defaults] holds only [defaults.mint] and [defaults.gateway]"
            )
        ]
    results = []
    seen: set[str] = set()
    for kind in ("mint", "gateway"):
        cases = document.get(kind, [])
        if not isinstance(cases, list) or not all(isinstance(case, dict) for case in cases):
            return [CaseResult(file, "", False, f"write cases as [[{kind}]] tables")]
        for index, case in enumerate(cases, 1):
            fields = {**_defaults_for(case, defaults.get(kind, {})), **case}
            name = fields.get("name")
            label = name if isinstance(name, str) and name else f"{kind} case {index}"
            if label in seen:
                results.append(CaseResult(file, label, False, "another case has this name"))
                continue
            seen.add(label)
            try:
                message = _run(kind, fields, mint, gateway)
            except CaseError as exc:
                results.append(CaseResult(file, label, False, f"bad case: {exc}"))
            else:
                results.append(CaseResult(file, label, message is None, message or ""))
    if not results:
        results.append(CaseResult(file, "", False, "no [[mint]] or [[gateway]] cases"))
    return results


def _defaults_for(case: Any, defaults: Mapping[str, Any]) -> Mapping[str, Any]:
    """The defaults a case starts from: its own `issuer` or `admin` replaces the other."""
    if not isinstance(case, dict):
        return defaults
    for mine, theirs in (("issuer", "admin"), ("admin", "issuer")):
        if mine in case and theirs in defaults:
            return {k: v for k, v in defaults.items() if k != theirs}
    return defaults


def _run(
    kind: str,
    fields: Mapping[str, Any],
    mint: PolicyEngine | None,
    gateway: GatewayPolicy | None,
) -> str | None:
    """None when the case holds, else what went wrong."""
    _check_fields(kind, fields)
    expect = fields["expect"]
    if kind == "mint":
        if mint is None:
            raise CaseError("there is no mint policy to test")
        decision = _mint(mint, fields)
    else:
        if gateway is None:
            raise CaseError("there is no gateway policy to test (no gateway/ folder)")
        decision = _gateway(gateway, fields)
    got = "allow" if decision.allowed else "deny"
    if got != expect:
        return f"expected {expect}, got {got}: {decision.detail}"
    if "decided_by" in fields and set(fields["decided_by"]) != set(decision.policies):
        want = ", ".join(fields["decided_by"]) or "no policy (default deny)"
        have = ", ".join(decision.policies) or "no policy (default deny)"
        return f"{got} as expected, but decided by {have}, not {want}"
    return None


def _check_fields(kind: str, fields: Mapping[str, Any]) -> None:
    allowed = _FIELDS[kind]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise CaseError(f"unknown fields: {', '.join(unknown)}")
    for key, value in fields.items():
        want = allowed[key]
        if want is int and (type(value) is not int):
            raise CaseError(f"{key} must be a whole number")
        if want is list and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise CaseError(f"{key} must be a list of strings")
        if want in (str, bool) and type(value) is not want:
            raise CaseError(f"{key} must be a {'string' if want is str else 'boolean'}")
    missing = [k for k in ("name", "expect", *_REQUIRED[kind]) if k not in fields]
    if missing:
        raise CaseError(f"missing fields: {', '.join(missing)}")
    if fields["expect"] not in ("allow", "deny"):
        raise CaseError('expect is "allow" or "deny"')


def _mint(engine: PolicyEngine, fields: Mapping[str, Any]) -> PolicyDecision:
    if fields.get("admin", False):
        if "issuer" in fields:
            raise CaseError("give issuer or admin = true, not both")
        issuer = MintIssuer.admin()
    elif "issuer" in fields:
        if not fields["issuer"]:
            raise CaseError("issuer names a customer")
        issuer = MintIssuer.issuer(fields["issuer"])
    else:
        raise CaseError('say who mints: issuer = "<customer>" or admin = true')
    customer = fields.get("customer", issuer.customer)
    if customer is None:
        raise CaseError("an admin's mint names its customer")
    grant = MintGrant(
        token_id=fields.get("token_id", DEFAULT_TOKEN_ID),
        customer=customer,
        user=fields["user"],
        agent=fields["agent"],
        resources=tuple(fields["resources"]),
        actions=tuple(fields["actions"]),
        purposes=tuple(fields["purposes"]),
        ttl=fields["ttl"],
        audience=tuple(fields.get("audience", ())),
        max_delegations=fields.get("max_delegations"),
    )
    return engine.authorize_mint(issuer, grant, fields.get("now", DEFAULT_NOW))


def _gateway(gateway: GatewayPolicy, fields: Mapping[str, Any]) -> PolicyDecision:
    chain = tuple(fields["chain"])
    if not chain:
        raise CaseError("chain names at least the agent the token was minted for")
    now = fields.get("now", DEFAULT_NOW)
    purpose = fields.get("purpose")
    purposes = fields.get("purposes", [purpose] if purpose else [])
    # The token's own decision, as Verifier.verify would have made it.
    decision = Decision(
        True,
        Reason.OK,
        DEFAULT_TOKEN_ID,
        "test",
        fields["customer"],
        fields["user"],
        chain,
        (),
        tuple(sorted(purposes)),
        None,
        now - fields.get("token_age", 0),
    )
    return gateway.check(decision, fields["resource"], fields["action"], purpose, now)
