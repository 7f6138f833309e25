"""Side-by-side timing for the bench scripts: interleaved rounds, gc off, medians, and the result files.

These machines are shared and noisy, so nothing here produces an absolute
figure worth quoting alone: candidates are timed in the same run, round after
round in rotating order (A,B,C, B,C,A, …), and only their medians and the
ratios between them are reported. Benchmarks are never tests.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

# run(loops) performs `loops` iterations and returns the nanoseconds they took,
# timed with perf_counter_ns around the loop only (setup stays outside).
Run = Callable[[int], int]


@dataclass
class Candidate:
    """One thing being timed, and the per-iteration samples it collected."""

    name: str
    run: Run
    loops: int = 1
    samples: list[float] = field(default_factory=list)  # ns per iteration, one per round

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)


def loops_for(estimate_ns: float, batch_ns: float, *, least: int = 20, most: int = 200_000) -> int:
    """How many iterations fill one batch of about `batch_ns`."""
    return max(least, min(most, int(batch_ns / max(estimate_ns, 1.0))))


def estimate_ns(run: Run, loops: int = 200) -> float:
    """A rough ns per iteration, from one short untimed-in-the-results batch."""
    return run(loops) / loops


def interleave(candidates: Sequence[Candidate], rounds: int) -> None:
    """Time every candidate once per round, rotating who goes first; gc off while timing."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            start = r % len(candidates)
            for c in [*candidates[start:], *candidates[:start]]:
                c.samples.append(c.run(c.loops) / c.loops)
            # Collect between rounds, never inside a timed batch.
            gc.collect()
    finally:
        if was_enabled:
            gc.enable()


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank on sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, text: bool = False
) -> str:
    """A GitHub Markdown table, numbers right-aligned (every column left-aligned with `text`)."""

    def align(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    seps = ["---:" if i and not text else "---" for i in range(len(header))]
    return "\n".join([align(header), align(seps), *(align(r) for r in rows)])


def machine() -> dict[str, object]:
    """Where and with what the numbers were measured."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": commit,
    }


def write_results(stem: str, markdown: str, data: dict[str, object]) -> tuple[Path, Path]:
    """Write bench/results/<stem>.md and .json (small: summaries, not raw samples)."""
    RESULTS.mkdir(exist_ok=True)
    md_path, json_path = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    md_path.write_text(markdown.rstrip() + "\n")
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return md_path, json_path
