"""`agentcaps policy …` as a user runs it: a subprocess, its output and exit status.

The commands run through `agentcaps.cli.main`, with the `policy` group added by
`policy_cli.register` when cli.py does not add it itself yet, so these tests
hold before and after it is wired in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cedarpy
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "policies"

_LAUNCHER = """
import argparse, sys
from agentcaps import cli, policy_cli
build_parser = cli.build_parser
def build():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "policy" not in commands.choices:
        policy_cli.register(commands)
    return parser
cli.build_parser = build
sys.exit(cli.main(sys.argv[1:]))
"""

PERMIT = '@id("allow")\npermit (principal, action, resource);\n'


def agentcaps(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `agentcaps ARGS` with no AGENTCAPS_* settings but `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCAPS_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def assert_errors(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """Failed with `status`, every stderr line an `agentcaps: error:` line, no traceback."""
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("agentcaps: error: ") for line in lines), result.stderr
    return result.stderr


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of examples/policies to change."""
    return Path(shutil.copytree(EXAMPLES, tmp_path / "policies"))


def test_schema_prints_the_mint_schema_and_gateway_schema_on_request():
    """`policy schema` prints a valid Cedar schema with Grant; --gateway the one with Agent."""
    mint = agentcaps("policy", "schema")
    assert mint.returncode == 0 and "entity Grant" in mint.stdout
    cedarpy.Schema.from_str(mint.stdout)
    gateway = agentcaps("policy", "schema", "--gateway")
    assert gateway.returncode == 0 and "entity Agent" in gateway.stdout
    cedarpy.Schema.from_str(gateway.stdout)


def test_show_prints_the_builtin_policy_with_the_deployment_max_ttl():
    """Without a folder, `policy show` prints the built-in policy for AGENTCAPS_MAX_TTL; it parses."""
    result = agentcaps("policy", "show", AGENTCAPS_MAX_TTL="900")
    assert result.returncode == 0, result
    assert "// the built-in mint policy, version builtin-" in result.stdout
    assert "resource.ttl <= 900" in result.stdout and "3600" not in result.stdout
    cedarpy.PolicySet.from_str(result.stdout)


def test_show_prints_the_configured_folder(policies):
    """With AGENTCAPS_POLICY_DIR (or --policy-dir) `policy show` prints that folder's files."""
    by_env = agentcaps("policy", "show", AGENTCAPS_POLICY_DIR=str(policies))
    by_option = agentcaps("policy", "show", "--policy-dir", str(policies))
    assert by_env.returncode == 0 and by_env.stdout == by_option.stdout
    assert "// ---- platform.cedar" in by_env.stdout and '@id("acme-crm")' in by_env.stdout
    assert "builtin" not in by_env.stdout
    default = agentcaps("policy", "show", "--default", AGENTCAPS_POLICY_DIR=str(policies))
    assert "builtin:issuer-own-customer" in default.stdout


def test_validate_accepts_the_examples_and_reports_their_versions():
    """`policy validate examples/policies`: exit 0, one ok line per set with its version."""
    result = agentcaps("policy", "validate", "examples/policies")
    assert result.returncode == 0, result
    assert result.stdout.startswith("ok  mint policies: ")
    assert "ok  gateway policies: " in result.stdout and "version " in result.stdout


def test_validate_a_broken_file_exits_1_with_cedars_message(policies):
    """A policy that does not parse: exit 1, the file named, Cedar's own message, no traceback."""
    (policies / "broken.cedar").write_text("permit (principal, action, resource) when { ;\n")
    stderr = assert_errors(agentcaps("policy", "validate", str(policies)))
    assert "broken.cedar: does not parse: unexpected token `;`" in stderr


def test_validate_a_schema_violation_exits_1_naming_the_policy(policies):
    """A gateway policy reading a context attribute that does not exist: exit 1, policy named."""
    (policies / "gateway" / "typo.cedar").write_text(
        '@id("typo")\nforbid (principal, action, resource) when { context.depth > 2 };\n'
    )
    stderr = assert_errors(agentcaps("policy", "validate", str(policies)))
    assert "gateway/typo.cedar" in stderr and "`typo`" in stderr and "depth" in stderr


