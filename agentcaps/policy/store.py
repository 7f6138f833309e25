"""PolicyStore: the running policy set of one source, replaced only by a set that loads and validates.

A reload reads the folder again, parses and validates it, and swaps the new
set in with one reference assignment (readers take `current` once per
decision, so each decision sees one whole set). A set that fails to read,
parse or validate never replaces the running one: the failure is logged and
kept in `last_error` and `status()`, for /readyz. Reloads come from SIGHUP
(`install_sighup`) or from a `PolicyWatcher` polling the files.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Self

from agentcaps.policy.errors import PolicyError
from agentcaps.policy.folder import PolicyFile, digest, fingerprint, git_commit, read_folder
from agentcaps.policy.policyset import PolicySet, load_policy_set
from agentcaps.policy.schema import PolicyKind

log = logging.getLogger("agentcaps.policy")

Clock = Callable[[], float]
Fingerprint = tuple[tuple[str, int, int], ...] | None


class ReloadResult(NamedTuple):
    """What one reload did: `swapped` a new set in, or kept `version` (with `error` on failure)."""

    swapped: bool
    version: str
    previous_version: str
    error: str | None = None


Listener = Callable[[ReloadResult], None]


class PolicyStore:
    """Holds the running policy set of a folder (or of a fixed text, such as the built-in default).

    Build one with `from_dir` or `from_text`; both load at once and raise
    PolicyError if that first load fails (there is nothing to fall back to).
    Thread-safe: reloads are serialised; readers never block.
    """

    def __init__(
        self,
        kind: PolicyKind,
        *,
        directory: Path | None = None,
        text: str | None = None,
        name: str = "builtin",
        clock: Clock = time.time,
    ) -> None:
        if (directory is None) == (text is None):
            raise ValueError("give a directory or a text, not both")
        self.kind = kind
        self.directory = directory
        self._text = text
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._seen: Fingerprint = None
        self._pending: Fingerprint = None
        self._current = self._load()
        self._loaded_at = clock()
        self._last_error: tuple[str, ...] = ()
        self._last_error_at: float | None = None

    @classmethod
    def from_dir(cls, directory: str | Path, kind: PolicyKind = PolicyKind.MINT) -> PolicyStore:
        """The policies of a folder of *.cedar files.

        Raises:
            PolicyError: the folder cannot be read, or its policies do not parse or validate.
        """
        return cls(kind, directory=Path(directory))

    @classmethod
    def from_text(
        cls, text: str, kind: PolicyKind = PolicyKind.MINT, *, name: str = "builtin"
    ) -> PolicyStore:
        """A fixed policy text (version `<name>-<digest>`); `reload` keeps it as it is.

        Raises:
            PolicyError: the text does not parse or validate.
        """
        return cls(kind, text=text, name=name)

    @property
    def current(self) -> PolicySet:
        """The running policy set."""
        return self._current

    @property
    def version(self) -> str:
        """The running set's version."""
        return self._current.version

    @property
    def source(self) -> str:
        """Where the policies come from: the folder, or the text's name."""
        return str(self.directory) if self.directory is not None else self._name

    @property
    def last_error(self) -> str | None:
        """Why the last reload failed (None when it succeeded): Cedar's messages, one per line."""
        return "\n".join(self._last_error) if self._last_error else None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after each reload that swapped a set in or failed (e.g. to audit it)."""
        self._listeners.append(listener)

    def reload(self) -> ReloadResult:
        """Load the source again; swap the new set in only if it loads and validates.

        Never raises for bad policies: the running set stays and the failure
        is recorded (`last_error`, `status()`) and logged. A set identical to
        the running one (same digest and commit) is not swapped, so caches
        built on the running set stay warm.
        """
        with self._lock:
            previous = self._current
            try:
                new = self._load()
            except PolicyError as exc:
                self._last_error = exc.messages
                self._last_error_at = self._clock()
                result = ReloadResult(False, previous.version, previous.version, str(exc))
                log.warning(
                    "policy reload failed, keeping version %s for %s: %s",
                    previous.version,
                    self.source,
                    "; ".join(exc.messages),
                )
            else:
                self._last_error = ()
                self._last_error_at = None
                if new.version == previous.version:
                    return ReloadResult(False, previous.version, previous.version)
                self._current = new
                self._loaded_at = self._clock()
                result = ReloadResult(True, new.version, previous.version)
                log.info(
                    "policy reloaded for %s: version %s (was %s)",
                    self.source,
                    new.version,
                    previous.version,
                )
        for listener in list(self._listeners):
            try:
                listener(result)
            except Exception:  # a listener (audit, metrics) must not break reloads
                log.exception("policy reload listener failed")
        return result

    def reload_if_changed(self) -> ReloadResult | None:
        """Reload if the folder's files changed since the last load, and have settled; else None.

        A change is loaded at the second call that sees the same files (names,
        sizes, mtimes): a file still being written is not read half-way, where
        a truncated file could parse and drop a forbid. One attempt per change:
        a broken file is not retried until it changes again.
        """
        if self.directory is None:
            return None
        now = fingerprint(self.directory)
        if now == self._seen:
            self._pending = None
            return None
        if now != self._pending:
            self._pending = now
            return None
        self._pending = None
        return self.reload()

    def status(self) -> dict[str, Any]:
        """The running set and the last reload failure, JSON-ready, for /readyz details.

        `ok` is False while the files on disk failed to load: the service still
        runs, on `version`.
        """
        out = self._current.describe()
        out.update(
            ok=not self._last_error,
            loaded_at=int(self._loaded_at),
            last_error=self.last_error,
            last_error_at=int(self._last_error_at) if self._last_error_at else None,
        )
        return out

    def _load(self) -> PolicySet:
        if self.directory is None:
            assert self._text is not None
            files = [PolicyFile(f"{self._name}.cedar", self._text)]
            d = digest(files)
            return load_policy_set(
                files, self.kind, source=self._name, digest=d, version=f"{self._name}-{d}"
            )
        # The fingerprint is taken before reading: a change made while we read
        # shows up as a difference at the next poll.
        self._seen = fingerprint(self.directory)
        files = read_folder(self.directory)
        return load_policy_set(
            files,
            self.kind,
            source=str(self.directory),
            digest=digest(files),
            commit=git_commit(self.directory),
        )


class PolicyWatcher:
    """Polls the stores' folders (names, sizes, mtimes) and reloads those that changed.

    A daemon thread, every `interval` seconds; `start()` and `stop()`, or use
    it as a context manager. A change is loaded once it has stayed the same
    for one interval (`PolicyStore.reload_if_changed`), so within about two
    intervals. Edits that keep a file's size and mtime (within the
    filesystem's timestamp resolution) go unseen: send SIGHUP.
    """

    def __init__(self, stores: Sequence[PolicyStore], interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._stores = [s for s in stores if s.directory is not None]
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[ReloadResult]:
        """Check every folder once; reload those that changed."""
        results = []
        for store in self._stores:
            result = store.reload_if_changed()
            if result is not None:
                results.append(result)
        return results

    def start(self) -> PolicyWatcher:
        """Start polling in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="agentcaps-policy-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive one bad poll
                log.exception("policy watcher poll failed")


SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def install_sighup(*stores: PolicyStore, after: Callable[[], None] | None = None) -> SignalHandler:
    """Reload `stores` on SIGHUP, then call `after`; return the handler that was there before.

    The reload runs in a short-lived thread, not in the signal handler, so a
    slow read or git call never stalls the main thread. A previous Python
    handler is still called. Call from the main thread (Python's rule for
    signal handlers). Where there is no SIGHUP (Windows), does nothing and
    returns None.
    """
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None:  # pragma: no cover - Windows
        return None
    previous = signal.getsignal(sighup)

    def reload_all() -> None:
        for store in stores:
            store.reload()
        if after is not None:
            after()

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=reload_all, name="agentcaps-policy-reload", daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(sighup, on_sighup)
    return previous
