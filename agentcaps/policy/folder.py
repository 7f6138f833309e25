"""Reading a policy folder: its *.cedar files, a digest of them, and the git commit it sits at.

A folder's policy files are the `*.cedar` files directly inside it (not in
subfolders, not hidden ones such as editors' `.#name.cedar` locks), in name
order. The digest covers every name and every byte, so any edit, rename,
addition or removal changes it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from agentcaps.policy.errors import PolicyError

DIGEST_CHARS = 12
_GIT_TIMEOUT = 5.0


class PolicyFile(NamedTuple):
    """One policy file: its name (no directory) and its text."""

    name: str
    text: str


def policy_paths(directory: Path) -> list[Path]:
    """The policy files of `directory`, in name order.

    Raises:
        PolicyError: the folder does not exist or cannot be listed.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        raise PolicyError(f"{directory}: no such policy folder") from None
    except NotADirectoryError:
        raise PolicyError(f"{directory}: not a folder") from None
    except OSError as exc:
        raise PolicyError(f"{directory}: cannot list it ({exc.strerror})") from None
    names = sorted(
        e.name
        for e in entries
        if e.name.endswith(".cedar") and not e.name.startswith(".") and e.is_file()
    )
    return [directory / name for name in names]


def read_folder(directory: Path) -> list[PolicyFile]:
    """The policy files of `directory` with their text (UTF-8).

    Raises:
        PolicyError: the folder or a file cannot be read.
    """
    files = []
    for path in policy_paths(directory):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read it ({exc.strerror})") from None
        files.append(PolicyFile(path.name, text))
    return files


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """Names, sizes and modification times of the policy files; None if the folder is gone.

    Cheap enough to poll every second: a change here means "reload".
    """
    try:
        paths = policy_paths(directory)
        return tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in paths)
    except (PolicyError, OSError):
        return None


def digest(files: Sequence[PolicyFile]) -> str:
    """A short sha256 over the files' sorted names and contents."""
    h = hashlib.sha256()
    for f in sorted(files):
        data = f.text.encode("utf-8")
        # Lengths make the encoding unambiguous: no two file lists hash alike.
        h.update(b"%d:%s\0%d:" % (len(f.name.encode()), f.name.encode(), len(data)))
        h.update(data)
    return h.hexdigest()[:DIGEST_CHARS]


def git_commit(directory: Path) -> str | None:
    """The commit checked out where `directory` lives, `-dirty` when its files differ from it.

    None when git is missing, the folder is not in a repository, or git does
    not answer in time: the version then rests on the digest alone.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True,
                text=True,
                timeout=_GIT_TIMEOUT,
                check=False,
                env=env,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    # Ignored files count: a loaded policy that git ignores is not the commit's.
    changes = git("status", "--porcelain", "--ignored", "--", ".")
    return commit[:DIGEST_CHARS] + ("-dirty" if changes else "")
