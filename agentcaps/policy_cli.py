"""`agentcaps policy …`: print the schema and the running policy, validate, test and format policy folders.

`register(subparsers)` adds the command group to the `agentcaps` parser; each
subcommand sets `func`, which `agentcaps.cli.main` calls and whose return
value is the exit status: 0 success, 1 failure (policies that do not
validate, a failing test case, files `fmt --check` would change), 2 usage.
Failures are `agentcaps: error: …` lines on stderr, one per problem, with
Cedar's own messages. The policy layer (and cedarpy) loads only when a
policy command runs.

A policy folder DIR holds the mint policies (`DIR/*.cedar`), optionally the
gateway policies (`DIR/gateway/*.cedar`, or `--gateway-dir`) and the test
cases (`DIR/tests/*.toml`). See docs/policy.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentcaps.policy import PolicyStore

PROG = "agentcaps"


def _err(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _errors(messages: Iterable[str]) -> int:
    for message in messages:
        _err(message.replace("\n", " "))
    return 1


def _folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path


def _max_ttl() -> int:
    from agentcaps.config import Settings

    return Settings.from_env().max_ttl


def add_policy_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--policy-dir DIR` (default AGENTCAPS_POLICY_DIR), for `serve`, `mint` and `policy show`."""
    parser.add_argument(
        "--policy-dir",
        metavar="DIR",
        help="a folder of *.cedar mint policies (default: AGENTCAPS_POLICY_DIR, "
        "else the built-in policy)",
    )


# -- commands ------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    from agentcaps.policy.schema import MINT_SCHEMA, gateway_schema

    sys.stdout.write(gateway_schema() if args.gateway else MINT_SCHEMA)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from agentcaps.config import Settings
    from agentcaps.policy import PolicyEngine, PolicyError

    directory = None if args.default else (args.policy_dir or Settings.from_env().policy_dir)
    try:
        engine = (
            PolicyEngine.from_dir(directory)
            if directory is not None
            else PolicyEngine.default(_max_ttl())
        )
    except PolicyError as exc:
        return _errors(exc.messages)
    policies = engine.store.current
    if directory is None:
        print(f"// the built-in mint policy, version {policies.version}")
    else:
        print(f"// the mint policy of {policies.source}, version {policies.version}")
    for f in policies.files:
        if directory is not None:
            print(f"\n// ---- {f.name}")
        sys.stdout.write(f.text if f.text.endswith("\n") or not f.text else f.text + "\n")
    return 0


def _load(directory: Path, gateway_dir: Path | None) -> tuple[PolicyStore, PolicyStore | None]:
    """The mint store of DIR and the gateway store (given, or DIR/gateway if present)."""
    from agentcaps.policy import PolicyKind, PolicyStore
    from agentcaps.policy.deployment import gateway_dir_for
    from agentcaps.policy.errors import PolicyError

    problems: list[str] = []
    mint = gateway = None
    try:
        mint = PolicyStore.from_dir(directory, PolicyKind.MINT)
    except PolicyError as exc:
        problems.extend(exc.messages)
    where = gateway_dir_for(directory, gateway_dir)
    if where is not None:
        try:
            gateway = PolicyStore.from_dir(where, PolicyKind.GATEWAY)
        except PolicyError as exc:
            problems.extend(exc.messages)
    if problems:
        raise PolicyError(*problems)
    assert mint is not None
    return mint, gateway


