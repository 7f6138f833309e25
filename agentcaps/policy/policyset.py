"""Policy files in, one parsed, schema-validated Cedar policy set out, each policy with a stable id.

A policy's id is its `@id("…")` annotation when it has one, else
`<file name>#<n>`, n counting the file's policies from 1. Cedar itself
numbers policies by position in one parse (`policy0`, …), which shifts when a
file is added; our ids survive that, so a denial can name the policy a person
will find. The set is built from Cedar's JSON form under these ids, parsed
once, and reused for every evaluation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from agentcaps.policy.decision import PolicyDecision
from agentcaps.policy.errors import PolicyError
from agentcaps.policy.folder import PolicyFile
from agentcaps.policy.schema import GATEWAY_ACTIONS, PolicyKind, schema_text

# Ids (and file names) stay plain, so that messages quoting them read unambiguously.
_ID = re.compile(r"[A-Za-z0-9_.:/#+-]{1,200}")
_CEDAR_POSITION = re.compile(r"policy(\d+)")
_EVAL_ERROR = re.compile(r"error while evaluating policy `([^`]*)`")


@dataclass(frozen=True, slots=True, eq=False)
class PolicySet:
    """A loaded, validated policy set, ready to evaluate requests; immutable.

    `reads` is which context attributes any policy reads (None: the whole
    context record is used somewhere), so that a cache can leave the others
    out of its key.
    """

    kind: PolicyKind
    source: str
    version: str
    digest: str
    commit: str | None
    files: tuple[PolicyFile, ...]
    ids: tuple[str, ...]
    forbids: frozenset[str]
    actions: frozenset[str]
    reads: frozenset[str] | None
    schema: cedarpy.Schema
    handle: cedarpy.PolicySet

    def decide(self, request: Mapping[str, object], entities: object) -> PolicyDecision:
        """Evaluate one Cedar request; never raises for a deny.

        Cedar skips a policy that fails to evaluate. For a permit that only
        loses an allow; for a forbid it would turn a deny into an allow, so
        here a failing forbid denies (fail closed), and so does any error
        that names no policy.
        """
        result = cedarpy.is_authorized(dict(request), self.handle, entities)  # type: ignore[arg-type]
        diagnostics = result.diagnostics
        errors = tuple(diagnostics.errors)
        if errors:
            failed = [_failed_policy(e) for e in errors]
            unsafe = [p for p in failed if p is None or p in self.forbids]
            if unsafe:
                named = self._ordered(p for p in unsafe if p is not None)
                return PolicyDecision(False, named, self.version, errors)
        return PolicyDecision(
            bool(result.allowed), self._ordered(diagnostics.reasons), self.version, errors
        )

    def _ordered(self, ids: Iterator[str] | Sequence[str]) -> tuple[str, ...]:
        position = {pid: i for i, pid in enumerate(self.ids)}
        return tuple(sorted(set(ids), key=lambda p: position.get(p, len(position))))

    def describe(self) -> dict[str, object]:
        """Facts for status pages and logs."""
        return {
            "kind": self.kind.value,
            "source": self.source,
            "version": self.version,
            "digest": self.digest,
            "commit": self.commit,
            "files": [f.name for f in self.files],
            "policies": len(self.ids),
        }


def _failed_policy(error: str) -> str | None:
    match = _EVAL_ERROR.match(error)
    return match.group(1) if match else None


def version_of(digest: str, commit: str | None) -> str:
    """The version string: the digest, then `@commit` when the folder is in git."""
    return f"{digest}@{commit}" if commit else digest


def load_policy_set(
    files: Sequence[PolicyFile],
    kind: PolicyKind,
    *,
    source: str,
    digest: str,
    commit: str | None = None,
    version: str | None = None,
) -> PolicySet:
    """Parse and validate `files` into a PolicySet.

    Its version is `version` if given, else the digest and commit (`version_of`).

    Raises:
        PolicyError: with every problem found, each naming its file (and
            policy): a file that does not parse, a template, a duplicate or
            unusable id, or a policy the schema rejects (Cedar's messages).
    """
    problems: list[str] = []
    static: dict[str, Any] = {}  # id -> Cedar JSON of the policy, in file order
    per_file: list[tuple[PolicyFile, list[str]]] = []
    for f in files:
        if not _ID.fullmatch(f.name):
            problems.append(
                f"{_where(source, f.name)}: rename it: use only letters, digits and _ . : / # + -"
            )
            continue
        try:
            ids, found = _parse_file(f, static)
        except PolicyError as exc:
            problems.extend(_where(source, m) for m in exc.messages)
            continue
        problems.extend(_where(source, m) for m in found)
        per_file.append((f, ids))

    # Validate what parsed even when something did not: one run shows every problem.
    named = _named_actions(static.values())
    extra = named - set(GATEWAY_ACTIONS) if kind is PolicyKind.GATEWAY else set()
    schema = cedarpy.Schema.from_str(schema_text(kind, extra))
    for f, ids in per_file:
        problems.extend(_where(source, m) for m in _validate_file(f, ids, schema))
    if problems:
        raise PolicyError(*problems)

    document = {"staticPolicies": static, "templates": {}, "templateLinks": []}
    try:
        handle = cedarpy.PolicySet.from_json_str(json.dumps(document))
    except ValueError as exc:  # pragma: no cover - each file parsed on its own already
        raise PolicyError(f"{source}: cannot build the policy set: {exc}") from None
    return PolicySet(
        kind=kind,
        source=source,
        version=version or version_of(digest, commit),
        digest=digest,
        commit=commit,
        files=tuple(files),
        ids=tuple(static),
        forbids=frozenset(pid for pid, p in static.items() if p.get("effect") == "forbid"),
        actions=frozenset(named),
        reads=_context_reads(static.values()),
        schema=schema,
        handle=handle,
    )


def _where(source: str, message: str) -> str:
    """`message` (which starts with a file name) with the folder in front, and on one line."""
    return f"{source}/{message}".replace("\n", " ")


def _parse_file(f: PolicyFile, into: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Parse one file and add its policies to `into` under their ids.

    Returns the ids by position in the file (a refused id keeps its place, so
    that Cedar's positional messages can still be mapped) and the problems.

    Raises:
        PolicyError: the file does not parse, or holds a template.
    """
    try:
        parsed = cedarpy.PolicySet.from_str(f.text)
        est = json.loads(cedarpy.policies_to_json_str(f.text))
    except ValueError as exc:
        raise PolicyError(f"{f.name}: does not parse: {exc}") from None
    if parsed.templates():
        raise PolicyError(
            f"{f.name}: templates (?principal, ?resource) are not supported; write static policies"
        )
    problems: list[str] = []
    ids: list[str] = []
    for cedar_id, policy in sorted(
        est["staticPolicies"].items(), key=lambda item: _position(item[0])
    ):
        n = _position(cedar_id) + 1
        annotated = (policy.get("annotations") or {}).get("id")
        pid = annotated if annotated is not None else f"{f.name}#{n}"
        ids.append(pid)
        if not _ID.fullmatch(pid):
            problems.append(
                f"{f.name}#{n}: @id({pid!r}) is not a usable id: "
                "use 1-200 letters, digits and _ . : / # + -"
            )
        elif pid in into:
            problems.append(f"{f.name}#{n}: the id {pid!r} is used by another policy")
        else:
            into[pid] = policy
    return ids, problems


def _position(cedar_id: str) -> int:
    match = _CEDAR_POSITION.fullmatch(cedar_id)
    if match is None:  # pragma: no cover - Cedar names surface-syntax policies this way
        raise PolicyError(f"unexpected Cedar policy id {cedar_id!r}")
    return int(match.group(1))


def _validate_file(f: PolicyFile, ids: Sequence[str], schema: cedarpy.Schema) -> list[str]:
    """Cedar's schema validation of one file, its messages naming our ids."""
    result = cedarpy.validate_policies(f.text, schema)
    if result.validation_passed:
        return []

    def ours(match: re.Match[str]) -> str:
        n = int(match.group(1))
        return ids[n] if n < len(ids) else match.group(0)

    out = []
    for error in result.errors:
        message = _CEDAR_POSITION.sub(ours, str(error.error))
        where = _CEDAR_POSITION.sub(ours, error.policy_id) if error.policy_id else ""
        if where and f"`{where}`" not in message:
            message = f"policy `{where}`: {message}"
        out.append(f"{f.name}: {message}")
    return out


def _walk(node: object) -> Iterator[object]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _named_actions(policies: Any) -> set[str]:
    """Every Action::"…" the policies name, in their scope or their conditions."""
    names = set()
    for node in _walk(list(policies)):
        if isinstance(node, dict):
            entity = node.get("__entity", node)
            if isinstance(entity, dict) and entity.get("type") == "Action" and "id" in entity:
                names.add(str(entity["id"]))
    return names


_CONTEXT = {"Var": "context"}


def _context_reads(policies: Any) -> frozenset[str] | None:
    """The context attributes read as `context.x` or `context has x`; None if `context` is used whole."""
    reads: set[str] = set()
    attribute_uses = 0
    for node in _walk(list(policies)):
        if isinstance(node, dict):
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and inner.get("left") == _CONTEXT:
                    reads.add(str(inner.get("attr")))
                    attribute_uses += 1
    total_uses = sum(1 for node in _walk(list(policies)) if node == _CONTEXT)
    return frozenset(reads) if total_uses == attribute_uses else None
