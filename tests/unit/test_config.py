"""Settings from the environment: bounds, the master key file, and URLs that never show a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import agentcaps
from agentcaps import ConfigError
from agentcaps.config import (
    Settings,
    audit_writer_mode,
    parse_audit,
    read_master_key_file,
    redact_url,
)
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
        "redis://:KEYFILE/SECRET@h:6379/0",
        "http://user:KEYFILE?SECRET#x@h:8080",
        "redis://svc/ops:KEYFILE-SECRET@h:6379/0",
        "redis://svc#1:KEYFILE-SECRET@h:6379/0",
        "redis://svc@corp:KEYFILE-SECRET@h:6379/0",
    ],
)
def test_redact_hides_every_password_option(url: str) -> None:
    assert "SECRET" not in redact_url(url)


@pytest.mark.parametrize("url", ["redis://admin:hunter2/0", "redis://:hunter2/PW@h/0"])
def test_a_url_redis_py_cannot_read_is_refused_without_repeating_it(url: str) -> None:
    """redis-py's own message quotes the part it choked on: here, the password."""
    with pytest.raises(ConfigError) as refused:
        agentcaps.connect(url, settings=Settings(master_key=MASTER_KEY))
    assert "hunter2" not in str(refused.value)


def test_a_url_option_redis_py_does_not_know_is_a_configuration_error() -> None:
    """redis-py passes unknown query options to each connection, which fails later: say so now."""
    url = "redis://:hunter2@127.0.0.1:1/0?colour=blue"
    with pytest.raises(ConfigError, match=r"query string \(colour\) is not one") as refused:
        agentcaps.connect(url, settings=Settings(master_key=MASTER_KEY))
    assert "hunter2" not in str(refused.value) and "blue" not in str(refused.value)
    for option in ("protocol=4", "encoding=bogus-codec"):
        with pytest.raises(ConfigError, match="has a value redis-py can use") as refused:
            agentcaps.connect(
                f"redis://:hunter2@127.0.0.1:1/0?{option}", settings=Settings(master_key=MASTER_KEY)
            )
        assert "hunter2" not in str(refused.value) and "bogus" not in str(refused.value)


@pytest.mark.parametrize("value", ["processes", "Thread", "off", "fork"])
def test_an_audit_writer_other_than_process_or_thread_is_refused(value: str) -> None:
    """AGENTCAPS_AUDIT_WRITER takes process or thread, nothing else."""
    with pytest.raises(ConfigError, match="AGENTCAPS_AUDIT_WRITER must be process or thread"):
        Settings.from_env({"AGENTCAPS_AUDIT_WRITER": value})


def test_a_writer_process_for_the_in_process_stream_is_refused() -> None:
    """memory:// keeps its stream in this process: no writer process can write it."""
    with pytest.raises(ConfigError, match="needs AGENTCAPS_REDIS_URL"):
        Settings.from_env({"AGENTCAPS_AUDIT_WRITER": "process"})
    with pytest.raises(ConfigError, match="needs AGENTCAPS_REDIS_URL"):
        audit_writer_mode("process", parse_audit("redis"), memory=True)


def test_the_audit_writer_is_read_as_given() -> None:
    """process and thread are taken as given; unset leaves the choice to the default."""
    url = "redis://127.0.0.1:6379/0"
    env = {"AGENTCAPS_REDIS_URL": url}
    assert Settings.from_env({**env, "AGENTCAPS_AUDIT_WRITER": "process"}).audit_writer == "process"
    assert Settings.from_env({"AGENTCAPS_AUDIT_WRITER": "thread"}).audit_writer == "thread"
    assert Settings.from_env(env).audit_writer is None
    jsonl = {"AGENTCAPS_AUDIT": "jsonl:-", "AGENTCAPS_AUDIT_WRITER": "process"}
    assert Settings.from_env(jsonl).audit_writer == "process"  # JSON lines reach any process


@pytest.mark.parametrize(
    ("setting", "audit", "memory", "mode"),
    [
        (None, "redis", False, "process"),
        (None, "redis,jsonl:-", False, "process"),
        (None, "redis", True, "thread"),
        (None, "jsonl:-", False, "thread"),
        (None, "off", False, "thread"),
        ("thread", "redis", False, "thread"),
        ("process", "jsonl:-", True, "process"),
    ],
)
def test_the_default_audit_writer_is_a_process_only_for_a_real_redis(
    setting: str | None, audit: str, memory: bool, mode: str
) -> None:
    """Unset: a writer process when the trail writes a real Redis, a thread otherwise."""
    assert audit_writer_mode(setting, parse_audit(audit), memory) == mode


def test_the_service_audience_is_no_gateways_audience() -> None:
    """AGENTCAPS_AUDIENCE=agentcaps would let admin and issuer tokens through the gateway."""
    with pytest.raises(ConfigError, match="cannot be 'agentcaps'"):
        Settings.from_env({"AGENTCAPS_AUDIENCE": "agentcaps"})