def _describe(label: str, store: PolicyStore) -> str:
    policies = store.current
    files = len(policies.files)
    return (
        f"ok  {label}: {len(policies.ids)} policies in {files} file{'s' * (files != 1)}, "
        f"version {policies.version} ({policies.source})"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from agentcaps.policy import PolicyError
    from agentcaps.policy.schema import GATEWAY_ACTIONS

    try:
        mint, gateway = _load(args.dir, args.gateway_dir)
    except PolicyError as exc:
        return _errors(exc.messages)
    print(_describe("mint policies", mint))
    if gateway is not None:
        print(_describe("gateway policies", gateway))
        extra = sorted(gateway.current.actions - set(GATEWAY_ACTIONS))
        if extra:
            # Declared so that they validate; a misspelt action is caught by tests, not here.
            names = ", ".join(extra)
            print(f"note: gateway policies name actions besides read, write, delete: {names}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from agentcaps.policy import GatewayPolicy, PolicyEngine, PolicyError
    from agentcaps.policy.cases import case_files, run_case_files

    files = case_files(args.dir)
    if not files:
        _err(f"no test cases: {args.dir / 'tests'} holds no *.toml files")
        return 1
    try:
        mint, gateway = _load(args.dir, args.gateway_dir)
    except PolicyError as exc:
        return _errors(exc.messages)
    results = run_case_files(
        files, PolicyEngine(mint), GatewayPolicy(gateway) if gateway is not None else None
    )
    for result in results:
        print(result.line())
    failed = sum(not r.passed for r in results)
    versions = f"mint policy {mint.version}" + (
        f", gateway policy {gateway.version}" if gateway is not None else ""
    )
    print(f"{len(results) - failed} passed, {failed} failed ({versions})")
    return 1 if failed else 0


def cmd_fmt(args: argparse.Namespace) -> int:
    from agentcaps.policy import PolicyError
    from agentcaps.policy.deployment import gateway_dir_for
    from agentcaps.policy.fmt import format_folder

    folders = [args.dir]
    gateway = gateway_dir_for(args.dir, None)
    if gateway is not None:
        folders.append(gateway)
    changed: list[Path] = []
    try:
        # Check every folder before writing any.
        for folder in folders:
            format_folder(folder, write=False)
        for folder in folders:
            changed += format_folder(folder, write=not args.check)
    except PolicyError as exc:
        return _errors(exc.messages)
    verb = "would reformat" if args.check else "reformatted"
    for path in changed:
        print(f"{verb} {path}")
    if args.check and changed:
        print(f"{len(changed)} file{'s' * (len(changed) != 1)} would be reformatted")
        return 1
    if not changed:
        print("all policy files are formatted")
    return 0


# -- the parser ----------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `policy` command group to `subparsers` (the `agentcaps` parser's); return it."""

    def command(group: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    policy = command(
        subparsers,
        "policy",
        "Cedar policies: show the schema and the running policy; validate, test, format",
        _missing_subcommand,
    )
    commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    p = command(
        commands, "schema", "print the Cedar schema policies are written against", cmd_schema
    )
    p.add_argument(
        "--gateway", action="store_true", help="the gateway policy's schema (default: mint's)"
    )

    p = command(
        commands,
        "show",
        "print the mint policy in force: the --policy-dir folder's, else the built-in one",
        cmd_show,
    )
    add_policy_dir_argument(p)
    p.add_argument(
        "--default",
        action="store_true",
        help="print the built-in policy (for AGENTCAPS_MAX_TTL) whatever is configured",
    )

    gateway_help = "the gateway policy folder (default: DIR/gateway when it exists)"
    p = command(
        commands,
        "validate",
        "parse the policies of DIR and validate them against the schema; exit 1 if any fails",
        cmd_validate,
    )
    p.add_argument("dir", metavar="DIR", type=_folder, help="a policy folder")
    p.add_argument("--gateway-dir", metavar="DIR", type=_folder, help=gateway_help)

    p = command(
        commands,
        "test",
        "run the test cases of DIR/tests/*.toml; exit 1 if any fails",
        cmd_test,
    )
    p.add_argument("dir", metavar="DIR", type=_folder, help="a policy folder")
    p.add_argument("--gateway-dir", metavar="DIR", type=_folder, help=gateway_help)

    p = command(
        commands,
        "fmt",
        "format the policy files of DIR (and DIR/gateway) as Cedar does",
        cmd_fmt,
    )
    p.add_argument("dir", metavar="DIR", type=_folder, help="a policy folder")
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if a file is not formatted",
    )
    return policy


def _missing_subcommand(args: argparse.Namespace) -> int:  # pragma: no cover
    _err("a subcommand is required (see `agentcaps policy --help`)")
    return 2
