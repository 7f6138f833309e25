"""Settings, read once from the environment (or passed in), never at import time."""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentcaps.caveats import check_name
from agentcaps.errors import ConfigError, InvalidArgument
from agentcaps.mint import DEFAULT_MAX_TTL
from agentcaps.service_tokens import SERVICE_AUDIENCE
from agentcaps.verify import DEFAULT_MAX_LIFETIME

MEMORY_URL = "memory://"
MASTER_KEY_BYTES = 32
DEFAULT_AUDIT_MAX_AGE = 30 * 24 * 3600  # as long as a token can live (the default max lifetime)
DEFAULT_AUDIT_MAX_LEN = 1_000_000


@dataclass(frozen=True, slots=True)
class AuditTargets:
    """Where audit events go: the store's stream (`redis`) and JSON-lines targets (`-` is stdout)."""

    redis: bool = False
    jsonl: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.redis or bool(self.jsonl)


def parse_audit(text: str) -> AuditTargets:
    """AGENTCAPS_AUDIT: `off`, or a comma-separated list of `redis`, `jsonl:-` (stdout), `jsonl:PATH`.

    `redis` is the deployment's store (an in-process stream on memory://).

    Raises:
        ConfigError: anything else.
    """
    redis = False
    jsonl: list[str] = []
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items in (["off"], ["none"]):
        return AuditTargets()
    for item in items:
        if item == "redis":
            redis = True
        elif item.startswith("jsonl:") and item[6:].strip():
            target = item[6:].strip()
            jsonl.append("-" if target in ("-", "stdout") else target)
        else:
            raise ConfigError(
                "AGENTCAPS_AUDIT is off, or a comma-separated list of redis, jsonl:- (stdout) "
                "and jsonl:PATH"
            )
    if not items:
        raise ConfigError("AGENTCAPS_AUDIT is empty: say off to record nothing")
    return AuditTargets(redis, tuple(jsonl))


def audit_writer_mode(settings_writer: str | None, targets: AuditTargets, memory: bool) -> str:
    """Who writes the trail: `process` or `thread`, as AGENTCAPS_AUDIT_WRITER says, else the default.

    The default is a writer process when the trail writes a real Redis (its
    sealing and writes then leave the verifying process's GIL), a thread
    otherwise (memory:// keeps its stream in this process; JSON lines alone,
    or nothing, cost little).

    Raises:
        ConfigError: `process` with the memory:// stream, which no other process can reach.
    """
    if settings_writer is None:
        return "process" if targets.redis and not memory else "thread"
    if settings_writer not in ("process", "thread"):
        raise ConfigError("AGENTCAPS_AUDIT_WRITER must be process or thread")
    if settings_writer == "process" and targets.redis and memory:
        raise ConfigError(
            "AGENTCAPS_AUDIT_WRITER=process needs AGENTCAPS_REDIS_URL: the memory:// "
            "audit stream lives in this process, where no writer process can reach it"
        )
    return settings_writer


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where agentcaps keeps local state: $XDG_STATE_HOME/agentcaps, else ~/.local/state/agentcaps."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "agentcaps"


