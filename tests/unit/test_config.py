"""Settings from the environment: bounds, the master key file, and URLs that never show a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import agentcaps
from agentcaps import ConfigError
from agentcaps.config import Settings, read_master_key_file, redact_url
from tests.conftest import MASTER_KEY


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTCAPS_REDIS_TIMEOUT", "inf"),
        ("AGENTCAPS_REDIS_TIMEOUT", "1e300"),
        ("AGENTCAPS_REPLICA_STALENESS", "nan"),
        ("AGENTCAPS_MAX_LIFETIME", "99999999999999999999"),
        ("AGENTCAPS_MAX_TTL", "99999999999999999999"),
        ("AGENTCAPS_WAIT_REPLICAS", "99999999999999999999"),
        ("AGENTCAPS_AUDIT_MAX_AGE", "99999999999999999999"),
        ("AGENTCAPS_LEEWAY", "-1"),
    ],
)
def test_a_number_no_deployment_means_is_refused_naming_its_variable(name: str, value: str) -> None:
    """Caught when the settings are read, not as an overflow far from its cause."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_master_key_file_holding_text_must_hold_a_key_in_text(tmp_path: Path) -> None:
    """32 bytes of passphrase are not a key; 32 random bytes, or the key's text forms, are."""
    weak = tmp_path / "weak.key"
    weak.write_text("changeme-changeme-changeme-1234\n")  # 32 bytes of text
    with pytest.raises(ConfigError):
        read_master_key_file(str(weak))
    raw = tmp_path / "raw.key"
    key = os.urandom(32)
    while all(32 <= b < 127 or b in b"\t\r\n" for b in key):  # (never, in practice)
        key = os.urandom(32)
    raw.write_bytes(key)
    assert read_master_key_file(str(raw)) == key
    text = tmp_path / "text.key"
    text.write_text(MASTER_KEY.hex() + "\n")
    assert read_master_key_file(str(text)) == MASTER_KEY


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6380/0?ssl_password=KEYFILE-SECRET",
        "redis://h:6379/0?password=KEYFILE-SECRET",
        "redis+sentinel://h:26379/mymaster?sentinel_password=KEYFILE-SECRET",
    ],
)
def test_redact_hides_every_password_option(url: str) -> None:
    assert "KEYFILE-SECRET" not in redact_url(url)


@pytest.mark.parametrize("url", ["redis://admin:hunter2/0", "redis://:hunter2/PW@h/0"])
def test_a_url_redis_py_cannot_read_is_refused_without_repeating_it(url: str) -> None:
    """redis-py's own message quotes the part it choked on: here, the password."""
    with pytest.raises(ConfigError) as refused:
        agentcaps.connect(url, settings=Settings(master_key=MASTER_KEY))
    assert "hunter2" not in str(refused.value)
