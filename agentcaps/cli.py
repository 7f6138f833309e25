"""The `agentcaps` command: a thin shell over the library, for operators and agents.

Offline commands (inspect, attenuate, master-key, demo) need no store. Store
commands (keys, mint, verify, revoke, revocations, admin-token) open the store
named by `--redis`, else AGENTCAPS_REDIS_URL, else memory:// (which keeps
nothing); mint, verify and revoke go through a running service instead with
`--url`. `serve` runs the service. Results go to stdout as JSON or a bare
token; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import agentcaps
from agentcaps import policy_cli
from agentcaps.config import MEMORY_URL, Settings, new_master_key_text, redact_url
from agentcaps.errors import (
    AgentCapsError,
    ConfigError,
    InvalidToken,
    NotAllowed,
    NothingPersistsWarning,
    RevocationStateLost,
    StoreUnavailable,
)
from agentcaps.revocation import Revocation, RevocationKind, revocation_for
from agentcaps.wire import mask_tokens

if TYPE_CHECKING:
    from agentcaps.audit import AuditEvent, AuditSink
    from agentcaps.client import ServiceClient
    from agentcaps.keys import RootKey
    from agentcaps.stores.doctor import Check
    from agentcaps.stores.redis import Stores

PROG = "agentcaps"
# A token is at most 16 KiB by default; anything far bigger on stdin is not one.
_MAX_STDIN_BYTES = 1 << 20

EPILOG = """\
exit status: 0 success (verify: allowed), 1 failure (verify: denied),
2 usage error, 130 interrupted.

Store commands use --redis URL, else AGENTCAPS_REDIS_URL, else memory://
(in-process: nothing persists). A real Redis needs AGENTCAPS_MASTER_KEY
(see `agentcaps master-key`). A TOKEN of - is read from stdin, which keeps it
out of the process list. With --url, mint and revoke send the admin or issuer
token of AGENTCAPS_TOKEN (or --token-file) to the service.
"""

# A bootstrap admin token on memory:// lives as long as the process could.
_BOOTSTRAP_TTL = 24 * 3600
_DEFAULT_PORT = 8080


class UsageError(Exception):
    """The command line itself is wrong: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line (`agentcaps: error: …`) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# A token someone passed where something else belongs ends up quoted in the
# message about it (argparse quotes the bad value): never print it back.


def _err(message: str) -> None:
    print(f"{PROG}: error: {mask_tokens(message)}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {mask_tokens(message)}", file=sys.stderr)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# -- argument types ------------------------------------------------------------


def _int_type(low: int, high: int | None, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"{low}-{high}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({bound})")
        return value

    return parse


def _seconds_type(text: str) -> float:
    """An argparse type: a finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-86400)")
    return value


_positive_int = _int_type(1, None, "a whole number")
_count = _int_type(0, None, "a whole number")
_port = _int_type(0, 65535, "a port number")


def _aware(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-01T10:00:00Z"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z for UTC or an offset such as +02:00"
        )
    return when


def _time_floor(text: str) -> int:
    """An ISO 8601 time as unix seconds, rounded down (an expiry only gets earlier)."""
    return math.floor(_aware(text).timestamp())


def _time_ceil(text: str) -> int:
    """An ISO 8601 time as unix seconds, rounded up (a start only gets later)."""
    return math.ceil(_aware(text).timestamp())


def _read_token(text: str) -> str:
    """TOKEN as given, or read from stdin for `-` (surrounding whitespace stripped)."""
    if text != "-":
        return text
    data = sys.stdin.buffer.read(_MAX_STDIN_BYTES + 1)
    if len(data) > _MAX_STDIN_BYTES:
        raise InvalidToken("the input on stdin is far too large to be a token")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidToken("the input on stdin is not ASCII") from None
    if not token:
        raise UsageError("TOKEN is - but stdin is empty")
    return token


def _who() -> str:
    """Who made a revocation, for the audit trail: the operating-system user."""
    try:
        return "cli:" + getpass.getuser()
    except (OSError, KeyError, ImportError):  # no user name in this environment
        return "cli"


# -- stores --------------------------------------------------------------------


def _store_url(args: argparse.Namespace) -> str:
    """The store a store command opens: --redis, else AGENTCAPS_REDIS_URL, else memory://."""
    return str(args.redis or Settings.from_env().url)


