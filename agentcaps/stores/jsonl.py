"""Audit events as JSON lines, for log shippers: one object per event on stdout or in a file.

Each line is the event's JSON view (`AuditEvent.to_dict`): its fields, its
writer, number, `prev` and `hash`, so that a copy shipped elsewhere carries
the same chain as the Redis stream (`agentcaps audit verify --jsonl FILE`
checks it). The file is opened for appending and flushed after each batch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from agentcaps.audit import Batch, StoredEvent, body_of, decode
from agentcaps.errors import ConfigError, StoreUnavailable


class JsonLinesLog:
    """An AuditLog writing JSON lines to `target`: a path, or `-` for stdout."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stream: IO[str] | None = None

    def append(self, batch: Batch) -> None:
        """Write one line per event.

        Raises:
            StoreUnavailable: the file cannot be opened or written.
        """
        lines = "".join(
            json.dumps(decode(body, hash=digest).to_dict(), separators=(",", ":")) + "\n"
            for body, digest in zip(batch.bodies, batch.hashes, strict=True)
        )
        try:
            stream = self._open()
            stream.write(lines)
            stream.flush()
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot write audit lines to {self.target} ({exc.strerror})"
            ) from None

    def open_now(self) -> None:
        """Open the target at once rather than at the first event: a start-up check.

        Raises:
            ConfigError: it cannot be opened for appending.
        """
        try:
            self._open()
        except OSError as exc:
            raise ConfigError(
                f"cannot write audit lines to {self.target} ({exc.strerror})"
            ) from None

    def _open(self) -> IO[str]:
        if self._stream is None:
            if self.target == "-":
                self._stream = sys.stdout
            else:
                path = Path(self.target)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        return self._stream

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None


def read_jsonl(path: str | Path) -> Iterator[StoredEvent]:
    """The events of a JSON-lines file in their stored form, for `check_chains`.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                view = json.loads(line.decode("utf-8"))
                yield StoredEvent(f"line {number}", body_of(view), str(view.get("hash")))
            # Whatever a line holds (bad UTF-8, nesting past the parser's
            # depth, numbers msgpack cannot carry), it is one unreadable event.
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
                yield StoredEvent(f"line {number}", b"", "")
