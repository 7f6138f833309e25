"""The core is pure: importing agentcaps pulls in no store, web or crypto library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("redis", "fakeredis", "starlette", "cryptography", "httpx", "pydantic", "uvicorn")

_PROBE = """
import json, sys
import agentcaps
print(json.dumps(sorted(sys.modules)))
"""


def modules_after_importing_agentcaps() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


def test_import_agentcaps_does_not_import_store_web_or_crypto_libraries():
    """A fresh `import agentcaps` loads no store, web, HTTP client, validation or crypto library."""
    modules = modules_after_importing_agentcaps()
    assert "agentcaps" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
    assert loaded == []


def test_import_agentcaps_does_not_import_the_stores_or_the_service():
    """The core never imports its outer layers: stores, HTTP app or CLI."""
    modules = modules_after_importing_agentcaps()
    outer = sorted(
        m for m in modules if m.startswith(("agentcaps.stores", "agentcaps.http", "agentcaps.cli"))
    )
    assert outer == []
