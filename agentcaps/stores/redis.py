"""The Redis key and revocation stores: the only module that talks to Redis.

`memory://` runs this very code over fakeredis in-process (the embedded
default), so there is one implementation to trust. Redis errors become
StoreUnavailable here, at the edge; no other module sees a Redis type.

Topologies. `redis://`, `rediss://` and `unix://` reach one server;
`redis+sentinel://` reaches the primary that Redis Sentinel names (and finds
the new one after a failover); `redis+cluster://` reaches a Redis Cluster.
The same code runs on all three: every key below shares one hash tag, so on a
Cluster they live in one slot, and the scripts, pipelines and WAIT all go to
the one primary that holds it.

Layout. Every key carries one hash tag, so on Redis Cluster they share a slot
and the Lua scripts below can change several of them atomically:

    <ns>:{ac}:keys:k:<kid> hash: owner (customer, "" for the platform), state,
                           created_at, blob (AES-GCM)
    <ns>:{ac}:keys:index   zset: kid by creation time
    <ns>:{ac}:keys:active  hash: owner -> active kid ("" is the platform)
    <ns>:{ac}:keys:check   the master key check value
    <ns>:{ac}:rv           hash: revocation field -> value (see revocation.py)
    <ns>:{ac}:rv:expiry    zset: revocation field by expiry, for pruning
    <ns>:{ac}:rv:meta      hash: epoch, recovery (ms, on recovery epochs), seq
    <ns>:{ac}:rv:events    stream: one event per revocation, for replicas

Safety against data loss: `rv:meta` holds an epoch (made once per store) and a
sequence number bumped by every revocation. Each process remembers the epoch
and the highest sequence it has seen; an epoch that vanished or changed, or a
sequence that went backwards, means revocations were lost (FLUSHALL, a restart
without persistence, a failover to a replica that missed writes), and every
check fails closed until an operator runs `agentcaps revocations recover`.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from agentcaps.caveats import check_name
from agentcaps.config import MASTER_KEY_BYTES, MEMORY_URL, Settings
from agentcaps.config import redact_url as _redact_url
from agentcaps.decision import Reason
from agentcaps.errors import (
    ConfigError,
    InvalidArgument,
    NeedsIO,
    NothingPersistsWarning,
    RevocationStateLost,
    StoreUnavailable,
    UnconfirmedWrite,
    UnknownKey,
)
from agentcaps.keys import KeyState, RootKey, new_key_id, new_secret
from agentcaps.mint import Minter
from agentcaps.revocation import (
    NEVER_EXPIRES,
    Revocation,
    RevocationIndex,
    RevocationKind,
    TokenFacts,
    default_expiry,
    entry_times,
    fields_for,
)
from agentcaps.verify import Verifier
from agentcaps.wire import mask_tokens

log = logging.getLogger("agentcaps.stores")

Clock = Callable[[], float]
# A client of one server (or of the primary Sentinel names), or of a Cluster.
Client = redis.Redis | RedisCluster

# What a Redis client raises: a Cluster client also raises errors that are not
# RedisError (no reachable node, an uncovered slot).
_ERRORS = (redis.RedisError, RedisClusterException)

_PLATFORM = ""  # the owner name of platform keys in keys:active
_CHECK_PLAINTEXT = b"agentcaps master key check v1"
# Key ids are "k" and 16 hex digits; anything named back in an error is at most this.
_KEY_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NEGATIVE_CACHE_SECONDS = 1.0
_STREAM_MAXLEN = 100_000
_READ_COUNT = 1000  # events a replica takes from the stream per read
_WAIT_TIMEOUT = 1.0  # seconds a revocation waits for replicas to confirm it
_PRUNE_PER_WRITE = 500
_SCAN_COUNT = 1000
# Why a key made was recorded by the key store's listeners, not by a caller.
FIRST_USE = "created on first use, by the first mint for its owner"
UNCONFIRMED = "created on the Redis primary, not confirmed by its replicas (the call failed)"
UNCONFIRMED_REVOCATION = (
    "in force on the Redis primary, not confirmed by its replicas (the call failed)"
)
# What _restarted_from answers for a reading of a server before the known one.
_EARLIER = -2
# What processes read of rv:meta to notice a loss (see EpochWatch).
META_FIELDS = ("epoch", "recovery", "seq", "run")

MEMORY_WARNING = (
    "agentcaps is running on memory:// (the embedded default): keys and revocations "
    "live in this process only and are lost when it exits. Set AGENTCAPS_REDIS_URL "
    "for anything that must persist."
)


class Layout:
    """Key names under one namespace and one hash tag."""

    def __init__(self, namespace: str = "agentcaps") -> None:
        base = f"{namespace}:{{ac}}:"
        self.keys_index = base + "keys:index"
        self.keys_active = base + "keys:active"
        self.keys_check = base + "keys:check"
        self.rv = base + "rv"
        self.rv_expiry = base + "rv:expiry"
        self.rv_meta = base + "rv:meta"
        self.rv_events = base + "rv:events"
        self.rv_runs = base + "rv:runs"
        self.rv_self = base + "rv:self:"
        self._key_prefix = base + "keys:k:"

    def key(self, kid: str) -> str:
        return self._key_prefix + kid


# Records one revocation entry, bumps the sequence, appends the event and prunes
# a bounded number of expired entries. Refuses to write into a store whose
# epoch is missing or not the one the writer knows: that store lost data.
# Of two entries for the same thing the later one stays, as RevocationIndex
# keeps it: for a customer, user or agent the later revocation time (it covers
# more tokens), else the later expiry. Writes can land out of order (issuers'
# clocks differ); last-write-wins would move a revocation back in time.
# The first write under a new server (a restart, a failover, a dataset
# loaded into a running server: its run id or its replication id changes)
# notes the server and the sequence it started from in rv:runs, and every
# write says which server took it: a start from an older state shows there
# even after later writes have brought the sequence back up (EpochWatch).
#   KEYS: rv, rv:expiry, rv:meta, rv:events, rv:runs
#   ARGV: epoch, field, value, expires_at, now, stream maxlen, prune limit
_RECORD = """
local epoch = redis.call('HGET', KEYS[3], 'epoch')
if not epoch then return redis.error_reply('AGENTCAPS_NO_EPOCH') end
if epoch ~= ARGV[1] then return redis.error_reply('AGENTCAPS_EPOCH_CHANGED') end
local run = nil
local server, repl = redis.pcall('INFO', 'server'), redis.pcall('INFO', 'replication')
if type(server) == 'string' and type(repl) == 'string' then
  local id, replid = string.match(server, 'run_id:(%x+)'), string.match(repl, 'master_replid:(%x+)')
  if id and replid then run = id .. '.' .. replid end
end
if run and redis.call('HGET', KEYS[3], 'run') ~= run then
  redis.call('RPUSH', KEYS[5], run .. ':' .. (redis.call('HGET', KEYS[3], 'seq') or '0'))
  redis.call('LTRIM', KEYS[5], -64, -1)
  redis.call('HSET', KEYS[3], 'run', run)
end
-- A non-negative msgpack integer at pos: its value and the next pos.
local function uint(s, pos)
  local b = string.byte(s, pos)
  if b < 128 then return b, pos + 1 end
  local width = ({[204] = 1, [205] = 2, [206] = 4, [207] = 8})[b]
  local v = 0
  for i = 1, width do v = v * 256 + string.byte(s, pos + i) end
  return v, pos + 1 + width