def redact_url(url: str) -> str:
    """`url` with any password (authority, or a query option named `…password`) replaced by `***`.

    Up to the last `@`: a user or password typed with an unencoded `/`, `?`
    or `#` makes the URL malformed, which is just when it gets shown in an
    error.
    """
    # A plain user name is kept; anything odd before the password goes too.
    url, kept_user = re.subn(r"^([a-z+]+://[^:/@?#]*):.*@", r"\1:***@", url)
    if not kept_user:
        url = re.sub(r"^([a-z+]+://).*:.*@", r"\1***@", url)
    return re.sub(r"([?&][a-z_]*password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def parse_master_key(text: str) -> bytes:
    """32 bytes from 64 hex characters or 43 characters of unpadded base64url.

    Raises:
        ConfigError: anything else; the message never repeats the value.
    """
    text = text.strip()
    if len(text) == 2 * MASTER_KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    if len(text) == 43:
        from agentcaps.errors import MalformedToken
        from agentcaps.wire import b64decode

        try:
            key = b64decode(text)
        except MalformedToken:
            pass
        else:
            if len(key) == MASTER_KEY_BYTES:
                return key
    raise ConfigError(
        "the master key must be 32 bytes: 64 hex characters or 43 of unpadded base64url"
    )


def _is_text(data: bytes) -> bool:
    return all(32 <= b < 127 or b in b"\t\r\n" for b in data)


def read_master_key_file(path: str) -> bytes:
    """The master key from a file holding its text form (or exactly 32 raw bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the master key file {path}: {exc.strerror}") from None
    # 32 raw bytes (head -c 32 /dev/urandom), unless they are text: a
    # passphrase of 31 characters and a newline is not a key.
    if len(data) == MASTER_KEY_BYTES and not _is_text(data):
        return data
    try:
        return parse_master_key(data.decode("ascii"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"the master key file {path} holds neither 32 bytes nor a key in text"
        ) from None


_TEN_YEARS = 10 * 365 * 24 * 3600


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    # Bounded above too: a value no deployment means would only fail later,
    # far from its cause (an overflow in a timer, a script Redis refuses).
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be from {minimum} to {maximum}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number") from None
    if not minimum <= value <= maximum:  # also refuses nan
        raise ConfigError(f"{name} must be from {minimum:g} to {maximum:g}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a deployment configures; `from_env` reads AGENTCAPS_* variables."""

    redis_url: str | None = None
    master_key: bytes | None = None
    revocation_mode: str = "direct"
    replica_staleness: float = 2.0
    redis_timeout: float = 0.25
    max_ttl: int = DEFAULT_MAX_TTL
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    leeway: int = 0
    wait_replicas: int | None = None  # None: as many as are connected
    # The gateway's audience name: what the service's verify and forward-auth
    # routes match audience caveats against (None: tokens with one never pass).
    audience: str | None = None
    # A TOML file of forward-auth route rules (method + path -> resource, action).
    routes_file: str | None = None
    # Folders of *.cedar policies: what may be minted (None: the built-in
    # default), and what the gateway allows beyond a token's own caveats
    # (None: `<policy_dir>/gateway` when it exists, else no gateway policy).
    policy_dir: str | None = None
    gateway_policy_dir: str | None = None
    # Seconds between checks of the policy folders for changes (0: only SIGHUP).
    policy_poll_interval: float = 1.0
    # How many tokens whose signature chain held a service verifier remembers
    # (0: recompute every time). See Verifier's signature_cache_size.
    signature_cache_size: int = 4096
    # Where audit events go (AGENTCAPS_AUDIT, see parse_audit): the store's
    # stream and/or JSON lines; "off" keeps none (metrics still count).
    audit: str = "redis"
    # The directory of spool files holding events while Redis cannot take
    # them (None: default_state_dir()/audit-spool).
    audit_spool: str | None = None
    # Retention of the audit stream: entries older than this many seconds and
    # beyond this many entries are trimmed (approximately, as Redis trims).
    audit_max_age: int = DEFAULT_AUDIT_MAX_AGE
    audit_max_len: int = DEFAULT_AUDIT_MAX_LEN
    # Who seals and writes audit events (AGENTCAPS_AUDIT_WRITER): "process"
    # (a writer process fed over a pipe), "thread" (a thread of this
    # process), or None: a process when the stream is a real Redis, else a
    # thread (see audit_writer_mode).
    audit_writer: str | None = None
    # Log lines of `agentcaps serve`: "json" (one object per line) or "text".
    log_format: str = "json"
    # Which requests get an access line: `all`, `errors` (status 400 and up:
    # every decision is in the audit trail already, so a busy forward-auth
    # service need not log each allowed check twice), or `off`.
    access_log: str = "errors"

    def __repr__(self) -> str:
        # The master key never appears in a repr, a log line or an error.
        shown = "set" if self.master_key else "unset"
        url = redact_url(self.redis_url) if self.redis_url else None
        return f"Settings(redis_url={url!r}, master_key={shown}, mode={self.revocation_mode!r})"

    @property
    def url(self) -> str:
        """The store URL, `memory://` when none is configured."""
        return self.redis_url or MEMORY_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read AGENTCAPS_* variables.

        Raises:
            ConfigError: a variable that cannot be used as given.
        """
        env = os.environ if env is None else env
        master_key = None
        if env.get("AGENTCAPS_MASTER_KEY"):
            master_key = parse_master_key(env["AGENTCAPS_MASTER_KEY"])
        elif env.get("AGENTCAPS_MASTER_KEY_FILE"):
            master_key = read_master_key_file(env["AGENTCAPS_MASTER_KEY_FILE"])
        mode = env.get("AGENTCAPS_REVOCATION_MODE") or "direct"
        if mode not in ("direct", "replica"):
            raise ConfigError("AGENTCAPS_REVOCATION_MODE must be direct or replica")
        wait_raw = env.get("AGENTCAPS_WAIT_REPLICAS", "")
        wait_replicas = (
            None if wait_raw in ("", "auto") else _int(env, "AGENTCAPS_WAIT_REPLICAS", 0, 0, 1000)
        )
        audience = env.get("AGENTCAPS_AUDIENCE") or None
        if audience is not None:
            try:
                check_name(audience, "AGENTCAPS_AUDIENCE")
            except InvalidArgument as exc:
                raise ConfigError(str(exc)) from None
            if audience == SERVICE_AUDIENCE:
                # Admin and issuer tokens carry it: the gateway would let them through.
                raise ConfigError(
                    f"AGENTCAPS_AUDIENCE cannot be {SERVICE_AUDIENCE!r}: the service's own "
                    "tokens carry that audience"
                )
        audit = env.get("AGENTCAPS_AUDIT") or "redis"
        # Both refused now, not when the first event is written.
        audit_writer = env.get("AGENTCAPS_AUDIT_WRITER") or None
        memory = (env.get("AGENTCAPS_REDIS_URL") or MEMORY_URL) == MEMORY_URL
        audit_writer_mode(audit_writer, parse_audit(audit), memory)
        log_format = env.get("AGENTCAPS_LOG_FORMAT") or "json"
        if log_format not in ("json", "text"):
            raise ConfigError("AGENTCAPS_LOG_FORMAT must be json or text")
        access_log = env.get("AGENTCAPS_ACCESS_LOG") or "errors"
        if access_log not in ("all", "errors", "off"):
            raise ConfigError("AGENTCAPS_ACCESS_LOG must be all, errors or off")
        return cls(
            redis_url=env.get("AGENTCAPS_REDIS_URL") or None,
            master_key=master_key,
            revocation_mode=mode,
            replica_staleness=_float(env, "AGENTCAPS_REPLICA_STALENESS", 2.0, 0.1, 3600),
            redis_timeout=_float(env, "AGENTCAPS_REDIS_TIMEOUT", 0.25, 0.01, 300),
            max_ttl=_int(env, "AGENTCAPS_MAX_TTL", DEFAULT_MAX_TTL, 1, _TEN_YEARS),
            max_lifetime=_int(env, "AGENTCAPS_MAX_LIFETIME", DEFAULT_MAX_LIFETIME, 1, _TEN_YEARS),
            leeway=_int(env, "AGENTCAPS_LEEWAY", 0, 0, 3600),
            wait_replicas=wait_replicas,
            audience=audience,
            routes_file=env.get("AGENTCAPS_ROUTES") or None,
            policy_dir=env.get("AGENTCAPS_POLICY_DIR") or None,
            gateway_policy_dir=env.get("AGENTCAPS_GATEWAY_POLICY_DIR") or None,
            policy_poll_interval=_float(env, "AGENTCAPS_POLICY_POLL_INTERVAL", 1.0, 0.0, 3600),
            signature_cache_size=_int(env, "AGENTCAPS_SIGNATURE_CACHE", 4096, 0, 10_000_000),
            audit=audit,
            audit_spool=env.get("AGENTCAPS_AUDIT_SPOOL") or None,
            audit_max_age=_int(
                env, "AGENTCAPS_AUDIT_MAX_AGE", DEFAULT_AUDIT_MAX_AGE, 0, _TEN_YEARS
            ),
            audit_max_len=_int(env, "AGENTCAPS_AUDIT_MAX_LEN", DEFAULT_AUDIT_MAX_LEN, 1000, 10**10),
            audit_writer=audit_writer,
            log_format=log_format,
            access_log=access_log,
        )


def new_master_key_text() -> str:
    """A fresh master key as 64 hex characters, for `agentcaps master-key`."""
    return binascii.hexlify(os.urandom(MASTER_KEY_BYTES)).decode("ascii")
