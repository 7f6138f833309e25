"""Loading policy folders: parsing, ids, schema validation, versions (digest and git commit)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cedarpy
import pytest

from agentcaps.policy import MINT_SCHEMA, PolicyError, PolicyStore, gateway_schema
from agentcaps.policy.folder import PolicyFile, digest, git_commit, read_folder
from agentcaps.policy.policyset import load_policy_set
from agentcaps.policy.schema import PolicyKind

PERMIT = "permit (principal, action, resource);\n"


def load(files: dict[str, str], kind: PolicyKind = PolicyKind.MINT):
    """A PolicySet from in-memory files."""
    pf = [PolicyFile(name, text) for name, text in files.items()]
    return load_policy_set(pf, kind, source="dir", digest=digest(pf))


def test_both_schemas_parse_as_cedar_schemas():
    """The shipped schemas are valid Cedar schemas."""
    cedarpy.Schema.from_str(MINT_SCHEMA)
    cedarpy.Schema.from_str(gateway_schema(["export"]))


def test_ids_are_annotations_or_file_and_position():
    """@id("x") names a policy x; the others are <file>#<n>, n from 1 within their file."""
    policies = load({"a.cedar": PERMIT + '@id("named")\n' + PERMIT + PERMIT})
    assert policies.ids == ("a.cedar#1", "named", "a.cedar#3")


def test_ids_keep_their_order_past_ten_policies():
    """Positions are numeric, not lexical: policy 10 comes after policy 9."""
    policies = load({"a.cedar": PERMIT * 12})
    assert policies.ids == tuple(f"a.cedar#{n}" for n in range(1, 13))


def test_a_duplicate_id_is_refused_naming_both_places():
    """Two policies with one @id cannot be told apart in a denial: the load fails."""
    with pytest.raises(PolicyError, match="b.cedar#1: the id 'x' is used by another policy"):
        load({"a.cedar": '@id("x")\n' + PERMIT, "b.cedar": '@id("x")\n' + PERMIT})


def test_an_id_with_spaces_or_backticks_is_refused():
    """Ids stay plain so messages quoting them are unambiguous."""
    with pytest.raises(PolicyError, match="not a usable id"):
        load({"a.cedar": '@id("no `ticks` here")\n' + PERMIT})


def test_templates_are_refused():
    """A template (?principal) authorizes nothing until linked; it is refused, not ignored."""
    with pytest.raises(PolicyError, match="templates"):
        load({"a.cedar": "permit (principal == ?principal, action, resource);"})


def test_a_parse_error_names_the_file_with_cedars_message():
    """A file that does not parse: PolicyError naming it, with Cedar's own words."""
    with pytest.raises(PolicyError) as caught:
        load({"bad.cedar": "permit (principal, action, resource) when { ;"})
    assert caught.value.messages == ("dir/bad.cedar: does not parse: unexpected token `;`",)


def test_a_schema_violation_names_the_policy_with_cedars_message():
    """A policy reading an attribute the schema lacks fails validation, naming our id."""
    with pytest.raises(PolicyError) as caught:
        load({"a.cedar": PERMIT + "permit (principal, action, resource) when { resource.nope };"})
    (message,) = caught.value.messages
    assert message.startswith("dir/a.cedar: ")
    assert "`a.cedar#2`" in message and "nope" in message


def test_every_problem_is_reported_in_one_load():
    """A parse error in one file does not hide a schema error in another."""
    with pytest.raises(PolicyError) as caught:
        load(
            {
                "a.cedar": "permit (",
                "b.cedar": "permit (principal, action, resource) when { resource.nope };",
            }
        )
    assert [m.split(":")[0] for m in caught.value.messages] == ["dir/a.cedar", "dir/b.cedar"]


def test_mint_policies_naming_a_gateway_action_fail_validation():
    """Action::"read" is not a mint action: a gateway policy put in the mint folder is caught."""
    with pytest.raises(PolicyError, match="unrecognized action"):
        load({"a.cedar": 'permit (principal, action == Action::"read", resource);'})