def test_validate_a_path_that_is_not_a_folder_is_a_usage_error(tmp_path):
    """DIR must be a folder: exit 2 with one error line."""
    assert_errors(agentcaps("policy", "validate", str(tmp_path / "nope")), status=2)


def test_test_passes_on_the_examples():
    """`policy test examples/policies` (what CI runs): every case passes, exit 0."""
    result = agentcaps("policy", "test", "examples/policies")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert " passed, 0 failed (mint policy " in lines[-1]


def test_test_fails_naming_the_case_whose_expectation_is_wrong(policies):
    """One wrong expectation: exit 1, a FAIL line naming that case, the others still PASS."""
    cases = policies / "tests" / "mint.toml"
    text = cases.read_text()
    marker = 'name = "acme mints a CRM reader for sync"\nexpect = "allow"'
    assert marker in text
    cases.write_text(text.replace(marker, marker.replace('"allow"', '"deny"')))
    result = agentcaps("policy", "test", str(policies))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert failed[0].startswith(
        "FAIL  mint.toml: acme mints a CRM reader for sync: expected deny, got allow: "
        "allowed by policy acme-crm (policy version "
    )
    assert result.stdout.splitlines()[-1].split(" (")[0].endswith("passed, 1 failed")


def test_test_with_broken_policies_exits_1_without_running_cases(policies):
    """Policies that do not validate: exit 1 with Cedar's message, no PASS/FAIL lines."""
    (policies / "broken.cedar").write_text("forbid (")
    result = agentcaps("policy", "test", str(policies))
    assert_errors(result)
    assert "PASS" not in result.stdout


def test_test_without_cases_exits_1(tmp_path):
    """A folder with no tests/*.toml has nothing to check: exit 1, said in one line."""
    (tmp_path / "p.cedar").write_text(PERMIT)
    stderr = assert_errors(agentcaps("policy", "test", str(tmp_path)))
    assert "no test cases" in stderr


def test_fmt_check_reports_then_fmt_rewrites(tmp_path):
    """fmt --check: exit 1 listing the file, unchanged; fmt: rewrites it; then --check passes."""
    (tmp_path / "gateway").mkdir()
    messy = "permit(principal,action,resource)when{context.now>0};\n"
    (tmp_path / "p.cedar").write_text(messy)
    (tmp_path / "gateway" / "g.cedar").write_text(PERMIT)
    check = agentcaps("policy", "fmt", str(tmp_path), "--check")
    assert check.returncode == 1 and f"would reformat {tmp_path / 'p.cedar'}" in check.stdout
    assert (tmp_path / "p.cedar").read_text() == messy
    done = agentcaps("policy", "fmt", str(tmp_path))
    assert done.returncode == 0 and f"reformatted {tmp_path / 'p.cedar'}" in done.stdout
    assert (tmp_path / "p.cedar").read_text() == (
        "permit (principal, action, resource)\nwhen { context.now > 0 };\n"
    )
    assert agentcaps("policy", "fmt", str(tmp_path), "--check").returncode == 0


def test_fmt_rewrites_a_symlinked_file_where_it_points(tmp_path):
    """A policy folder linking a shared file: the shared file is formatted, the link stays."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "cap.cedar").write_text("permit(principal,action,resource);\n")
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "cap.cedar").symlink_to(shared / "cap.cedar")
    assert agentcaps("policy", "fmt", str(folder)).returncode == 0
    assert (folder / "cap.cedar").is_symlink()
    assert (shared / "cap.cedar").read_text() == "permit (principal, action, resource);\n"


def test_fmt_writes_nothing_when_a_file_does_not_parse(tmp_path):
    """One broken file: exit 1 with Cedar's message, and no file is rewritten."""
    messy = "permit(principal,action,resource);\n"
    (tmp_path / "a.cedar").write_text(messy)
    (tmp_path / "b.cedar").write_text("permit (")
    stderr = assert_errors(agentcaps("policy", "fmt", str(tmp_path)))
    assert "b.cedar: does not parse" in stderr
    assert (tmp_path / "a.cedar").read_text() == messy


def test_the_examples_are_formatted():
    """examples/policies is as `policy fmt` writes it."""
    result = agentcaps("policy", "fmt", "examples/policies", "--check")
    assert result.returncode == 0, result.stdout