end
-- (revoked_at, expires_at) of a value: msgpack [revoked_at, expires_at, reason, by].
local function times(value)
  local revoked, pos = uint(value, 2)
  return revoked, (uint(value, pos))
end
local kept = false
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old then
  local r0, e0 = times(old)
  local r1, e1 = times(ARGV[3])
  local tag = string.sub(ARGV[2], 1, 1)
  if tag == 'c' or tag == 'u' or tag == 'a' or tag == 'g' then
    kept = r0 > r1 or (r0 == r1 and e0 >= e1)
  else
    kept = e0 >= e1
  end
end
if not kept then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'seq', seq, 'field', ARGV[2], 'value', ARGV[3], 'run', run or '')
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5], 'LIMIT', 0, ARGV[7])
for _, f in ipairs(expired) do
  redis.call('HDEL', KEYS[1], f)
  redis.call('ZREM', KEYS[2], f)
end
"""

# A place for one branch revoked by its own holder: 0 if it has one already,
# 1 if it gets one, -1 if its group's places or the token's are all taken.
# Atomic, so that requests in flight together cannot overshoot.
#   KEYS: the group's places, the token's count
#   ARGV: branch, the group's limit, the token's limit, expire-at
_RESERVE_SELF_SCRIPT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('INCR', KEYS[2])
redis.call('EXPIREAT', KEYS[2], ARGV[4])
return 1
"""

_REVOKE_SCRIPT = _RECORD + "return {seq, run or ''}\n"

# Revoking a root key: its record says so for good, it stops being anyone's
# active key, and a revocation entry reaches every verifier (key_revoked).
#   KEYS: as _RECORD, then the key record, keys:active
#   ARGV: as _RECORD, then the owner name in keys:active
_REVOKE_KEY_SCRIPT = (
    """
if redis.call('EXISTS', KEYS[6]) == 0 then return redis.error_reply('AGENTCAPS_UNKNOWN_KEY') end
"""
    + _RECORD
    + """
redis.call('HSET', KEYS[6], 'state', 'revoked')
if redis.call('HGET', KEYS[7], ARGV[8]) == ARGV[2]:sub(2) then redis.call('HDEL', KEYS[7], ARGV[8]) end
return {seq, run or ''}
"""
)

# Makes `kid` the active key of its owner; the previous active key (if any)
# becomes verify-only. With ARGV[5] == '1' it only does so when the owner has
# no active key yet, and returns the existing one instead.
#   KEYS: new key record, keys:index, keys:active, key prefix (for the old record)
#   ARGV: kid, owner, created_at, blob, only-if-absent
_ACTIVATE_SCRIPT = """
local current = redis.call('HGET', KEYS[3], ARGV[2])
if current and ARGV[5] == '1' then return current end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'state', 'active', 'created_at', ARGV[3], 'blob', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if current then
  local old = KEYS[4] .. current
  if redis.call('HGET', old, 'state') == 'active' then redis.call('HSET', old, 'state', 'verify-only') end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return ARGV[1]
"""


def _unavailable(exc: Exception) -> StoreUnavailable:
    # The message names the failure class only: Redis errors can echo
    # arguments, and arguments can be secrets. NOREPLICAS is Redis's own fixed
    # text, and worth telling the operator.
    if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOREPLICAS"):
        return StoreUnavailable(
            "Redis refuses writes while too few replicas are connected "
            "(min-replicas-to-write); nothing was recorded"
        )
    return StoreUnavailable(f"Redis unavailable ({type(exc).__name__})")


class EpochWatch:
    """Remembers the store's epoch and sequence, and notices when either went back.

    Once a loss is seen it sticks: every check fails closed until the store
    carries a recovery epoch (made by `agentcaps revocations recover`) newer
    than any this process knew. A recovery epoch's `recovery` field is when it
    was made, in milliseconds: so an old backup that itself carries an older
    recovery epoch is still seen as a loss, never accepted.
    """

    def __init__(self) -> None:
        self.epoch: bytes | None = None
        self.recovered = 0  # the recovery time of the epoch we follow (0: not a recovery)
        self.seq = 0
        self.run: bytes | None = None  # the server the store was last read from
        self.run_seq = 0  # the highest sequence known to have been on that server
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._on_recovery: list[Callable[[], None]] = []

    def on_recovery(self, callback: Callable[[], None]) -> None:
        """Call `callback` when this process moves to an operator's recovery epoch.

        It runs under this watch's lock, before the new epoch is visible: it
        must be quick and must not read the store.
        """
        self._on_recovery.append(callback)

    def observe(
        self,
        epoch: bytes | None,
        recovery: bytes | None,
        seq: bytes | int | None,
        floor: int,
        run: bytes | None = None,
        restarted_from: int | None = None,
        since_run: bytes | None = None,
    ) -> None:
        """Check one reading of rv:meta. Raises RevocationStateLost.

        `floor` is the sequence this process knew when it sent the read: a
        reading can lag writes that finished after it was sent, never before.
        `run` is the server that last wrote; when it is not the one this
        process knew, `restarted_from` is the lowest sequence any server
        started from since (-1: the record does not reach back that far). A
        start from below what this process knew was on its server lost
        revocations, however far later writes have taken the sequence since.
        `since_run` is the server `restarted_from` was read against: when
        another thread has moved this process to a new server meanwhile, it
        checked that move itself.
        """
        seq_now = int(seq or 0)
        recovered = int(recovery or 0)
        with self._lock:
            if since_run != self.run:
                # Another thread moved this process to another server since
                # this reading's check was made: the move is not this
                # reading's to check or to make (a later reading does both).
                restarted_from, run = None, None
            if epoch is None:
                self.lost = self.lost or (
                    "the revocation store has no epoch: Redis was flushed or restarted without "
                    "its data, so revocations may be lost. Restore it, or run "
                    "`agentcaps revocations recover` to accept the loss"
                )
            elif self.epoch is None or (epoch != self.epoch and recovered > self.recovered):
                # First sight, or an operator's newer recovery: start from here.
                if self.epoch is not None:
                    # What this process remembers of the old state (its keys)
                    # goes before the new epoch is visible to any thread.
                    for callback in self._on_recovery:
                        callback()
                self.epoch, self.seq, self.lost = epoch, seq_now, None
                self.recovered = recovered
                self.run, self.run_seq = run, seq_now
            elif epoch != self.epoch:
                self.lost = self.lost or (
                    "the revocation store's epoch changed: it was replaced by an empty or "
                    "different store, so revocations may be lost. Run "
                    "`agentcaps revocations recover` once it is understood"
                )
            elif seq_now < floor or (restarted_from is not None and restarted_from < self.run_seq):
                went_from, went_to = (
                    (floor, seq_now) if seq_now < floor else (self.run_seq, restarted_from)
                )
                self.lost = self.lost or (
                    f"the revocation store went back from sequence {went_from} to {went_to}: "
                    "acknowledged revocations are missing (a failover to a stale replica, or "
                    "a restore from an old snapshot). Run `agentcaps revocations recover` "
                    "once it is understood"
                )
            elif self.lost is None:
                self.seq = max(self.seq, seq_now)
                if run is not None and run != self.run:
                    # Checked (restarted_from): all this process knew is on it.
                    self.run, self.run_seq = run, self.seq
                elif run == self.run:
                    self.run_seq = max(self.run_seq, seq_now)
            if self.lost is not None:
                raise RevocationStateLost(self.lost)

    def advance(self, seq: int, run: bytes | None = None) -> None:
        """Note a sequence number seen in the event stream, or written, on server `run`.

        Only a sequence seen on the server this process knows counts as on
        it: one from another server is checked at the next read of the store.
        """
        with self._lock:
            self.seq = max(self.seq, seq)
            if run == self.run:
                self.run_seq = max(self.run_seq, seq)


