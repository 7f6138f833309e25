"""Policy test cases (TOML): defaults, expectations, deciding policies, and malformed cases."""

from __future__ import annotations

import tomllib

import pytest

from agentcaps.policy import GatewayPolicy, PolicyEngine, PolicyKind, PolicyStore
from agentcaps.policy.cases import run_document

MINT = PolicyEngine.default(3600)
GATEWAY = GatewayPolicy(
    PolicyStore.from_text(
        '@id("allow")\npermit (principal, action, resource);\n'
        '@id("deep")\nforbid (principal, action, resource) when { context.delegation_depth > 1 };',
        PolicyKind.GATEWAY,
    )
)
DEFAULTS = """
[defaults.mint]
issuer = "acme"
user = "alice"
agent = "planner"
resources = ["crm/**"]
actions = ["read"]
purposes = ["sync"]
ttl = 600

[defaults.gateway]
customer = "acme"
user = "alice"
chain = ["planner"]
resource = "crm/1"
action = "read"
"""


def run(toml: str, mint=MINT, gateway=GATEWAY):
    """Results of one TOML document, with the defaults above prepended."""
    return run_document("t.toml", tomllib.loads(DEFAULTS + toml), mint, gateway)


def test_cases_that_hold_pass_and_name_themselves():
    """Mint and gateway cases whose expectation holds are PASS lines with their names."""
    results = run(
        """
[[mint]]
name = "own customer"
expect = "allow"
decided_by = ["builtin:issuer-own-customer"]

[[gateway]]
name = "two deep"
chain = ["a", "b", "c"]
expect = "deny"
decided_by = ["deep"]
"""
    )
    assert [r.line() for r in results] == ["PASS  t.toml: own customer", "PASS  t.toml: two deep"]


def test_a_wrong_expectation_fails_saying_what_happened():
    """expect allow but the policy denies: FAIL, naming the case, the outcome and why."""
    (result,) = run('[[mint]]\nname = "too long"\nttl = 7200\nexpect = "allow"\n')
    assert not result.passed
    assert result.line().startswith("FAIL  t.toml: too long: expected allow, got deny")
    assert "default deny" in result.message


def test_a_wrong_deciding_policy_fails_even_when_the_outcome_holds():
    """decided_by must match the deciding policies exactly; [] means the default deny."""
    (wrong,) = run('[[mint]]\nname = "x"\nexpect = "allow"\ndecided_by = ["builtin:admin"]\n')
    assert not wrong.passed and "decided by builtin:issuer-own-customer" in wrong.message
    (default,) = run(
        '[[mint]]\nname = "y"\nissuer = "globex"\ncustomer = "acme"\n'
        'expect = "deny"\ndecided_by = []\n'
    )
    assert default.passed


def test_admin_in_a_case_replaces_the_default_issuer():
    """admin = true in a case wins over the defaults' issuer; the customer must then be given."""
    (ok,) = run('[[mint]]\nname = "a"\nadmin = true\ncustomer = "initech"\nexpect = "allow"\n')
    assert ok.passed
    (missing,) = run('[[mint]]\nname = "b"\nadmin = true\nexpect = "allow"\n')
    assert not missing.passed and "names its customer" in missing.message


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ('name = "c"\nexpect = "allow"\nexpcet = "deny"', "unknown fields: expcet"),
        ('name = "c"\nexpect = "maybe"', 'expect is "allow" or "deny"'),
        ('name = "c"\nexpect = "allow"\nttl = "600"', "ttl must be a whole number"),
        ('name = "c"\nexpect = "allow"\nactions = "read"', "actions must be a list of strings"),
        ('name = "c"', "missing fields: expect"),
        ('name = "c"\nexpect = "allow"\nissuer = "acme"\nadmin = true', "not both"),
        ('name = "c"\nexpect = "allow"\nissuer = ""', "issuer names a customer"),
    ],
)
def test_malformed_cases_fail_with_the_reason(case, message):
    """A case that cannot run as written is a FAIL saying what is wrong with it."""
    (result,) = run(f"[[mint]]\n{case}\n")
    assert not result.passed and message in result.message


def test_duplicate_names_and_unknown_tables_fail():
    """Two cases with one name, or a table that is neither mint nor gateway, are failures."""
    results = run(
        '[[mint]]\nname = "x"\nexpect = "allow"\n[[mint]]\nname = "x"\nexpect = "allow"\n'
    )
    assert [r.passed for r in results] == [True, False]
    (unknown,) = run_document("t.toml", {"mints": []}, MINT, GATEWAY)
    assert not unknown.passed and "unknown tables: mints" in unknown.message


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('mint = ["x"]\n', "write cases as [[mint]] tables"),
        ("gateway = [1, 2]\n", "write cases as [[gateway]] tables"),
        ('[defaults]\nmint = 5\n[[mint]]\nname = "c"\nexpect = "allow"\n', "[defaults] holds"),
    ],
)
def test_cases_and_defaults_that_are_not_tables_fail_the_file(toml, message):
    """Tables of the wrong shape are a FAIL naming the file's mistake, not an internal error."""
    (result,) = run_document("t.toml", tomllib.loads(toml), MINT, GATEWAY)
    assert not result.passed and message in result.message


def test_gateway_cases_without_a_gateway_policy_fail():
    """A gateway case where no gateway policy exists cannot pass."""
    (result,) = run('[[gateway]]\nname = "g"\nexpect = "allow"\n', gateway=None)
    assert not result.passed and "no gateway policy" in result.message


def test_a_file_without_cases_fails():
    """An empty test file is a failure, not a silent pass."""
    (result,) = run_document("t.toml", {}, MINT, GATEWAY)
    assert not result.passed and "no [[mint]] or [[gateway]] cases" in result.message


def test_gateway_purposes_default_to_the_declared_purpose_and_age_to_zero():
    """purpose = "sync" alone gives purposes ["sync"]; token_age defaults to 0."""
    policy = GatewayPolicy(
        PolicyStore.from_text(
            "permit (principal, action, resource) when "
            '{ context.purposes == ["sync"] && context.token_age == 0 };',
            PolicyKind.GATEWAY,
        )
    )
    (result,) = run('[[gateway]]\nname = "p"\npurpose = "sync"\nexpect = "allow"\n', gateway=policy)
    assert result.passed, result.message
