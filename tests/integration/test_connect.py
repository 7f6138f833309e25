"""connect(): what a URL and settings give, before any real work is done."""

from __future__ import annotations

import pytest

import agentcaps
from agentcaps import ConfigError
from agentcaps.config import Settings
from agentcaps.errors import NothingPersistsWarning
from tests.conftest import MASTER_KEY


def test_a_real_redis_needs_a_master_key() -> None:
    """Without a master key, connect() to a real Redis raises ConfigError instead of storing keys in the clear."""
    with pytest.raises(ConfigError, match="master key"):
        agentcaps.connect("redis://127.0.0.1:1/0", settings=Settings())


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "sentinel://h/0", "file:///tmp/x"])
def test_an_unknown_url_scheme_is_refused(url: str) -> None:
    """Only redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// and memory:// are store URLs."""
    with pytest.raises(ConfigError):
        agentcaps.connect(url, settings=Settings(master_key=MASTER_KEY))


def test_memory_warns_that_nothing_persists() -> None:
    """memory:// (and no URL at all) warns that keys and revocations die with the process."""
    for url in ("memory://", None):
        with pytest.warns(NothingPersistsWarning):
            stores = agentcaps.connect(url, settings=Settings())
        assert stores.memory
        stores.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis://app:hunter2@127.0.0.1:1/0",
        "unix:///tmp/r.sock?password=hunter2",
    ],
)
def test_the_stores_repr_never_shows_a_url_password(url: str) -> None:
    """repr(stores) names the store but hides any password in its URL."""
    stores = agentcaps.connect(url, settings=Settings(master_key=MASTER_KEY))
    try:
        assert "hunter2" not in repr(stores) and "***" in repr(stores)
    finally:
        stores.close()
