"""The README's service quick start works as printed (on a free port instead of 8080)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.service import clean_env
from tests.servers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- quickstart:service -->\s*```sh\n(.*?)```\s*<!-- /quickstart:service -->",
        text,
        re.DOTALL,
    )
    assert found, "the README lost its service quick start"
    return found.group(1)


def test_the_readme_first_command_starts_the_service() -> None:
    """The README's first command installs and runs `agentcaps serve`."""
    text = README.read_text(encoding="utf-8")
    first = re.search(r"```sh\n(.*?)\n", text)
    assert first and first.group(1).split("#")[0].strip() == "pip install -e . && agentcaps serve"
    assert "agentcaps demo" in text


def test_the_service_quick_start_runs_as_printed(tmp_path: Path) -> None:
    """Each curl line of the quick start succeeds: allowed, 200 from forward-auth, then revoked."""
    for tool in ("curl", "jq"):
        if shutil.which(tool) is None:  # pragma: no cover - depends on the machine
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not installed; scripts/test.sh installs it")
            pytest.skip(f"{tool} is not installed")
    port = str(free_port())
    script = quickstart().replace("agentcaps serve", f"agentcaps serve --port {port}")
    script = script.replace("8080", port)
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [
            "bash",
            "-c",
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    decision = json.loads("\n".join(lines[:-3]))
    assert (decision["allowed"], decision["reason"], decision["chain"]) == (True, "ok", ["planner"])
    assert lines[-3:] == ["200", '"token"', '"revoked"']
    assert "NOTHING PERSISTS" in (tmp_path / "agentcaps.log").read_text()
