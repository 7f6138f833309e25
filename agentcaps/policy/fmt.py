"""`agentcaps policy fmt`: Cedar's own formatting (cedarpy.format_policies), written atomically.

Atomic writes (a temporary file renamed over the old one) matter here: a
running service polls these files, and must never read one half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cedarpy

from agentcaps.policy.errors import PolicyError
from agentcaps.policy.folder import policy_paths

LINE_WIDTH = 80
INDENT = 2


def formatted(text: str, name: str = "<text>") -> str:
    """`text` as Cedar's formatter writes it, ending in one newline.

    Raises:
        PolicyError: the text does not parse.
    """
    try:
        # The parser's message says what is wrong; the formatter's only that something is.
        cedarpy.PolicySet.from_str(text)
        out = cedarpy.format_policies(text, LINE_WIDTH, INDENT)
    except ValueError as exc:
        raise PolicyError(f"{name}: does not parse: {exc}") from None
    out = out.strip("\n")
    return out + "\n" if out.strip() else ""


def format_folder(directory: Path, *, write: bool = True) -> list[Path]:
    """Format every policy file of `directory`; return those that were (or would be) changed.

    Nothing is written if any file does not parse.

    Raises:
        PolicyError: the folder or a file cannot be read, or a file does not parse.
    """
    changes: list[tuple[Path, str]] = []
    problems: list[str] = []
    for path in policy_paths(directory):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read it ({exc})")
            continue
        try:
            new = formatted(text, str(path))
        except PolicyError as exc:
            problems.extend(exc.messages)
            continue
        if new != text:
            changes.append((path, new))
    if problems:
        raise PolicyError(*problems)
    if write:
        for path, new in changes:
            _write_atomically(path, new)
    return [path for path, _ in changes]


def _write_atomically(path: Path, text: str) -> None:
    # A symlinked policy file is rewritten where it points: replacing the
    # link itself would leave its target unformatted and cut the link.
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