@contextlib.contextmanager
def _open_stores(args: argparse.Namespace) -> Iterator[Stores]:
    """The stores of --redis / AGENTCAPS_REDIS_URL / memory://, in direct mode, closed after."""

    settings = Settings.from_env()
    url = args.redis or settings.url
    if url == MEMORY_URL:
        _warn(
            "no store configured, using memory://: it lives in this process only, so it holds "
            "no keys or revocations made elsewhere and keeps nothing after this command "
            "(set AGENTCAPS_REDIS_URL or pass --redis URL)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingPersistsWarning)
        # Direct mode: one command, one answer; a replica would only add a load.
        stores = agentcaps.connect(url, settings=settings, revocation_mode="direct")
    try:
        if not stores.memory:
            stores.keys.check_master_key()
        yield stores
    except RevocationStateLost:
        raise
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{exc} at {redact_url(url)}") from None
    finally:
        stores.close()


@contextlib.contextmanager
def _recording(stores: Stores) -> Iterator[AuditSink | None]:
    """The deployment's audit recorder for one command, flushed when it ends (none on memory://)."""
    if stores.memory:
        yield None
        return
    from agentcaps.stores.audit import open_audit

    settings = stores.settings
    if settings.audit_writer is None:
        # A command records an event or two and ends: a writer process of
        # its own would cost more than it spares.
        settings = dataclasses.replace(settings, audit_writer="thread")
    trail = open_audit(stores, settings=settings)
    try:
        yield trail.recorder
    finally:
        trail.close()


def _record(recorder: AuditSink | None, event: AuditEvent) -> None:
    if recorder is not None:
        recorder.record(event)


def _store_command(
    handler: Callable[[argparse.Namespace, Stores], int | None],
    check: Callable[[argparse.Namespace], None] | None = None,
    *,
    remote: Callable[[argparse.Namespace, ServiceClient], int | None] | None = None,
) -> Callable[[argparse.Namespace], int | None]:
    """`handler` run with the stores open; `check` vets the arguments before connecting.

    With `remote`, `--url` runs that instead, through the service.
    """

    def run(args: argparse.Namespace) -> int | None:
        if check is not None:
            check(args)
        if remote is not None and args.url is not None:
            if args.redis is not None:
                raise UsageError("give --url (the service) or --redis (the store), not both")
            from agentcaps.client import ServiceClient

            with ServiceClient(args.url, _credential(args)) as client:
                return remote(args, client)
        with _open_stores(args) as stores:
            return handler(args, stores)

    return run


def _credential(args: argparse.Namespace) -> str | None:
    """The bearer token for --url: --token-file, else AGENTCAPS_TOKEN, else none."""
    if args.token_file is not None:
        try:
            with open(args.token_file, "rb") as f:
                data = f.read(_MAX_STDIN_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.token_file}: {exc.strerror}") from None
        try:
            token = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InvalidToken(f"{args.token_file} does not hold a token") from None
        if not token or len(data) > _MAX_STDIN_BYTES:
            raise InvalidToken(f"{args.token_file} does not hold a token")
        return token
    return os.environ.get("AGENTCAPS_TOKEN") or None


# -- offline commands ----------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> None:
    _print_json(agentcaps.inspect(_read_token(args.token)))


def cmd_attenuate(args: argparse.Namespace) -> None:
    options = (
        args.resource,
        args.action,
        args.purpose,
        args.ttl,
        args.expires_at,
        args.delegate_to,
        args.audience,
        args.max_delegations,
    )
    if all(option is None for option in options):
        raise UsageError(
            "attenuate needs at least one option to add, such as --resource or --delegate-to"
            " (see `agentcaps attenuate --help`)"
        )
    print(
        agentcaps.attenuate(
            _read_token(args.token),
            resources=args.resource,
            actions=args.action,
            purposes=args.purpose,
            ttl=args.ttl,
            expires_at=args.expires_at,
            delegate_to=args.delegate_to,
            audience=args.audience,
            max_delegations=args.max_delegations,
        )
    )


def cmd_master_key(args: argparse.Namespace) -> None:
    print(new_master_key_text())


def cmd_demo(args: argparse.Namespace) -> int:
    from agentcaps import demo

    return demo.run()


def cmd_doctor(args: argparse.Namespace) -> int:
    from agentcaps.stores.doctor import Check, Status, diagnose

    checks: list[Check] = []
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        checks.append(
            Check("settings", Status.FAIL, f"the AGENTCAPS_* settings are unusable: {exc}")
        )
        settings = Settings(redis_url=os.environ.get("AGENTCAPS_REDIS_URL") or None)
    url = args.url or args.redis or settings.url
    if url == MEMORY_URL:
        checks.append(
            Check(
                "store",
                Status.FAIL,
                "memory:// is the in-process default: keys and revocations die with the "
                "process. doctor is meant for a real Redis",
                "pass a redis:// URL or set AGENTCAPS_REDIS_URL",
            )
        )
    else:
        checks.extend(
            diagnose(
                url,
                timeout=max(settings.redis_timeout, 1.0),
                wait_replicas=settings.wait_replicas,
            )
        )
    print(f"{PROG} doctor: {redact_url(url)}")
    return _report(checks)


def _report(checks: Sequence[Check]) -> int:
    from agentcaps.stores.doctor import Status

    labels = {Status.OK: "ok  ", Status.WARN: "warn", Status.FAIL: "FAIL"}
    width = max(len(c.name) for c in checks)
    for check in checks:
        line = f"  {labels[check.status]}  {check.name:<{width}}  {check.finding}"
        if check.fix and check.status is not Status.OK:
            line += f". Fix: {check.fix}"
        elif check.fix:
            line += f"; {check.fix}"
        print(line)
    failed = sum(c.status is Status.FAIL for c in checks)
    warned = sum(c.status is Status.WARN for c in checks)
    if failed:
        print(f"{failed} check(s) failed: revocations are not safe here until they are fixed")
        return 1
    if warned:
        print(f"passed with {warned} warning(s)")
    else:
        print("all checks passed")
    return 0


# -- store commands ------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace, stores: Stores) -> None:
    from agentcaps.audit import key_event

    with _recording(stores) as recorder:
        key = stores.keys.create(args.customer)
        _record(recorder, key_event(time.time(), "create", key, caller=_who()))
    _print_json(key.to_dict())


def cmd_keys_list(args: argparse.Namespace, stores: Stores) -> None:
    _print_json([key.to_dict() for key in stores.keys.list()])


def cmd_keys_rotate(args: argparse.Namespace, stores: Stores) -> None:
    from agentcaps.audit import key_event

    with _recording(stores) as recorder:
        new = stores.keys.rotate(args.kid)
        old = stores.keys.get(args.kid) or new
        _record(
            recorder,
            key_event(time.time(), "rotate", old, caller=_who(), detail=f"replaced by {new.kid}"),
        )
    _print_json(new.to_dict())


def cmd_keys_revoke(args: argparse.Namespace, stores: Stores) -> None:
    with _recording(stores) as recorder:
        key = _revoke_key(stores, recorder, args.kid, args.reason)[0]
    _print_json(key.to_dict())


def _revoke_key(
    stores: Stores, recorder: AuditSink | None, kid: str, reason: str
) -> tuple[RootKey, Revocation]:
    from agentcaps.audit import key_revocation_events

    key, revocation = stores.keys.revoke_recorded(kid, reason=reason, by=_who())
    for recorded in key_revocation_events(time.time(), key, revocation, caller=_who()):
        _record(recorder, recorded)
    return key, revocation


def cmd_mint(args: argparse.Namespace, stores: Stores) -> None:
    # The operator's path: an admin's mint, decided by the same mint policy as the service's.
    from agentcaps.audit import mint_event
    from agentcaps.policy import MintIssuer, Policies, PolicyDenied, mint_with_policy

    policies = Policies.from_settings(stores.settings, policy_dir=args.policy_dir)
    grant: dict[str, Any] = {
        "customer": args.customer,
        "user": args.user,
        "agent": args.agent,
        "resources": args.resource,
        "actions": args.action,
        "purposes": args.purpose,
        "ttl": args.ttl,
        "audience": args.audience,
        "max_delegations": args.max_delegations,
    }
    with _recording(stores) as recorder:
        try:
            minted, decision = mint_with_policy(
                stores.minter(), policies.engine, MintIssuer.admin(),
                not_before=args.not_before, **grant,
            )  # fmt: skip
        except PolicyDenied as denied:
            _record(
                recorder,
                mint_event(
                    time.time(), caller=_who(), reason=denied.reason.value,
                    policy_version=denied.version, policies=denied.policies, **grant,
                ),
            )  # fmt: skip
            raise
        _record(
            recorder,
            mint_event(
                time.time(), caller=_who(), minted=minted, policy_version=decision.version,
                policies=decision.policies, **grant,
            ),
        )  # fmt: skip
    if args.json:
        _print_json(minted.to_dict())
    else:
        print(minted.token)


def remote_mint(args: argparse.Namespace, client: ServiceClient) -> None:
    minted = client.mint(
        customer=args.customer,
        user=args.user,
        agent=args.agent,
        resources=args.resource,
        actions=args.action,
        purposes=args.purpose,
        ttl=args.ttl,
        audience=args.audience,
        max_delegations=args.max_delegations,
        not_before=args.not_before,
    )
    if args.json:
        _print_json(minted)
    else:
        print(minted["token"])


def cmd_verify(args: argparse.Namespace, stores: Stores) -> int:
    token = _read_token(args.token)
    with _recording(stores) as recorder:
        decision = stores.verifier(audience=args.audience, audit=recorder).verify(
            token,
            resource=args.resource,
            action=args.action,
            purpose=args.purpose,
            actor=args.actor,
        )
    _print_json(decision.to_dict())
    return 0 if decision.allowed else 1


def remote_verify(args: argparse.Namespace, client: ServiceClient) -> int:
    if args.audience is not None:
        raise UsageError("--audience is for local verification; the service has its own")
    decision = client.verify(
        _read_token(args.token),
        resource=args.resource,
        action=args.action,
        purpose=args.purpose,
        actor=args.actor,
    )
    _print_json(decision)
    return 0 if decision.get("allowed") is True else 1


def check_revoke(args: argparse.Namespace) -> None:
    if args.user is not None and args.customer is None:
        raise UsageError("--user goes with --customer (see `agentcaps revoke --help`)")
    others = (args.token, args.token_id, args.delegation_id, args.key)
    if args.agent is not None and (args.user is not None or any(o is not None for o in others)):
        raise UsageError("--agent goes alone, or with --customer (see `agentcaps revoke --help`)")
    if args.agent is None and args.customer is None and all(o is None for o in others):
        raise UsageError(
            "say what to revoke: --token, --token-id, --delegation-id, --key, --customer or --agent"
        )


def cmd_revoke(args: argparse.Namespace, stores: Stores) -> None:
    with _recording(stores) as recorder:
        _revoke(args, stores, recorder)


def _revoke(args: argparse.Namespace, stores: Stores, recorder: AuditSink | None) -> None:
    from agentcaps.audit import revocation_event

    reason, by, now = args.reason, _who(), int(time.time())
    target = None
    if args.key is not None:
        _print_json(_revoke_key(stores, recorder, args.key, reason)[1].to_dict())
        return
    if args.token is not None:
        token = _read_token(args.token)
        found = stores.verifier().authenticate(token)
        target = found if found.allowed else None  # recorded with its provenance when authentic
        revocation = revocation_for(
            agentcaps.decode_unverified(token),
            revoked_at=now,
            max_lifetime=stores.settings.max_lifetime,
            reason=reason,
            by=by,
        )
    else:
        subject: tuple[str, ...]
        if args.token_id is not None:
            kind, subject = RevocationKind.TOKEN, (args.token_id.strip().lower(),)
        elif args.delegation_id is not None:
            kind, subject = RevocationKind.DELEGATION, (args.delegation_id.strip().lower(),)
        elif args.user is not None:
            kind, subject = RevocationKind.USER, (args.customer, args.user)
        elif args.customer is not None and args.agent is not None:
            kind, subject = RevocationKind.CUSTOMER_AGENT, (args.customer, args.agent)
        elif args.customer is not None:
            kind, subject = RevocationKind.CUSTOMER, (args.customer,)
        else:
            kind, subject = RevocationKind.AGENT, (args.agent,)
        # No expiry given: the store keeps it as long as any token can live.
        revocation = Revocation(kind, subject, now, None, reason, by)
    stored_revocation = stores.revocations.revoke(revocation)
    _record(recorder, revocation_event(time.time(), stored_revocation, target=target))
    _print_json(stored_revocation.to_dict())


def remote_revoke(args: argparse.Namespace, client: ServiceClient) -> None:
    fields: dict[str, Any] = {"reason": args.reason or None}
    if args.token is not None:
        # With no credential, the token revokes itself.
        _print_json(client.revoke(token=_read_token(args.token), **fields))
        return
    fields.update(
        token_id=args.token_id and args.token_id.strip().lower(),
        delegation_id=args.delegation_id and args.delegation_id.strip().lower(),
        key_id=args.key,
        customer=args.customer,
        user=args.user,
        agent=args.agent,
    )
    _print_json(client.revoke(**fields))


def cmd_revocations_list(args: argparse.Namespace, stores: Stores) -> None:
    _print_json([r.to_dict() for r in stores.store.list()])


def cmd_revocations_recover(args: argparse.Namespace, stores: Stores) -> None:
    epoch = stores.store.recover()
    print(
        f"Started a new revocation epoch ({epoch[:8]}…): verifiers stop failing closed "
        "at their next check.\n"
        "The revocations that were lost stay lost: tokens they revoked verify again until "
        "they expire.\n"
        "Rotate (`agentcaps keys rotate KID`) or revoke (`agentcaps keys revoke KID`) the root "
        "keys whose tokens must not come back, and revoke again what you know was revoked. "
        "Root keys lost with the data are unknown to every verifier from now on: their "
        "tokens are denied (unknown_key), and new tokens get new keys."
    )


# -- the audit trail -------------------------------------------------------------

_AUDIT_PAGE = 1000  # events per page when gathering all of a token's
_AUDIT_FILTERS = ("token_id", "delegation_id", "customer", "user", "agent", "kind")


def _print_line(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False), flush=True)