class RedisKeyStore:
    """Root keys in Redis, encrypted with AES-GCM under the master key.

    Key material is cached in-process after the first read: a key's secret
    never changes, and its revocation reaches verifiers as a revocation entry.
    Unknown key ids are remembered briefly so that forged ids cannot make every
    request a Redis round trip.
    """

    def __init__(
        self,
        client: Client,
        master_key: bytes,
        *,
        layout: Layout,
        clock: Clock = time.time,
        revocations: RedisRevocationStore,
    ) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ConfigError("the master key must be 32 bytes")
        self._client = client
        self._aead = AESGCM(master_key)
        # Keys for other purposes are derived from the master key, never it.
        self._master_key = master_key
        self._layout = layout
        self._clock = clock
        self._revocations = revocations
        self._cache: dict[str, RootKey] = {}
        self._missing: dict[str, float] = {}
        # Twice the times a recovery emptied the cache, odd while it does (_forget).
        self.forgets = 0
        self._checked = False
        self._activate = client.register_script(_ACTIVATE_SCRIPT)
        self._revoke = client.register_script(_REVOKE_KEY_SCRIPT)
        # Told of each key made that no caller records (the audit trail listens).
        self._unrecorded_listeners: list[Callable[[RootKey, str], None]] = []
        # A recovery follows a loss, and keys can be lost with the rest: what
        # this process remembers of them (a key since revoked, or gone) must
        # not outlive what Redis holds now.
        revocations.watch.on_recovery(self._forget)

    def _forget(self) -> None:
        # Counted before and after, as a seqlock: a decision that read its
        # key before this ended sees the count moved, or odd, once its
        # revocation check is done, and decides again (Verifier._decide).
        self.forgets += 1
        self._cache.clear()
        self._missing.clear()
        self.forgets += 1

    def on_unrecorded_key(self, listener: Callable[[RootKey, str], None]) -> Callable[[], None]:
        """Call `listener(key, why)` with every key made that no caller records; returns the remover.

        That is a key `signing_key` creates on first use (`why` FIRST_USE),
        and a key any call made on the primary whose replicas did not confirm
        it (UNCONFIRMED): the call raised, yet the key is active there. Keys
        `create` and `rotate` return are their callers' to record.
        """
        self._unrecorded_listeners.append(listener)
        return lambda: self._unrecorded_listeners.remove(listener)

    def _unrecorded(self, key: RootKey, why: str) -> None:
        for listener in list(self._unrecorded_listeners):
            listener(key, why)

    # -- encryption --------------------------------------------------------

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose`, derived from the master key: the same in every process."""
        return hmac.digest(
            self._master_key, b"agentcaps derived key: " + purpose.encode(), "sha256"
        )

    def _seal(self, kid: str, secret: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, secret, b"agentcaps root key " + kid.encode())

    def _open(self, kid: str, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], b"agentcaps root key " + kid.encode())
        except InvalidTag:
            raise ConfigError(
                f"root key {kid} does not decrypt: the master key is not the one it was stored with"
            ) from None

    def check_master_key(self) -> None:
        """Make sure the master key is the one this store's keys were sealed with.

        The first process to use a store records a check value; later ones
        refuse to start with a different master key.

        Raises:
            ConfigError: the master key does not match.
            StoreUnavailable: Redis did not answer.
        """
        if self._checked:
            return
        try:
            stored = cast("bytes | None", self._client.get(self._layout.keys_check))
            if stored is None:
                nonce = secrets.token_bytes(12)
                sealed = nonce + self._aead.encrypt(nonce, _CHECK_PLAINTEXT, b"check")
                self._client.set(self._layout.keys_check, sealed, nx=True)
                stored = cast("bytes | None", self._client.get(self._layout.keys_check))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        if stored is None:
            # Written, then gone before it could be read back: the store is losing data.
            raise StoreUnavailable("the master key check value vanished from Redis")
        try:
            self._aead.decrypt(stored[:12], stored[12:], b"check")
        except (InvalidTag, ValueError):
            raise ConfigError(
                "AGENTCAPS_MASTER_KEY is not the master key this store's root keys were encrypted with"
            ) from None
        self._checked = True

    # -- reading -----------------------------------------------------------

    def _load(self, kid: str) -> RootKey | None:
        # A process that holds a key must know the revocation epoch it read it
        # under, read first: should the store lose its data later, this
        # process then sees the loss and fails closed, instead of starting a
        # fresh, empty epoch while its cached keys still verify old tokens.
        if self._revocations.watch.epoch is None:
            self._revocations.learn_epoch()
        try:
            record = cast("dict[bytes, bytes]", self._client.hgetall(self._layout.key(kid)))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        if not record:
            return None
        owner = record[b"owner"].decode()
        return RootKey(
            kid=kid,
            customer=owner or None,
            state=KeyState(record[b"state"].decode()),
            created_at=int(record[b"created_at"]),
            secret=self._open(kid, record[b"blob"]),
        )

    def get(self, kid: str, *, cached_only: bool = False) -> RootKey | None:
        """The key with this id, from the local cache when possible.

        Raises:
            StoreUnavailable: Redis did not answer, or the key does not decrypt
                under this process's master key (verification fails closed; the
                log says why).
            NeedsIO: with `cached_only`, the answer is not in this process's memory.
        """
        key = self._cache.get(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if self._missing.get(kid, 0.0) > now:
            return None
        if cached_only:
            raise NeedsIO(f"root key {kid} is not cached")
        forgets = self.forgets
        try:
            key = self._load(kid)
        except ConfigError as exc:
            log.error("%s", exc)
            raise StoreUnavailable(str(exc)) from None
        if key is None:
            if len(self._missing) > 10_000:
                self._missing.clear()
            self._missing[kid] = now + _NEGATIVE_CACHE_SECONDS
            return None
        self._keep(key, forgets)
        return key

    def _keep(self, key: RootKey, forgets: int) -> None:
        """Cache `key`, read when the count of emptyings was `forgets`, unless a recovery came between.

        A key read before a recovery and cached after it would outlive the
        loss it may have been part of, in every later decision.
        """
        if self.forgets == forgets and not forgets & 1:
            self._cache[key.kid] = key

    def fresh(self, kid: str) -> RootKey:
        """The key with this id as Redis has it now (state included).

        Raises:
            UnknownKey: no such key.
        """
        forgets = self.forgets
        key = self._load(kid)
        if key is None:
            # The id is the caller's: named back only when it has a key id's shape.
            shown = kid if _KEY_ID_SHAPE.fullmatch(kid) else "by that id"
            raise UnknownKey(f"no root key {shown}")
        self._keep(key, forgets)
        return key

    def list(self) -> list[RootKey]:
        """Every key, newest first."""
        try:
            kids = cast("list[bytes]", self._client.zrevrange(self._layout.keys_index, 0, -1))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        keys = (self._load(kid.decode()) for kid in kids)
        return [k for k in keys if k is not None]

    # -- writing -----------------------------------------------------------

    def _activate_new(self, owner: str | None, only_if_absent: bool) -> tuple[RootKey, bool]:
        """The new active key of `owner`, and whether this call made it.

        With `only_if_absent`, an active key another process made meanwhile
        is returned instead (made: False).
        """
        self.check_master_key()
        self._revocations.ensure_epoch()
        kid = new_key_id()
        secret = new_secret()
        created_at = int(self._clock())
        layout = self._layout
        key = RootKey(kid, owner or None, KeyState.ACTIVE, created_at, secret)
        # Confirmed by the replicas as a revocation is: a failover must not
        # bring back the key a rotation retired, nor lose the one it made.
        try:
            active = self._revocations.confirmed(
                self._activate,
                keys=[layout.key(kid), layout.keys_index, layout.keys_active, layout.key("")],
                args=[
                    kid,
                    owner or _PLATFORM,
                    created_at,
                    self._seal(kid, secret),
                    "1" if only_if_absent else "0",
                ],
                what="root key",
            )
        except UnconfirmedWrite as exc:
            if exc.reply == kid.encode():
                # Active on the primary, and the next mint signs with it:
                # recorded now, since the caller only sees an error.
                self._cache[kid] = key
                self._unrecorded(key, UNCONFIRMED)
            raise
        active_kid = active.decode()
        if active_kid != kid:
            return self.fresh(active_kid), False
        self._cache[kid] = key
        return key, True

    def signing_key(self, customer: str | None) -> RootKey:
        """The active key of `customer` (None: the platform), created on first use.

        Read from Redis on every call, so a rotation or revocation made by any
        process takes effect on the very next mint.
        """
        try:
            kid = cast(
                "bytes | None", self._client.hget(self._layout.keys_active, customer or _PLATFORM)
            )
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        if kid is None:
            created, made = self._activate_new(customer, only_if_absent=True)
            if made:
                self._unrecorded(created, FIRST_USE)
            return created
        key = self.get(kid.decode())
        if key is None:
            raise StoreUnavailable(f"active key {kid.decode()} has no record")
        return key

    def create(self, customer: str | None) -> RootKey:
        """A new active key for `customer` (None: the platform); the previous active one becomes verify-only.

        Raises:
            InvalidArgument: `customer` is not a name (an empty one is not the platform).
        """
        if customer is not None:
            check_name(customer, "customer")
        return self._activate_new(customer, only_if_absent=False)[0]

    def rotate(self, kid: str) -> RootKey:
        """A new active key for the owner of `kid`, which becomes verify-only.

        Raises:
            UnknownKey: no such key.
            InvalidArgument: the key is revoked.
        """
        old = self.fresh(kid)
        if old.state is KeyState.REVOKED:
            raise InvalidArgument(f"root key {kid} is revoked; create a new key instead")
        return self._activate_new(old.customer, only_if_absent=False)[0]

    def revoke(self, kid: str, *, reason: str = "", by: str = "") -> RootKey:
        """Revoke `kid`: every token it signed is denied with `key_revoked`, everywhere.

        Raises:
            UnknownKey: no such key.
        """
        return self.revoke_recorded(kid, reason=reason, by=by)[0]

    def revoke_recorded(
        self, kid: str, *, reason: str = "", by: str = ""
    ) -> tuple[RootKey, Revocation]:
        """`revoke`, returning the key and the revocation entry as stored (for the audit trail).

        Raises:
            UnknownKey: no such key.
        """
        old = self.fresh(kid)
        revocation = self._revocations.stamp(
            Revocation(RevocationKind.KEY, (kid,), int(self._clock()), reason=reason, by=by)
        )
        layout = self._layout
        self._revocations.write(
            self._revoke,
            revocation,
            extra_keys=[layout.key(kid), layout.keys_active],
            extra_args=[old.customer or _PLATFORM],
        )
        return self.fresh(kid), revocation


class RedisRevocationStore:
    """Revocations in Redis, checked with one pipelined round trip per verification.

    Args:
        client: the Redis client (timeouts set, no retries).
        layout: key names.
        clock: unix time, for revocation times and expiry.
        max_lifetime: the verifiers' hard cap on token age; entries are kept
            that long (plus `leeway`) and no longer.
        wait_replicas: replicas that must confirm each revocation (WAIT);
            None asks Redis how many are connected, each time.
        wait_timeout: seconds WAIT may take before the revocation is reported
            as not durable.
        write_client: the client revocations are written and WAITed on
            (default: `client`); its read timeout must outlast `wait_timeout`,
            or a slow replica ends in a bare socket timeout.
    """

    local = False  # every check asks Redis

    def __init__(
        self,
        client: Client,
        *,
        layout: Layout,
        clock: Clock = time.time,
        max_lifetime: int,
        leeway: int = 0,
        wait_replicas: int | None = None,
        wait_timeout: float = 1.0,
        count_replicas: bool = True,
        write_client: Client | None = None,
    ) -> None:
        self._client = client
        self._write_client = write_client or client
        self._layout = layout
        self._clock = clock
        self._max_lifetime = max_lifetime
        self._leeway = leeway
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout
        self._count_replicas = count_replicas
        self.watch = EpochWatch()
        self._script = client.register_script(_REVOKE_SCRIPT)
        self._reserve = client.register_script(_RESERVE_SELF_SCRIPT)
        # Told of each revocation in force on the primary whose call failed
        # (its replicas did not confirm it): no caller records it.
        self._unrecorded_listeners: list[Callable[[Revocation], None]] = []

    def on_unrecorded_revocation(
        self, listener: Callable[[Revocation], None]
    ) -> Callable[[], None]:
        """Call `listener` with every revocation written but not confirmed (the call raised); returns the remover."""
        self._unrecorded_listeners.append(listener)
        return lambda: self._unrecorded_listeners.remove(listener)

    # -- epoch -------------------------------------------------------------

    def ensure_epoch(self) -> None:
        """Give a brand-new store its epoch; a store that has one keeps it.

        Writers call this; verifiers never do, so a store that lost its epoch
        stays visibly lost to every process that knew it.
        """
        floor = self.watch.seq
        try:
            self._client.hsetnx(self._layout.rv_meta, "epoch", secrets.token_hex(16))
            epoch, recovery, seq, run = self._read_meta(self._client)
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        self._observe(epoch, recovery, seq, floor, run)

    def learn_epoch(self) -> None:
        """Read rv:meta now: remember its epoch, or report that it lost the one known.

        A read only, never a write (reading keys must work on a primary that
        refuses writes, e.g. one promoted while it has too few replicas).

        Raises:
            RevocationStateLost: the store lost revocations this process saw.
            StoreUnavailable: Redis did not answer.
        """
        floor = self.watch.seq
        try:
            epoch, recovery, seq, run = self._read_meta(self._client)
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        if epoch is not None or self.watch.epoch is not None:
            self._observe(epoch, recovery, seq, floor, run)

    def recover(self) -> str:
        """Operator action after a detected loss: start a new, recovery epoch.

        Every process accepts a recovery epoch and stops failing closed. The
        revocations that were lost stay lost: rotate or revoke the root keys
        whose tokens must not come back.
        """
        epoch = secrets.token_hex(16)
        # Later than every recovery this process knows of, even if the clock
        # went back, so that verifiers order recoveries correctly.
        recovered = max(int(self._clock() * 1000), self.watch.recovered + 1)
        try:
            self._client.hset(self._layout.rv_meta, mapping={"epoch": epoch, "recovery": recovered})
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        self.watch.observe(epoch.encode(), str(recovered).encode(), None, 0)
        return epoch

    def observe(
        self,
        epoch: bytes | None,
        recovery: bytes | None,
        seq: bytes | int | None,
        floor: int,
        run: bytes | None = None,
    ) -> None:
        """Check a reading of rv:meta, sent when this process knew sequence `floor`.

        A process that never saw an epoch may start one.

        A store without an epoch is either brand new or lost its data. To a
        process that has seen no epoch yet both look alike and both are safe to
        start afresh: it holds no keys or revocations from before (it reads the
        epoch before it reads any key). A process that remembers an epoch
        reports the loss instead (EpochWatch).

        Raises:
            RevocationStateLost: this process saw revocations the store no longer has.
        """
        if epoch is None and self.watch.epoch is None:
            self.ensure_epoch()
        else:
            self._observe(epoch, recovery, seq, floor, run)

    def _observe(
        self,
        epoch: bytes | None,
        recovery: bytes | None,
        seq: bytes | int | None,
        floor: int,
        run: bytes | None,
    ) -> None:
        """EpochWatch.observe, with the record of server restarts read when the server changed."""
        restarted_from = None
        known = self.watch.run
        if run is not None and run != known and epoch == self.watch.epoch:
            restarted_from = self._restarted_from(known, run)
            if restarted_from == _EARLIER:
                # A reading sent before another thread's, of a server this
                # process has moved on from: its sequence is still checked.
                restarted_from, run = None, None
        self.watch.observe(epoch, recovery, seq, floor, run, restarted_from, known)

    def _restarted_from(self, known: bytes | None, read: bytes) -> int | None:
        """The lowest sequence a server started from after `known` (-1: not recorded).

        With `known` None (this process read the store before servers were
        recorded, e.g. before an upgrade): the lowest of all recorded, None
        when none is. _EARLIER when the server `read` came before `known`.
        """
        try:
            entries = cast("list[bytes]", self._client.lrange(self._layout.rv_runs, 0, -1))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        runs = [entry.rpartition(b":") for entry in entries]
        if known is None:
            return min((int(seq) for _, _, seq in runs), default=None)
        ids = [run for run, _, _ in runs]
        if known not in ids:
            # Pushed out by many restarts, or lost with the data: either way
            # what this process saw cannot be shown to have survived.
            return -1
        position = len(ids) - ids[::-1].index(known)
        if read in ids[: position - 1] and read not in ids[position:]:
            return _EARLIER
        return min((int(seq) for _, _, seq in runs[position:]), default=-1)

    def ping(self) -> bool:
        """True when the server holding the revocations answers (on a Cluster: its slot's primary)."""
        try:
            return bool(_server_of(self._client, self._layout.rv).ping())
        except _ERRORS:
            return False

    def meta(self) -> dict[str, str]:
        """The raw rv:meta hash, for `doctor` and readiness."""
        try:
            raw = cast("dict[bytes, bytes]", self._client.hgetall(self._layout.rv_meta))
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return {k.decode(): v.decode() for k, v in raw.items()}

    # -- writing -----------------------------------------------------------

    def stamp(self, revocation: Revocation) -> Revocation:
        """Fill in the expiry a revocation's entry gets: never past the longest token life.

        A token pasted into the reason is masked: revocations are listed back
        to whoever may revoke, and a token string is never shown.
        """
        # Kept past the last moment a token it touches can verify by two
        # leeways: one that verifiers honour past expiry, one for the skew
        # between the clock that prunes (the writer's, a replica's) and theirs.
        keep = 2 * self._leeway
        default = default_expiry(revocation.revoked_at, self._max_lifetime, keep)
        if revocation.kind is RevocationKind.KEY:
            expires_at = NEVER_EXPIRES
        elif revocation.expires_at is None:
            expires_at = default
        else:
            expires_at = min(revocation.expires_at + keep, default)
        return Revocation(
            revocation.kind,
            revocation.subject,
            revocation.revoked_at,
            expires_at,
            mask_tokens(revocation.reason),
            mask_tokens(revocation.by),
        )

    def write(
        self,
        script: Any,
        revocation: Revocation,
        *,
        extra_keys: Sequence[str] = (),
        extra_args: Sequence[object] = (),
    ) -> int:
        """Run a recording script for `revocation`; return its sequence number once durable."""
        self.ensure_epoch()
        layout = self._layout
        assert revocation.expires_at is not None
        try:
            reply = self.confirmed(
                script,
                keys=[
                    layout.rv,
                    layout.rv_expiry,
                    layout.rv_meta,
                    layout.rv_events,
                    layout.rv_runs,
                    *extra_keys,
                ],
                args=[
                    self.watch.epoch,
                    revocation.field(),
                    revocation.value(),
                    revocation.expires_at,
                    int(self._clock()),
                    _STREAM_MAXLEN,
                    _PRUNE_PER_WRITE,
                    *extra_args,
                ],
                what="revocation",
            )
        except UnconfirmedWrite as exc:
            # In force on the primary all the same (and on its way to the
            # replicas): recorded, though the caller only sees an error.
            written: Any = exc.reply  # the script's [seq, server]
            seq, run = int(written[0]), written[1] or None
            self.watch.advance(seq, run)
            for listener in list(self._unrecorded_listeners):
                listener(revocation)
            raise
        seq, run = int(reply[0]), reply[1] or None
        self.watch.advance(seq, run)
        return seq

    def confirmed(
        self, script: Any, *, keys: Sequence[str], args: Sequence[object], what: str
    ) -> Any:
        """Run a control-plane script on the primary; its reply once the replicas confirm the write.

        The script and its WAIT go down one connection, in one pipeline: WAIT
        confirms the writes of the connection it is sent on, so a WAIT sent on
        another pooled connection could confirm an older write instead. On a
        Cluster that connection is to the primary of the control-plane slot
        itself (a Cluster client would send WAIT to some other node).

        Raises:
            UnknownKey: the script found no such root key.
            StoreUnavailable: not written, or written to the primary only
                (`what` names the write in the message).
        """
        try:
            server = _server_of(self._write_client, self._layout.rv)
            wanted = self._replicas_to_wait_for(server)
            pipe = server.pipeline(transaction=False)
            script(keys=list(keys), args=list(args), client=pipe)
            if wanted:
                pipe.wait(wanted, max(1, int(self._wait_timeout * 1000)))
            replies = pipe.execute()
        except redis.ResponseError as exc:
            text = str(exc)
            if "AGENTCAPS_UNKNOWN_KEY" in text:
                raise UnknownKey("no root key by that id") from None
            if "AGENTCAPS_NO_EPOCH" in text or "AGENTCAPS_EPOCH_CHANGED" in text:
                # The store lost its data between our epoch check and the write.
                self.ensure_epoch()
            elif not text.startswith("NOREPLICAS"):
                _relearn_topology(self._write_client)  # MOVED, CLUSTERDOWN: a slot moved
            raise _unavailable(exc) from None
        except _ERRORS as exc:
            _relearn_topology(self._write_client)
            raise _unavailable(exc) from None
        acked = int(replies[1]) if wanted else 0
        if acked < wanted:
            raise UnconfirmedWrite(
                f"{what} written to the primary but confirmed by {acked} of {wanted} replicas; "
                "it is not acknowledged",
                replies[0],
            )
        return replies[0]

    def _replicas_to_wait_for(self, server: redis.Redis) -> int:
        """How many replicas must confirm a write: as configured, else as many as `server` has connected."""
        if self._wait_replicas is not None:
            return max(0, self._wait_replicas)
        if not self._count_replicas:
            return 0
        info = server.info("replication")
        return int(info.get("connected_slaves", 0))

    def reserve_self_revocation(
        self, path: Sequence[str], *, until: int, limit: int, total: int
    ) -> bool:
        """Reserve a place for branch `path` (token id, delegation ids) revoked by itself; False when none is left.

        Any holder can delegate offline and revoke the new branch with it, as
        often as it likes: each distinct branch takes a place (one already
        counted takes none). The branches made by one holder (the children of
        one branch, or the first-level ones of the token's first holder) have
        `limit` places, so no holder spends its siblings'; the token has
        `total` in all, which bounds what any holder can store. The places
        are kept until `until`, when no entry of the token can live.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        base = self._layout.rv_self + path[0]
        keys = [f"{base}:g:{'/'.join(path[1:-1])}", base + ":all"]
        try:
            reply = self._reserve(keys=keys, args=["/".join(path), limit, total, until])
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return int(cast("int", reply)) >= 0

    def revoke(self, revocation: Revocation) -> Revocation:
        """Record a revocation; return it as stored, once Redis (and its replicas) have it.

        A key revocation goes through RedisKeyStore.revoke, which also marks the key.

        Raises:
            StoreUnavailable: not recorded, or not confirmed durable.
        """
        if revocation.kind is RevocationKind.KEY:
            raise InvalidArgument("revoke a root key through the key store (keys.revoke)")
        stamped = self.stamp(revocation)
        self.write(self._script, stamped)
        return stamped

    # -- reading -----------------------------------------------------------

    def _read_meta(self, client: Any) -> Any:
        """HMGET epoch, recovery, seq, run: the list from a client, queued on a pipeline."""
        return client.hmget(self._layout.rv_meta, *META_FIELDS)

    def check(self, facts: TokenFacts) -> Reason | None:
        """Ask Redis, in one round trip, whether anything revokes this token."""
        fields = fields_for(facts)
        floor = self.watch.seq
        try:
            pipe = self._client.pipeline(transaction=False)
            # Entries first, then the meta: a loss that emptied the entries
            # before they were read shows in the meta read after them.
            pipe.hmget(self._layout.rv, fields)
            self._read_meta(pipe)
            values, (epoch, recovery, seq, run) = pipe.execute()
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        self.observe(epoch, recovery, seq, floor, run)
        try:
            index = RevocationIndex.of(zip(fields, values))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # An entry this version cannot read: what it revokes is unknown.
            raise StoreUnavailable(
                f"a revocation entry cannot be read ({type(exc).__name__})"
            ) from None
        return index.check(facts)

    def list(self) -> list[Revocation]:
        """Every live revocation, newest first."""
        now = int(self._clock())
        return sorted(
            (Revocation.from_entry(f, v) for f, v in self.entries(now).items()),
            key=lambda r: r.revoked_at,
            reverse=True,
        )

    def entries(self, now: int) -> dict[bytes, bytes]:
        """Every live entry, field -> value, read in chunks so Redis never stalls."""
        out: dict[bytes, bytes] = {}
        try:
            for f, v in self._client.hscan_iter(self._layout.rv, count=_SCAN_COUNT):
                if entry_times(v)[1] > now:
                    out[f] = v
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        return out

    def snapshot(self) -> tuple[bytes | None, bytes | None, int, bytes]:
        """(epoch, recovery, seq, last stream id), read atomically and checked."""
        layout = self._layout
        floor = self.watch.seq
        try:
            pipe = self._client.pipeline(transaction=True)
            self._read_meta(pipe)
            pipe.xrevrange(layout.rv_events, count=1)
            (epoch, recovery, seq, run), last = pipe.execute()
        except _ERRORS as exc:
            raise _unavailable(exc) from None
        self.observe(epoch, recovery, seq, floor, run)
        return epoch, recovery, int(seq or 0), last[0][0] if last else b"0-0"


class ReplicaRevocationStore:
    """Checks revocations against a local index kept current from the event stream.

    A background thread loads every entry, then follows the stream with a
    blocking read. Each answered read confirms the index as of when it was
    sent; a check made more than `staleness` seconds after the last
    confirmation fails closed (`revocation_unavailable`), as does one made
    after a detected loss. A gap in the event sequence (the stream was
    trimmed past us) or a move to an operator's recovery epoch triggers a
    full reload; a dropped connection resumes from the last event applied.
    """

    local = True  # checks read the in-process index: no I/O

    def __init__(
        self,
        store: RedisRevocationStore,
        follow_client: Client,
        *,
        layout: Layout,
        staleness: float = 2.0,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._client = follow_client
        self._layout = layout
        self._staleness = staleness
        self._clock = clock
        self._block_ms = max(10, int(staleness * 1000 / 4))
        self.index = RevocationIndex()
        self._confirmed_at = float("-inf")
        self._last_id = b"0-0"
        self._applied_seq = 0  # the sequence the index is complete up to
        self._reload_needed = True
        # A recovery epoch is a new store: nothing applied from the old one
        # says where to resume in it (a follower disconnected through the
        # loss takes in the recovery without ever seeing the loss).
        store.watch.on_recovery(self._reload_soon)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="agentcaps-revocation-replica", daemon=True
        )
        self._thread.start()

    @property
    def watch(self) -> EpochWatch:
        return self._store.watch

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first full load is done; False on timeout."""
        return self._ready.wait(timeout)

    def lag(self) -> float:
        """Seconds since the index was last confirmed current."""
        return time.monotonic() - self._confirmed_at

    def check(self, facts: TokenFacts) -> Reason | None:
        """Judge against the local index, if it is known to be fresh."""
        if self.watch.lost is not None:
            raise RevocationStateLost(self.watch.lost)
        if self._stop.is_set():
            raise StoreUnavailable("revocation replica is closed")
        if time.monotonic() - self._confirmed_at > self._staleness:
            raise StoreUnavailable("revocation replica is staler than its bound")
        return self.index.check(facts)

    def revoke(self, revocation: Revocation) -> Revocation:
        """Record through Redis; the stream brings it back into every replica."""
        return self._store.revoke(revocation)

    def list(self) -> list[Revocation]:
        return self._store.list()

    def close(self) -> None:
        """Stop following; checks fail closed from now on."""
        self._stop.set()
        self._thread.join(timeout=self._block_ms / 1000 + 1.0)
        self._confirmed_at = float("-inf")

    # -- the follower thread -------------------------------------------------

    def _reload(self) -> None:
        # Cleared first: a recovery taken in while this runs sets it again.
        # A reload that fails is still needed.
        self._reload_needed = False
        try:
            self._load_all()
        except BaseException:
            self._reload_needed = True
            raise

    def _load_all(self) -> None:
        started = time.monotonic()
        epoch, _recovery, seq, last_id = self._store.snapshot()
        entries = self._store.entries(int(self._clock()))
        # The entries are read after the snapshot, in chunks: read the meta
        # again, so that a store emptied meanwhile (FLUSHALL, a restart) is
        # seen as lost instead of loading as "nothing revoked", and one
        # replaced meanwhile (a recovery) is read again.
        if self._store.snapshot()[0] != epoch:
            self._reload_needed = True
            return
        index: dict[bytes, tuple[int, int]] = {f: entry_times(v) for f, v in entries.items()}
        self.index.replace(index)
        self._last_id = last_id
        self._applied_seq = seq
        if self._reload_needed:  # a recovery came while this read: read again, confirm nothing
            return
        self._confirmed_at = started
        self._ready.set()
        log.info("revocation replica loaded %d entries at sequence %d", len(index), seq)

    def _reload_soon(self) -> None:
        self._reload_needed = True

    def _follow_once(self) -> None:
        sent = time.monotonic()
        floor = self.watch.seq
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._layout.rv_meta, *META_FIELDS)
        pipe.xread({self._layout.rv_events: self._last_id}, block=self._block_ms, count=_READ_COUNT)
        (epoch, recovery, seq, run), reply = pipe.execute()
        self._store.observe(epoch, recovery, seq, floor, run)
        if self._reload_needed:  # the reading moved this process to a recovery epoch
            return
        read = 0
        for _stream, events in reply or ():
            for event_id, data in events:
                read += 1
                event_seq = int(data[b"seq"])
                if event_seq > self._applied_seq + 1:
                    # Events went missing between us and the stream: start over.
                    self._reload_needed = True
                    return
                self.index.apply(data[b"field"], data[b"value"])
                self._applied_seq = max(self._applied_seq, event_seq)
                self.watch.advance(event_seq, data.get(b"run") or None)
                self._last_id = event_id
        if int(seq or 0) > self._applied_seq:
            if read >= _READ_COUNT:
                return  # more events wait in the stream: not current yet
            # Redis counted revocations the stream no longer holds after our
            # position (trimmed before we read them, or the stream was
            # replaced): nothing more will arrive for them, so reload.
            log.warning(
                "revocation replica missed events %d..%d; reloading",
                self._applied_seq + 1,
                int(seq or 0),
            )
            self._reload_needed = True
            return
        self._confirmed_at = sent

    def _run(self) -> None:
        backoff = 0.05
        last_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._reload_needed:
                    self._reload()
                self._follow_once()
                backoff = 0.05
                if time.monotonic() - last_prune > 60:
                    self.index.prune(self._clock())
                    last_prune = time.monotonic()
            except RevocationStateLost:
                # Keep watching: a recovery epoch clears the loss.
                self._reload_needed = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except (*_ERRORS, StoreUnavailable) as exc:
                # Resume from the last event applied, not from a full reload:
                # a reload of a large index outlasts the staleness bound, and
                # every check fails closed meanwhile. What a resume cannot
                # bridge shows when it reads: a sequence gap or an event
                # trimmed away (reload), a store that went back (loss).
                log.warning(
                    "revocation replica cannot reach Redis (%s); retrying", type(exc).__name__
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception:
                # Anything else (an entry or event this version cannot read):
                # checks fail closed as the index goes stale; the thread lives
                # on and reloads, so the replica recovers once the data does.
                log.exception("revocation replica failed to apply the store's data; reloading")
                self._reload_needed = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)


@dataclass
class Stores:
    """The stores of one deployment, and how to build a Minter and a Verifier on them."""

    url: str
    settings: Settings
    client: Client
    keys: RedisKeyStore
    revocations: RedisRevocationStore | ReplicaRevocationStore
    store: RedisRevocationStore
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def __repr__(self) -> str:
        # A store URL may carry a password: say where, never how.
        return f"Stores(url={redact_url(self.url)!r}, mode={self.settings.revocation_mode!r})"

    @property
    def memory(self) -> bool:
        """True on the embedded default, where nothing persists."""
        return self.url == MEMORY_URL

    def minter(self, **options: Any) -> Minter:
        """A Minter on these keys and revocations, with the deployment's max ttl unless given."""
        options.setdefault("max_ttl", self.settings.max_ttl)
        # As verifications ask: a replica's index (no round trip a mint)
        # may miss a revocation made in the last moment, and then a token
        # minted in its very second is born revoked, as it was before the
        # minter looked at all.
        options.setdefault("revocations", self.revocations)
        return Minter(self.keys, **options)

    def verifier(self, **options: Any) -> Verifier:
        """A Verifier on these stores, with the deployment's lifetime and leeway unless given."""
        options.setdefault("max_lifetime", self.settings.max_lifetime)
        options.setdefault("leeway", self.settings.leeway)
        return Verifier(self.keys, self.revocations, **options)

    def ping(self) -> bool:
        """True when the Redis server holding the keys and revocations answers."""
        return self.store.ping()

    def close(self) -> None:
        """Stop background work and close connections."""
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()


SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
_SINGLE_SCHEMES = ("redis://", "rediss://", "unix://")
_DEFAULT_PORTS = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}


def redact_url(url: str) -> str:
    """`url` without its passwords: config.redact_url's, and a Sentinel URL's `sentinel_password=`."""
    return re.sub(r"([?&]sentinel_password=)[^&#]*", r"\1***", _redact_url(url))


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """Where a store URL points: one server, the primary a Sentinel group names, or a Cluster.

    `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`
    names the sentinels and the service (the master name they monitor); the
    credentials are the data nodes', and `?sentinel_username=&sentinel_password=`
    are the sentinels' own, if they need any. `redis+cluster://[user:password@]
    host:port[,host:port...]` names nodes to learn the cluster's layout from.
    """

    topology: str  # "single", "sentinel" or "cluster"
    url: str = dataclasses.field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError("a store URL names a host without a name")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ConfigError("a store URL's port must be a number") from None
    if not 0 < port < 65536:
        raise ConfigError("a store URL's port must be between 1 and 65535")
    return host, port


def parse_store_url(url: str) -> StoreAddress:
    """What a store URL names; see StoreAddress for the Sentinel and Cluster forms.

    Raises:
        ConfigError: not a store URL, or one that cannot be used as given.
            The message never repeats the URL (it may hold a password).
    """
    if url == MEMORY_URL:
        raise ConfigError("memory:// has no network client")
    if url.startswith(_SINGLE_SCHEMES):
        return StoreAddress("single", url)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise ConfigError(
            "a store URL starts with redis://, rediss://, unix://, redis+sentinel://, "
            "redis+cluster:// or is memory://"
        )
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = urllib.parse.unquote(user_text) or None
        password = urllib.parse.unquote(password_text) if colon else None
    hosts = tuple(
        _host_port(item.strip(), _DEFAULT_PORTS[scheme])
        for item in hostlist.split(",")
        if item.strip()
    )
    if not hosts:
        raise ConfigError(f"a {scheme}:// URL names at least one host:port")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    allowed = {"sentinel_username", "sentinel_password"} if scheme == SENTINEL_SCHEME else set()
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ConfigError(f"a {scheme}:// URL does not take the option(s) {', '.join(unknown)}")
    segments = [s for s in parts.path.split("/") if s]
    if scheme == CLUSTER_SCHEME:
        if segments not in ([], ["0"]):
            raise ConfigError("a Redis Cluster has only database 0: end the URL at the hosts")
        return StoreAddress("cluster", url, hosts, username=username, password=password)
    if not 1 <= len(segments) <= 2:
        raise ConfigError(
            "a redis+sentinel:// URL names the service after the hosts: "
            "redis+sentinel://host:26379,host2:26379/SERVICE[/DB]"
        )
    service = urllib.parse.unquote(segments[0])
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError:
        raise ConfigError("a redis+sentinel:// URL's database must be a number") from None
    return StoreAddress(
        "sentinel",
        url,
        hosts,
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username", [None])[-1] or None,
        sentinel_password=query.get("sentinel_password", [None])[-1] or None,
    )


def open_sentinels(address: StoreAddress, timeout: float) -> Sentinel:
    """redis-py's Sentinel manager for a `redis+sentinel://` address: short timeouts, no retries."""
    return Sentinel(  # type: ignore[no-untyped-call]
        list(address.hosts),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "username": address.sentinel_username,
            "password": address.sentinel_password,
        },
    )