def test_gateway_policies_may_name_their_own_actions():
    """Route rules can map requests to any action; gateway policies naming one still validate."""
    policies = load(
        {"g.cedar": 'forbid (principal, action == Action::"export", resource);\n' + PERMIT},
        PolicyKind.GATEWAY,
    )
    assert policies.actions == {"export"}


def test_gateway_policies_are_validated_against_the_gateway_context():
    """context.nope is not in the gateway context: validation fails."""
    with pytest.raises(PolicyError, match="nope"):
        load(
            {"g.cedar": "forbid (principal, action, resource) when { context.nope == 1 };"},
            PolicyKind.GATEWAY,
        )


def test_an_empty_folder_is_a_set_that_denies_everything(tmp_path):
    """No *.cedar files: a valid, empty set (Cedar's default deny)."""
    store = PolicyStore.from_dir(tmp_path)
    assert store.current.ids == ()


def test_only_visible_cedar_files_directly_in_the_folder_are_read(tmp_path):
    """Subfolders, other extensions and hidden files (editor locks) are not policies."""
    (tmp_path / "a.cedar").write_text(PERMIT)
    (tmp_path / ".#a.cedar").write_text("garbage")
    (tmp_path / "notes.txt").write_text("garbage")
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "g.cedar").write_text("garbage")
    assert [f.name for f in read_folder(tmp_path)] == ["a.cedar"]


def test_a_file_that_is_not_utf8_is_a_policy_error(tmp_path):
    """Bytes that are not UTF-8 are refused with the file's name."""
    (tmp_path / "a.cedar").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="a.cedar: not UTF-8"):
        PolicyStore.from_dir(tmp_path)


def test_digest_changes_with_content_and_with_names_not_with_order():
    """The digest covers names and bytes; the file list's order does not matter."""
    a, b = PolicyFile("a.cedar", PERMIT), PolicyFile("b.cedar", PERMIT)
    assert digest([a, b]) == digest([b, a])
    assert digest([a]) != digest([PolicyFile("a.cedar", PERMIT + " ")])
    assert digest([a]) != digest([PolicyFile("c.cedar", PERMIT)])
    assert digest([PolicyFile("ab", "c")]) != digest([PolicyFile("a", "bc")])
    assert len(digest([a])) == 12


def git(directory: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=directory,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_version_carries_the_git_commit_and_marks_uncommitted_changes(tmp_path):
    """In a git repository the version is <digest>@<commit>, with -dirty while files differ."""
    (tmp_path / "a.cedar").write_text(PERMIT)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "a.cedar")
    git(tmp_path, "commit", "-q", "-m", "policies")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    store = PolicyStore.from_dir(tmp_path)
    assert store.version == f"{store.current.digest}@{head[:12]}"
    (tmp_path / "a.cedar").write_text(PERMIT + PERMIT)
    store.reload()
    assert store.version.endswith(f"@{head[:12]}-dirty")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_policy_file_git_ignores_marks_the_version_dirty(tmp_path):
    """A loaded file that git ignores is not the commit's: the version must not claim it is."""
    (tmp_path / "a.cedar").write_text(PERMIT)
    (tmp_path / ".gitignore").write_text("*.local.cedar\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "a.cedar", ".gitignore")
    git(tmp_path, "commit", "-q", "-m", "policies")
    assert not PolicyStore.from_dir(tmp_path).version.endswith("-dirty")
    (tmp_path / "zz.local.cedar").write_text(PERMIT)
    store = PolicyStore.from_dir(tmp_path)
    assert len(store.current.ids) == 2 and store.version.endswith("-dirty")


def test_version_is_the_digest_alone_outside_git_or_without_git(tmp_path, monkeypatch):
    """No repository, or no git binary at all: the version is just the digest."""
    (tmp_path / "a.cedar").write_text(PERMIT)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert git_commit(tmp_path) is None
    store = PolicyStore.from_dir(tmp_path)
    assert store.version == store.current.digest