def _hex_id(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not an id (32 hex characters)")
    return value


def _audit_query(args: argparse.Namespace, now: float) -> Any:
    from agentcaps.audit import AuditKind, AuditQuery, parse_time

    def when(text: str | None, name: str) -> float | None:
        if text is None:
            return None
        try:
            return parse_time(text, now)
        except ValueError as exc:
            raise UsageError(f"--{name}: {exc}") from None

    return AuditQuery(
        token_id=args.token_id,
        delegation_id=args.delegation_id,
        customer=args.customer,
        user=args.user,
        agent=args.agent,
        kind=AuditKind(args.kind) if args.kind else None,
        since=when(args.since, "since"),
        until=when(args.until, "until"),
        limit=args.limit,
    )


def cmd_audit(args: argparse.Namespace, stores: Stores) -> int:
    from agentcaps.audit import MAX_LIMIT
    from agentcaps.stores.audit import open_audit_log

    query = _audit_query(args, time.time())
    log, close = open_audit_log(stores)
    try:
        page = log.query(query)
        for event in page.events:
            _print_line(event.to_dict())
        if not page.complete:
            _warn("the query read as many entries as one query may: narrow it (--since)")
        cursor = page.after
        while args.follow:
            time.sleep(args.interval)
            page = log.query(dataclasses.replace(query, limit=MAX_LIMIT), after=cursor)
            for event in page.events:
                _print_line(event.to_dict())
            cursor = page.after or cursor
    finally:
        close()
    return 0


def remote_audit(args: argparse.Namespace, client: ServiceClient) -> int:
    from agentcaps.audit import MAX_LIMIT

    params: dict[str, Any] = {name: getattr(args, name) for name in _AUDIT_FILTERS}
    params.update(since=args.since, until=args.until)
    page = client.audit(**params, limit=args.limit)
    for view in page["events"]:
        _print_line(view)
    if not page.get("complete", True):
        _warn("the query read as many entries as one query may: narrow it (--since)")
    cursor = page.get("after")
    while args.follow:
        time.sleep(args.interval)
        page = client.audit(**params, limit=MAX_LIMIT, after=cursor)
        for view in page["events"]:
            _print_line(view)
        cursor = page.get("after") or cursor
    return 0


# audit verify's exit code for a trail without a single event: not a break (1),
# not an all-clear (0); a new deployment, or the wrong store.
NOTHING_CHECKED = 3


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the chains of the stream (or of a JSON-lines copy); exit 1 naming the first break, 3 with no events."""
    from agentcaps.audit import ChainReport, check_chains

    report: ChainReport
    if getattr(args, "url", None) is not None:
        # A false all-clear is the worst answer this command can give: the
        # service shows no one every writer's chain, so there is nothing to
        # check through it.
        raise UsageError(
            "audit verify reads the trail itself (AGENTCAPS_REDIS_URL or --redis, or --jsonl "
            "FILE), not through the service: drop --url"
        )
    if args.jsonl is None and _store_url(args) == MEMORY_URL:
        raise UsageError(
            "audit verify needs the store the trail is in (AGENTCAPS_REDIS_URL or --redis): "
            "memory:// would be this command's own, empty one"
        )
    if args.jsonl is not None:
        from agentcaps.stores.jsonl import read_jsonl

        if args.redis is not None:
            raise UsageError("give --jsonl FILE or --redis URL, not both")
        try:
            # A copy may have been rotated: it may start anywhere in a chain.
            report = check_chains(read_jsonl(args.jsonl), None, trimmed=True)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.jsonl}: {exc.strerror}") from None
        where = args.jsonl
    else:
        from agentcaps.stores.audit import open_audit_log

        with _open_stores(args) as stores:
            log, close = open_audit_log(stores)
            try:
                report = log.check()
            finally:
                close()
            where = redact_url(stores.url)
    summary = f"{report.checked} event(s) from {len(report.writers)} writer(s) in {where}"
    for note in report.notes[:20]:
        print(f"  note: {note}")
    if report.ok and not report.checked and not report.writers:
        # The wrong database, or a trail not written yet: either way nothing
        # was checked, which must not read as "every chain holds".
        print(f"{PROG} audit verify: no audit events in {where}: nothing was checked")
        return NOTHING_CHECKED
    if report.ok:
        print(f"{PROG} audit verify: {summary}: every chain holds")
        return 0
    first = report.breaks[0]
    print(f"{PROG} audit verify: {summary}: BROKEN")
    entry = f" (entry {first.entry})" if first.entry else ""
    print(f"  first break: event {first.event}{entry}: {first.problem}")
    for other in report.breaks[1:10]:
        entry = f" (entry {other.entry})" if other.entry else ""
        print(f"  also: event {other.event}{entry}: {other.problem}")
    if len(report.breaks) > 10:
        print(f"  … and {len(report.breaks) - 10} more")
    return 1


# One page of a trace's query: (each event's id, the event), and the cursor to older ones.
_TracePage = tuple[list[tuple[str, "AuditEvent"]], str | None]


def _gather(fetch: Callable[[dict[str, str], str | None], _TracePage],
            token_id: str) -> list[AuditEvent]:  # fmt: skip
    """Every event naming `token_id`, then every event naming a delegation id they show."""
    found: dict[str, AuditEvent] = {}

    def pages(params: dict[str, str]) -> None:
        before: str | None = None
        while True:
            events, before = fetch(params, before)
            for name, event in events:
                found.setdefault(name, event)
            if before is None:
                return

    pages({"token_id": token_id})
    delegations = {d for e in list(found.values()) for d in e.delegation_ids}
    for delegation_id in sorted(delegations):
        pages({"delegation_id": delegation_id})
    return list(found.values())


def _show_trace(args: argparse.Namespace, events: list[AuditEvent]) -> int:
    from agentcaps.trace import build_trace, render, to_dict

    if not events:
        _err(f"no audit events name token {args.token_id} (or they are beyond retention)")
        return 1
    trace = build_trace(args.token_id, events)
    if args.json:
        _print_json(to_dict(trace))
    else:
        print(render(trace))
    return 0


def cmd_audit_trace(args: argparse.Namespace, stores: Stores) -> int:
    from agentcaps.audit import AuditQuery
    from agentcaps.stores.audit import open_audit_log

    log, close = open_audit_log(stores)

    def fetch(params: dict[str, str], before: str | None) -> _TracePage:
        page = log.query(AuditQuery(**params, limit=_AUDIT_PAGE), before=before)  # type: ignore[arg-type]
        if not page.complete:
            _warn("a query stopped at its scan cap: older events may be missing from the trace")
        return [(event.id, event) for event in page.events], page.before

    try:
        return _show_trace(args, _gather(fetch, args.token_id))
    finally:
        close()


def remote_audit_trace(args: argparse.Namespace, client: ServiceClient) -> int:
    from agentcaps.audit import AuditEvent

    def fetch(params: dict[str, str], before: str | None) -> _TracePage:
        # An issuer's events carry an opaque id and no writer: name them by the id.
        page = client.audit(**params, limit=_AUDIT_PAGE, before=before)
        events = [(view["id"], AuditEvent.from_dict(view)) for view in page["events"]]
        return events, page.get("before")

    return _show_trace(args, _gather(fetch, args.token_id))


# -- the service ---------------------------------------------------------------


def _log_config(log_format: str = "json") -> dict[str, object]:
    """uvicorn's logging, plus the service's own lines (uvicorn's access log is off: it logs queries).

    With `json` (AGENTCAPS_LOG_FORMAT), agentcaps' lines are one JSON object
    each, with the request id of the request they belong to.
    """
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    handler = "default"
    if log_format == "json":
        config["formatters"]["agentcaps_json"] = {"()": "agentcaps.http.logs.JsonFormatter"}
        config["handlers"]["agentcaps"] = {
            "formatter": "agentcaps_json",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        }
        handler = "agentcaps"
    config["loggers"]["agentcaps"] = {
        "handlers": [handler],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _banner(lines: Sequence[str]) -> None:
    width = max(len(line) for line in lines)
    rule = "!" * (width + 4)
    print(rule, file=sys.stderr)
    for line in lines:
        print(f"! {line:<{width}} !", file=sys.stderr)
    print(rule, file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agentcaps.http.app import create_app, open_stores
    from agentcaps.http.rules import Rules
    from agentcaps.policy import Policies
    from agentcaps.service_tokens import mint_admin_token

    settings = Settings.from_env()
    if args.policy_dir:
        settings = dataclasses.replace(settings, policy_dir=args.policy_dir)
        os.environ["AGENTCAPS_POLICY_DIR"] = args.policy_dir  # for workers, which read it
    if settings.routes_file:
        Rules.load(settings.routes_file)  # a bad rules file stops us here, not in a worker
    policies = Policies.from_settings(settings)  # so do policies that do not load

    uvicorn_options: dict[str, Any] = {
        "access_log": False,  # it would log query strings; the app logs requests itself
        "log_config": _log_config(settings.log_format),
        "server_header": False,
    }

    def run(app: object) -> None:
        uvicorn.run(app, host=args.host, port=args.port, **uvicorn_options)  # type: ignore[arg-type]

    if settings.url == MEMORY_URL:
        if args.workers > 1:
            raise UsageError(
                "--workers above 1 needs AGENTCAPS_REDIS_URL: on memory:// each worker would "
                "have its own keys and revocations, and tokens minted by one would fail at another"
            )
        stores = open_stores(settings)
        try:
            admin = mint_admin_token(
                stores.minter(max_ttl=settings.max_lifetime),
                ttl=min(_BOOTSTRAP_TTL, settings.max_lifetime),
            )
            _banner(
                [
                    "agentcaps is serving on memory:// (the embedded default): NOTHING PERSISTS.",
                    "Keys, tokens and revocations live in this process and die with it.",
                    "For a real deployment set AGENTCAPS_REDIS_URL and AGENTCAPS_MASTER_KEY.",
                ]
            )
            expires = (
                datetime.fromtimestamp(admin.expires_at).astimezone().isoformat(timespec="minutes")
            )
            print(
                f"{PROG}: bootstrap admin token (valid in this process only, until {expires}):",
                file=sys.stderr,
            )
            print(admin.token, file=sys.stderr, flush=True)
            run(create_app(settings, stores, policies=policies))
        finally:
            stores.close()
        return 0
    # A real deployment: a wrong master key or an unreachable Redis stops us before we listen.
    try:
        open_stores(dataclasses.replace(settings, revocation_mode="direct")).close()
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{exc} at {redact_url(settings.url)}") from None
    print(
        f"{PROG}: serving {redact_url(settings.url)} on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    if args.workers > 1:
        from agentcaps.http.workers import serve_workers

        # Each worker builds its own app (and its own connections) from the environment.
        return serve_workers(args.workers, args.host, args.port, uvicorn_options)
    run(create_app(settings, policies=policies))
    return 0


def check_admin_token(args: argparse.Namespace) -> None:
    if _store_url(args) == MEMORY_URL:
        raise ConfigError(
            "admin-token needs the deployment's store (AGENTCAPS_REDIS_URL and "
            "AGENTCAPS_MASTER_KEY): a token signed on memory:// is valid nowhere else. "
            "`agentcaps serve` on memory:// prints a bootstrap admin token itself"
        )


def cmd_admin_token(args: argparse.Namespace, stores: Stores) -> None:
    from agentcaps.audit import mint_event
    from agentcaps.service_tokens import (
        ADMIN_AGENT,
        ADMIN_SCOPE,
        PLATFORM_CUSTOMER,
        mint_admin_token,
    )

    with _recording(stores) as recorder:
        minted = mint_admin_token(
            stores.minter(max_ttl=stores.settings.max_lifetime), ttl=args.ttl, name=args.name
        )
        _record(
            recorder,
            mint_event(
                time.time(), caller=_who(), customer=PLATFORM_CUSTOMER, user=args.name,
                agent=ADMIN_AGENT, resources=ADMIN_SCOPE["resources"],
                actions=ADMIN_SCOPE["actions"], purposes=ADMIN_SCOPE["purposes"],
                audience=ADMIN_SCOPE["audience"], ttl=args.ttl, minted=minted,
                detail="admin token (agentcaps admin-token)",
            ),
        )  # fmt: skip
    print(minted.token)


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog=PROG,
        description="Capability tokens for AI agents, built on macaroons.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    store = _Parser(add_help=False)
    store.add_argument(
        "--redis",
        metavar="URL",
        help="the store: redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// "
        "or memory:// (default: AGENTCAPS_REDIS_URL, else memory://)",
    )
    token_help = "the token, or - to read it from stdin"

    service = _Parser(add_help=False)
    service.add_argument(
        "--url",
        metavar="URL",
        help="go through the agentcaps service at URL (e.g. http://127.0.0.1:8080) "
        "instead of the store",
    )
    service.add_argument(
        "--token-file",
        metavar="FILE",
        help="with --url: a file holding the admin or issuer token to send "
        "(default: AGENTCAPS_TOKEN)",
    )

    def command(
        group: argparse._SubParsersAction[_Parser],
        name: str,
        help: str,
        func: Callable[[argparse.Namespace], int | None],
        *,
        parents: Sequence[_Parser] = (),
    ) -> _Parser:
        sub = group.add_parser(name, help=help, description=help, parents=[*parents])
        sub.set_defaults(func=func)
        return sub

    # offline
    p = command(commands, "inspect", "show what a token claims, WITHOUT verifying it", cmd_inspect)
    p.add_argument("token", metavar="TOKEN", help=token_help)

    p = command(
        commands,
        "attenuate",
        "narrow a token offline (no key, no network) and print the new token",
        cmd_attenuate,
    )
    p.add_argument("token", metavar="TOKEN", help=token_help)
    p.add_argument(
        "--resource",
        action="append",
        metavar="GLOB",
        help="allow only these resources (repeatable)",
    )
    p.add_argument(
        "--action", action="append", metavar="ACTION", help="allow only these actions (repeatable)"
    )
    p.add_argument(
        "--purpose",
        action="append",
        metavar="PURPOSE",
        help="allow only these purposes (repeatable)",
    )
    life = p.add_mutually_exclusive_group()
    life.add_argument(
        "--ttl", type=_positive_int, metavar="SECONDS", help="expire this many seconds from now"
    )
    life.add_argument(
        "--expires-at",
        type=_time_floor,
        metavar="ISO8601",
        help="expire at this time, e.g. 2026-12-01T10:00:00Z",
    )
    p.add_argument("--delegate-to", metavar="AGENT", help="hand the token to this agent")
    p.add_argument(
        "--audience",
        action="append",
        metavar="NAME",
        help="valid only at these verifiers (repeatable)",
    )
    p.add_argument(
        "--max-delegations", type=_count, metavar="N", help="allow at most N further delegations"
    )

    command(
        commands, "master-key", "print a fresh master key for AGENTCAPS_MASTER_KEY", cmd_master_key
    )
    command(commands, "demo", "a guided tour: mint, delegate, verify, revoke (in memory)", cmd_demo)

    p = command(
        commands,
        "doctor",
        "check that a Redis is fit to keep revocations safe",
        cmd_doctor,
        parents=[store],
    )
    p.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="the Redis to check (default: --redis, else AGENTCAPS_REDIS_URL)",
    )

    # against a store
    keys = command(commands, "keys", "manage root keys", _missing_subcommand)
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = command(
        key_commands,
        "create",
        "create an active root key (the owner's previous one becomes verify-only)",
        _store_command(cmd_keys_create),
        parents=[store],
    )
    p.add_argument(
        "--customer", metavar="C", help="the customer who owns it (default: the platform)"
    )
    command(
        key_commands,
        "list",
        "list root keys, newest first",
        _store_command(cmd_keys_list),
        parents=[store],
    )
    p = command(
        key_commands,
        "rotate",
        "replace a key by a new active one; the old one becomes verify-only",
        _store_command(cmd_keys_rotate),
        parents=[store],
    )
    p.add_argument("kid", metavar="KID")
    p = command(
        key_commands,
        "revoke",
        "revoke a key: every token it signed is denied (key_revoked)",
        _store_command(cmd_keys_revoke),
        parents=[store],
    )
    p.add_argument("kid", metavar="KID")
    p.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit trail")

    p = command(
        commands,
        "mint",
        "mint a token for an agent acting for a user",
        _store_command(cmd_mint, remote=remote_mint),
        parents=[store, service],
    )
    p.add_argument("--customer", required=True, metavar="C", help="the customer (tenant)")
    p.add_argument("--user", required=True, metavar="U", help="the user the agent acts for")
    p.add_argument("--agent", required=True, metavar="A", help="the agent the token is for")
    p.add_argument(
        "--resource",
        action="append",
        required=True,
        metavar="GLOB",
        help="resource pattern, e.g. crm/** (repeatable)",
    )
    p.add_argument(
        "--action", action="append", required=True, metavar="ACTION", help="e.g. read (repeatable)"
    )
    p.add_argument(
        "--purpose", action="append", required=True, metavar="PURPOSE", help="why (repeatable)"
    )
    p.add_argument(
        "--ttl",
        type=_positive_int,
        required=True,
        metavar="SECONDS",
        help="lifetime (at most AGENTCAPS_MAX_TTL, default 3600)",
    )
    p.add_argument(
        "--audience",
        action="append",
        metavar="NAME",
        help="valid only at these verifiers (repeatable)",
    )
    p.add_argument(
        "--max-delegations", type=_count, metavar="N", help="allow at most N delegations"
    )
    p.add_argument(
        "--not-before", type=_time_ceil, metavar="ISO8601", help="not valid before this time"
    )
    p.add_argument(
        "--json", action="store_true", help="print the token with its id, key id and times"
    )

    policy_cli.add_policy_dir_argument(p)

    p = command(
        commands,
        "verify",
        "decide a request against a token; exit 0 only when allowed",
        _store_command(cmd_verify, remote=remote_verify),
        parents=[store, service],
    )
    p.add_argument("token", metavar="TOKEN", help=token_help)
    p.add_argument("--resource", required=True, metavar="RESOURCE")
    p.add_argument("--action", required=True, metavar="ACTION")
    p.add_argument("--purpose", metavar="PURPOSE", help="the purpose the caller declares")
    p.add_argument(
        "--actor", metavar="AGENT", help="who is calling; must be the token's last holder"
    )
    p.add_argument("--audience", metavar="NAME", help="this verifier's audience name")

    p = command(
        commands,
        "revoke",
        "revoke tokens; prints the stored revocation",
        _store_command(cmd_revoke, check_revoke, remote=remote_revoke),
        parents=[store, service],
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--token", metavar="TOKEN", help="this token and everything derived from it (- reads stdin)"
    )
    what.add_argument(
        "--token-id", metavar="ID", help="a token id (hex) and every attenuation of it"
    )
    what.add_argument(
        "--delegation-id", metavar="ID", help="a delegation branch (hex) and everything below it"
    )
    what.add_argument("--key", metavar="KID", help="every token a root key signed")
    what.add_argument(
        "--customer",
        metavar="C",
        help="every token issued so far for a customer (with --user or --agent: for one user, "
        "or one agent name of it)",
    )
    p.add_argument(
        "--agent",
        metavar="A",
        help="every token issued so far that names this agent as a holder: in every customer, "
        "or with --customer in that one",
    )
    p.add_argument("--user", metavar="U", help="with --customer: only this user's tokens")
    p.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit trail")

    p = command(
        commands,
        "serve",
        "run the agentcaps service (HTTP API, forward-auth); on memory:// without "
        "AGENTCAPS_REDIS_URL, printing a bootstrap admin token",
        cmd_serve,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=_DEFAULT_PORT, help=f"port (default {_DEFAULT_PORT})"
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes (default 1; more need a real Redis)",
    )
    policy_cli.add_policy_dir_argument(p)

    p = command(
        commands,
        "admin-token",
        "print an admin token for the deployment of AGENTCAPS_REDIS_URL (needs the master key)",
        _store_command(cmd_admin_token, check_admin_token),
        parents=[store],
    )
    p.add_argument(
        "--ttl",
        type=_positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime (default 3600; at most AGENTCAPS_MAX_LIFETIME)",
    )
    p.add_argument(
        "--name", default="admin", metavar="NAME", help="who the admin is (default admin)"
    )

    revocations = command(
        commands, "revocations", "list revocations, or recover after a loss", _missing_subcommand
    )
    rv_commands = revocations.add_subparsers(
        dest="revocations_command", metavar="COMMAND", required=True
    )
    command(
        rv_commands,
        "list",
        "every live revocation, newest first",
        _store_command(cmd_revocations_list),
        parents=[store],
    )
    command(
        rv_commands,
        "recover",
        "after a detected loss: accept it and let verifiers allow again",
        _store_command(cmd_revocations_recover),
        parents=[store],
    )
    audit = command(
        commands,
        "audit",
        "read the audit trail (one JSON object per event); `audit verify` checks it, "
        "`audit trace TOKEN_ID` shows a token's provenance",
        _store_command(cmd_audit, remote=remote_audit),
        parents=[store, service],
    )
    _audit_filters(audit)
    audit.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events until interrupted"
    )
    audit.add_argument(
        "--interval",
        type=_seconds_type,
        default=1.0,
        metavar="SECONDS",
        help="--follow: seconds between polls",
    )
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND")
    # `agentcaps audit --redis URL verify` and `agentcaps audit verify --redis URL`
    # both work: a subcommand's own --redis/--url must not reset the one given before it.
    late_store = _Parser(add_help=False)
    late_store.add_argument("--redis", metavar="URL", default=argparse.SUPPRESS,
                            help="as for `agentcaps audit`")  # fmt: skip
    late_service = _Parser(add_help=False)
    late_service.add_argument("--url", metavar="URL", default=argparse.SUPPRESS,
                              help="as for `agentcaps audit`")  # fmt: skip
    late_service.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS,
                              help="as for `agentcaps audit`")  # fmt: skip
    p = command(
        audit_commands,
        "verify",
        "check every writer's hash chain; exit 1 naming the first altered, deleted or "
        "reordered event, 3 when there is no event to check",
        cmd_audit_verify,
        parents=[late_store],
    )
    p.add_argument(
        "--jsonl",
        metavar="FILE",
        help="check a JSON-lines copy (AGENTCAPS_AUDIT=jsonl:FILE) instead",
    )
    p = command(
        audit_commands,
        "trace",
        "a token's provenance tree: minted for whom by whom, each delegation, every "
        "verification and revocation under its branch",
        _store_command(cmd_audit_trace, remote=remote_audit_trace),
        parents=[late_store, late_service],
    )
    p.add_argument("token_id", metavar="TOKEN_ID", type=_hex_id, help="the token id (32 hex)")
    p.add_argument("--json", action="store_true", help="the tree as JSON")

    policy_cli.register(commands)
    return parser


def _audit_filters(p: argparse.ArgumentParser) -> None:
    from agentcaps.audit import MAX_LIMIT, AuditKind

    p.add_argument("--token-id", type=_hex_id, metavar="ID", help="events of this token id")
    p.add_argument(
        "--delegation-id", type=_hex_id, metavar="ID", help="events of this delegation branch"
    )
    p.add_argument("--customer", metavar="C", help="events on behalf of this customer")
    p.add_argument("--user", metavar="U", help="events on behalf of this user")
    p.add_argument("--agent", metavar="A", help="events where this agent acts or is in the chain")
    p.add_argument("--kind", choices=[k.value for k in AuditKind], help="events of this kind")
    p.add_argument(
        "--since", metavar="TIME", help="ISO 8601, unix seconds or a duration ago (15m, 2h, 7d)"
    )
    p.add_argument("--until", metavar="TIME", help="as --since")
    p.add_argument(
        "--limit",
        type=_int_type(1, MAX_LIMIT, "a number of events"),
        default=100,
        metavar="N",
        help=f"the newest N matching events (default 100, at most {MAX_LIMIT})",
    )


def _missing_subcommand(
    args: argparse.Namespace,
) -> NoReturn:  # pragma: no cover - argparse requires one
    raise UsageError("a subcommand is required")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
        return status
    except UsageError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`agentcaps keys list | head`); say nothing more.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
    except InvalidToken as exc:
        _err(f"not a valid token: {exc}")
        return 1
    except NotAllowed as exc:
        _err(f"{exc} ({exc.reason})")
        return 1
    except AgentCapsError as exc:
        _err(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback, ever
        _err(f"unexpected internal error ({type(exc).__name__}); please report it")
        return 1


if __name__ == "__main__":
    sys.exit(main())