def open_client(
    address: StoreAddress, timeout: float, *, read_timeout: float | None = None
) -> tuple[Client, Callable[[], None]]:
    """A client for `address` and the function that closes it (and what it opened).

    Socket and connect timeouts are always set, and nothing is retried: a
    retry would only stretch the time a request waits for an answer that
    decides nothing new; verification fails closed instead. A Sentinel client
    asks the sentinels for the primary whenever it opens a connection, so
    after a failover it finds the new one by itself. A Cluster client learns
    the cluster's layout when it is made, and again after a node fails.

    Raises:
        ConfigError: the URL cannot be used.
        StoreUnavailable: no node of a Cluster answered.
    """
    options: dict[str, Any] = {
        "socket_timeout": read_timeout or timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
    }
    if address.topology == "single":
        try:
            single = redis.Redis.from_url(
                address.url, retry=Retry(NoBackoff(), 0), retry_on_timeout=False, **options
            )
        except ValueError:
            # Not redis-py's message: it quotes parts of the URL, which can be
            # a password when the URL is malformed around it.
            raise ConfigError(
                "cannot use the store URL: redis-py cannot read it (check the host, the "
                "port and the database, and percent-encode '/', '#' and '@' in a password)"
            ) from None
        # redis-py hands query options to each connection it makes, which is
        # where an unknown one or a bad value fails: make one now (no I/O) to
        # say so. Named by the option, never its value.
        pool = single.connection_pool
        try:
            pool.connection_class(**pool.connection_kwargs).encoder.encode("")
        except (TypeError, ValueError, LookupError, redis.RedisError) as exc:
            unknown = re.search(r"keyword argument '(\w+)'", str(exc))
            what = f"({unknown.group(1)}) is not one" if unknown else "has a value"
            raise ConfigError(
                f"cannot use the store URL: an option in its query string {what} redis-py "
                f"can use ({type(exc).__name__})"
            ) from None
        return single, single.close
    if address.topology == "sentinel":
        sentinel = open_sentinels(address, timeout)
        primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            address.service,
            db=address.db,
            username=address.username,
            password=address.password,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

        def close() -> None:
            primary.close()
            sentinel.close()

        return primary, close
    try:
        cluster = RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in address.hosts
            ],
            username=address.username,
            password=address.password,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
    except _ERRORS as exc:
        raise _unavailable(exc) from None
    return cluster, cluster.close


