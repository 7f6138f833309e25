"""PolicyStore: reloads that swap atomically, failures that keep the running set, watcher, SIGHUP."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agentcaps.config import Settings
from agentcaps.policy import (
    MintGrant,
    MintIssuer,
    Policies,
    PolicyEngine,
    PolicyError,
    PolicyStore,
    PolicyWatcher,
    install_sighup,
)

NOW = 1_800_000_000
GRANT = MintGrant("ab" * 16, "acme", "alice", "planner", ("crm/**",), ("read",), ("sync",), 600)
ACME = MintIssuer.issuer("acme")
ALLOW_A = '@id("a")\npermit (principal, action, resource);\n'
ALLOW_B = '@id("b")\npermit (principal, action, resource);\n'
BROKEN = "permit (principal, action, resource) when { ;\n"
INVALID = "permit (principal, action, resource) when { resource.nope == 1 };\n"


def write(directory: Path, text: str, name: str = "p.cedar") -> None:
    """Replace a policy file, moving its mtime on so that pollers notice even within one tick."""
    path = directory / name
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write(tmp_path, ALLOW_A)
    return tmp_path


def test_reload_swaps_in_a_changed_set_and_reports_both_versions(folder):
    """After an edit, reload() runs the new set; the result names the old and new versions."""
    store = PolicyStore.from_dir(folder)
    old = store.version
    write(folder, ALLOW_B)
    result = store.reload()
    assert result.swapped and result.previous_version == old and result.version == store.version
    assert store.version != old
    assert PolicyEngine(store).authorize_mint(ACME, GRANT, NOW).policies == ("b",)


def test_reload_of_unchanged_files_keeps_the_running_set_object(folder):
    """Nothing changed: no swap, so caches built on the running set stay warm."""
    store = PolicyStore.from_dir(folder)
    running = store.current
    result = store.reload()
    assert not result.swapped and store.current is running


@pytest.mark.parametrize("bad", [BROKEN, INVALID], ids=["does-not-parse", "does-not-validate"])
def test_a_bad_set_never_replaces_the_running_one(folder, bad):
    """A reload that does not parse or validate keeps the old set and records why."""
    store = PolicyStore.from_dir(folder)
    running, version = store.current, store.version
    write(folder, bad)
    result = store.reload()
    assert not result.swapped and result.error
    assert store.current is running and store.version == version
    assert store.last_error and "p.cedar" in store.last_error
    assert PolicyEngine(store).authorize_mint(ACME, GRANT, NOW).policies == ("a",)


def test_status_shows_the_failure_until_a_good_reload(folder):
    """status(): ok False with the error while the files are bad; ok again once they are fixed."""
    store = PolicyStore.from_dir(folder)
    status = store.status()
    assert status["ok"] and status["last_error"] is None and status["policies"] == 1
    assert status["version"] == store.version and status["files"] == ["p.cedar"]
    write(folder, BROKEN)
    store.reload()
    status = store.status()
    assert not status["ok"]
    assert "does not parse" in status["last_error"]
    assert status["version"] == store.version
    write(folder, ALLOW_B)
    store.reload()
    assert store.status()["ok"] and store.last_error is None


def test_a_first_load_that_fails_raises(tmp_path):
    """With no running set to keep, a bad folder at start is a PolicyError."""
    write(tmp_path, BROKEN)
    with pytest.raises(PolicyError, match="does not parse"):
        PolicyStore.from_dir(tmp_path)


def test_listeners_hear_swaps_and_failures_not_no_ops(folder):
    """subscribe(): called after a swap and after a failure; a failing listener breaks nothing."""
    store = PolicyStore.from_dir(folder)
    heard = []
    store.subscribe(lambda r: 1 / 0)
    store.subscribe(heard.append)
    store.reload()
    write(folder, ALLOW_B)
    store.reload()
    write(folder, BROKEN)
    store.reload()
    assert [(r.swapped, r.error is not None) for r in heard] == [(True, False), (False, True)]


def test_readers_see_whole_sets_while_reloads_swap(folder):
    """Decisions made during many reloads each come from one whole set: version and ids agree."""
    store = PolicyStore.from_dir(folder)
    engine = PolicyEngine(store)
    versions = {}
    for text, pid in ((ALLOW_A, "a"), (ALLOW_B, "b")):
        write(folder, text)
        store.reload()
        versions[store.version] = (pid,)
    stop = threading.Event()
    seen: list[tuple[str, tuple[str, ...]]] = []

    def read() -> None:
        # A short pause between decisions lets the reloading thread run: a
        # tight loop would starve it of the GIL and make this test crawl.
        while not stop.wait(0.0005):
            d = engine.authorize_mint(ACME, GRANT, NOW)
            seen.append((d.version, d.policies))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            write(folder, ALLOW_A if i % 2 else ALLOW_B)
            store.reload()
    finally:
        stop.set()
        reader.join()
    assert seen
    assert all(versions[version] == policies for version, policies in seen)


def settled(store: PolicyStore):
    """Two polls, as the watcher makes them: the first notes a change, the second loads it."""
    first = store.reload_if_changed()
    assert first is None
    return store.reload_if_changed()


def test_reload_if_changed_reloads_only_after_a_change_and_not_again_after_a_failure(folder):
    """The poll reloads on a changed fingerprint, once: a broken file is not retried every poll."""
    store = PolicyStore.from_dir(folder)
    assert store.reload_if_changed() is None
    write(folder, BROKEN)
    assert settled(store).error
    assert store.reload_if_changed() is None
    write(folder, ALLOW_B)
    assert settled(store).swapped


def test_a_change_still_in_progress_is_not_loaded(folder):
    """A file that changes again between two polls is waited for, not read half-written."""
    store = PolicyStore.from_dir(folder)
    write(folder, '@id("b")\npermit (principal, action')
    assert store.reload_if_changed() is None
    write(folder, ALLOW_B)
    assert store.reload_if_changed() is None
    assert store.reload_if_changed().swapped
    assert store.current.ids == ("b",) and store.last_error is None


def test_a_new_file_or_a_removed_file_is_a_change(folder):
    """Adding or deleting a policy file changes the fingerprint and reloads."""
    store = PolicyStore.from_dir(folder)
    write(folder, ALLOW_B, "q.cedar")
    assert settled(store).swapped
    (folder / "q.cedar").unlink()
    assert settled(store).swapped
    assert store.current.ids == ("a",)


def test_watcher_thread_reloads_after_a_file_changes(folder):
    """A running PolicyWatcher picks an edit up within a few intervals."""
    store = PolicyStore.from_dir(folder)
    old = store.version
    with PolicyWatcher([store], interval=0.02):
        write(folder, ALLOW_B)
        deadline = time.monotonic() + 5
        while store.version == old and time.monotonic() < deadline:
            time.sleep(0.01)
    assert store.current.ids == ("b",)


def test_text_stores_never_change_on_reload():
    """A store built from text (the built-in default) reloads to itself."""
    store = PolicyStore.from_text(ALLOW_A)
    assert not store.reload().swapped and store.reload_if_changed() is None
    assert store.version.startswith("builtin-")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_sighup_reloads_the_stores(folder):
    """install_sighup: a SIGHUP to this process reloads; the previous handler is given back."""
    store = PolicyStore.from_dir(folder)
    previous = install_sighup(store)
    try:
        write(folder, ALLOW_B)
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while store.current.ids != ("b",) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.current.ids == ("b",)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_policies_from_settings_use_the_folders_and_find_gateway_inside(folder, tmp_path):
    """AGENTCAPS_POLICY_DIR loads the folder; its gateway/ subfolder becomes the gateway policy."""
    (folder / "gateway").mkdir()
    write(folder / "gateway", "forbid (principal, action, resource);\n")
    policies = Policies.from_settings(Settings.from_env({"AGENTCAPS_POLICY_DIR": str(folder)}))
    assert policies.engine.store.directory == folder
    assert policies.gateway is not None and policies.gateway.store.directory == folder / "gateway"
    status = policies.status()
    assert status["ok"] and status["mint"]["version"] == policies.engine.version


def test_a_gateway_folder_added_after_start_up_is_reported_not_ignored(folder, caplog):
    """Until a restart brings it in, /readyz's status and a reload's log say it is not enforced."""
    policies = Policies.from_settings(Settings.from_env({"AGENTCAPS_POLICY_DIR": str(folder)}))
    assert policies.gateway is None and policies.status()["gateway"] is None
    (folder / "gateway").mkdir()
    write(folder / "gateway", "forbid (principal, action, resource);\n")
    status = policies.status()
    assert not status["ok"] and "not enforced until a restart" in status["gateway"]["last_error"]
    policies.reload()
    assert "not enforced until a restart" in caplog.text


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_a_sighup_reload_logs_a_gateway_folder_added_after_start_up(folder, caplog):
    """The service reloads on SIGHUP (Policies.install_sighup): that reload says so too."""
    policies = Policies.from_settings(Settings.from_env({"AGENTCAPS_POLICY_DIR": str(folder)}))
    (folder / "gateway").mkdir()
    write(folder / "gateway", "forbid (principal, action, resource);\n")
    previous = policies.install_sighup()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "not enforced until a restart" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "not enforced until a restart" in caplog.text
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("kind", ["dangling link", "file"])
def test_a_gateway_entry_that_is_no_folder_stops_the_start(folder, tmp_path, kind):
    """A `gateway` link to nowhere (a mount that failed) or a file: an error, never no gateway policy."""
    entry = folder / "gateway"
    if kind == "file":
        entry.write_text("forbid (principal, action, resource);\n")
    else:
        entry.symlink_to(tmp_path / "not-mounted")
    with pytest.raises(PolicyError):
        Policies.from_settings(Settings.from_env({"AGENTCAPS_POLICY_DIR": str(folder)}))


def test_policies_from_default_settings_are_the_builtin_default_without_gateway():
    """No folders configured: the built-in mint policy for max_ttl, no gateway policy."""
    policies = Policies.from_settings(Settings(max_ttl=120))
    assert policies.gateway is None
    assert "resource.ttl <= 120" in policies.engine.store.current.files[0].text
    assert policies.status()["gateway"] is None


def test_explicit_gateway_dir_wins_and_a_missing_one_fails(folder, tmp_path):
    """AGENTCAPS_GATEWAY_POLICY_DIR is used as given; a folder that is not there is an error."""
    env = {"AGENTCAPS_GATEWAY_POLICY_DIR": str(tmp_path / "missing")}
    with pytest.raises(PolicyError, match="no such policy folder"):
        Policies.from_settings(Settings.from_env(env))