def _server_of(client: Client, key: str) -> redis.Redis:
    """The client of the one server that holds `key`: `client`, or a Cluster's primary for its slot."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return client.get_redis_connection(node)
    return client


def _relearn_topology(client: Client) -> None:
    """After a failed write on a Cluster, learn its layout again (a slot may have moved)."""
    if isinstance(client, RedisCluster):
        try:
            client.nodes_manager.initialize()
        except _ERRORS:
            pass  # nothing answers yet; the next write tries again


def connect(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    clock: Clock = time.time,
    **overrides: Any,
) -> Stores:
    """Open the key and revocation stores at `url`.

    `redis://`, `rediss://` and `unix://` reach one real Redis;
    `redis+sentinel://host:26379,host2:26379/SERVICE[/DB]` the primary that
    Redis Sentinel names for SERVICE, found again after a failover;
    `redis+cluster://host:6379,host2:6379` a Redis Cluster (see StoreAddress).
    Socket and connect timeouts are always set (default 250 ms), with no
    retries. `memory://` (also what no URL means) is the embedded default: this
    same code over fakeredis in-process, with a warning that nothing persists
    and, unless one is given, an ephemeral master key. Against a real Redis a
    master key is required.

    Args:
        url: the store URL; defaults to `settings.redis_url`, then memory://.
        settings: deployment settings (default: read from the environment).
        clock: unix time, injected into the stores and their revocations.
        overrides: Settings fields to replace, e.g. revocation_mode="replica".

    Raises:
        ConfigError: a bad URL, or a real Redis without a master key.
        StoreUnavailable: no node of a Redis Cluster answered (a Cluster
            client learns the cluster's layout when it is made).
    """
    settings = dataclasses.replace(settings or Settings.from_env(), **overrides)
    url = url or settings.url
    layout = Layout()
    closers: list[Callable[[], None]] = []
    follow_client: Client | None = None
    if url == MEMORY_URL:
        import fakeredis

        warnings.warn(MEMORY_WARNING, NothingPersistsWarning, stacklevel=2)
        server = fakeredis.FakeServer()
        client: Client = fakeredis.FakeRedis(server=server)
        follow_client = fakeredis.FakeRedis(server=server)
        closers.extend([client.close, follow_client.close])
        master_key = settings.master_key or secrets.token_bytes(MASTER_KEY_BYTES)
        count_replicas = False
        write_client = client
    else:
        address = parse_store_url(url)
        if settings.master_key is None:
            raise ConfigError(
                "a real Redis needs a master key to encrypt root keys at rest: set "
                "AGENTCAPS_MASTER_KEY (64 hex characters) or AGENTCAPS_MASTER_KEY_FILE"
            )
        master_key = settings.master_key
        timeout = settings.redis_timeout
        try:
            client, close = open_client(address, timeout)
            closers.append(close)
            # Writes WAIT for replicas up to _WAIT_TIMEOUT: their socket must
            # wait that long for the answer (how many confirmed), which the
            # verification client's short timeout would cut off.
            write_client, close = open_client(
                address, timeout, read_timeout=_WAIT_TIMEOUT + timeout
            )
            closers.append(close)
            if settings.revocation_mode == "replica":
                # The follower blocks on the stream for up to a quarter of the bound.
                follow_client, close = open_client(
                    address, timeout, read_timeout=settings.replica_staleness + timeout
                )
                closers.append(close)
        except BaseException:
            for closer in reversed(closers):
                closer()
            raise
        count_replicas = True
    store = RedisRevocationStore(
        client,
        layout=layout,
        clock=clock,
        max_lifetime=settings.max_lifetime,
        leeway=settings.leeway,
        wait_replicas=settings.wait_replicas,
        wait_timeout=_WAIT_TIMEOUT,
        count_replicas=count_replicas,
        write_client=write_client,
    )
    keys = RedisKeyStore(client, master_key, layout=layout, clock=clock, revocations=store)
    revocations: RedisRevocationStore | ReplicaRevocationStore = store
    if settings.revocation_mode == "replica":
        assert follow_client is not None
        replica = ReplicaRevocationStore(
            store, follow_client, layout=layout, staleness=settings.replica_staleness, clock=clock
        )
        # Closed in reverse: the follower stops before its connection closes.
        closers.append(replica.close)
        revocations = replica
    return Stores(url, settings, client, keys, revocations, store, closers)
