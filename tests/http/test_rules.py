"""Request → (resource, action): strict path normalisation and TOML route rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcaps.errors import ConfigError
from agentcaps.http.rules import PathRefused, Rules, Target, path_segments


@pytest.mark.parametrize(
    ("target", "segments"),
    [
        ("/crm/contacts/42", ("crm", "contacts", "42")),
        ("/crm/contacts/42?expand=1#frag", ("crm", "contacts", "42")),
        ("/crm/a%20b", ("crm", "a b")),
        ("/crm/caf%C3%A9", ("crm", "café")),
        ("/crm/a;v=1", ("crm", "a;v=1")),
        ("/", ()),
    ],
)
def test_plain_paths_decode_once_into_segments(target: str, segments: tuple[str, ...]) -> None:
    """A plain path is percent-decoded exactly once and split on '/'."""
    assert path_segments(target) == segments


@pytest.mark.parametrize(
    "target",
    [
        "/crm/../admin",  # dot-dot
        "/crm/./x",  # dot
        "/crm/%2e%2e/admin",  # encoded dot-dot
        "/crm/%2E%2E/admin",
        "/crm/.%2e/admin",
        "/public/..;/admin",  # Tomcat-style path parameter trick
        "/public/;x/admin",
        "/crm//x",  # empty segment
        "/crm/x/",  # trailing slash
        "/crm%2fadmin",  # encoded slash
        "/crm%2Fadmin",
        "/crm%5cadmin",  # encoded backslash
        "/crm\\admin",  # backslash
        "/crm/%00",  # NUL
        "/crm/%0a",  # control character
        "/crm/\x01",
        "/crm/%252e%252e/admin",  # double encoding
        "/files/public/a.txt#/../../secret.txt",  # a '#' some servers keep in the path
        "/crm#x",
        "/crm/%zz",  # bad escape
        "/crm/%",
        "/crm/%c3",  # not UTF-8
        "crm/x",  # not absolute
        "http://evil/crm/x",  # absolute form
        "/crm/caf\u00e9",  # raw non-ASCII
        "",
    ],
)
def test_ambiguous_paths_are_refused_never_repaired(target: str) -> None:
    """Anything a server might read as another path is refused with resource_denied."""
    with pytest.raises(PathRefused) as refused:
        path_segments(target)
    assert refused.value.reason == "resource_denied"


def test_methods_map_to_read_write_delete() -> None:
    """GET/HEAD read, POST/PUT/PATCH write, DELETE delete; other methods are their own name."""
    rules = Rules()
    actions = {m: rules.resolve(m, "/a").action for m in
               ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}  # fmt: skip
    assert actions == {"GET": "read", "HEAD": "read", "POST": "write", "PUT": "write",
                       "PATCH": "write", "DELETE": "delete", "OPTIONS": "options"}  # fmt: skip
    with pytest.raises(PathRefused):
        rules.resolve("GET POST", "/a")


def test_route_rules_map_method_and_path_to_resource_and_action(tmp_path: Path) -> None:
    """The first matching [[route]] decides; captures and {path} fill the resource template."""
    config = tmp_path / "routes.toml"
    config.write_text(
        """
unmatched = "path"

[actions]
OPTIONS = "read"

[[route]]
method = "GET"
path = "/api/v1/{customer}/contacts/*"
resource = "crm/{customer}/contacts"
action = "list"

[[route]]
methods = ["POST", "PUT"]
path = "/api/v1/{customer}/**"
resource = "crm/{customer}/writes"

[[route]]
path = "/mirror/**"
resource = "mirror/{path}"
""",
        encoding="utf-8",
    )
    rules = Rules.load(config)
    assert rules.resolve("GET", "/api/v1/acme/contacts/42") == Target("crm/acme/contacts", "list")
    assert rules.resolve("PUT", "/api/v1/acme/deals/7") == Target("crm/acme/writes", "write")
    assert rules.resolve("DELETE", "/api/v1/acme/deals/7") == Target(
        "api/v1/acme/deals/7", "delete"
    )
    assert rules.resolve("OPTIONS", "/mirror/a/b") == Target("mirror/mirror/a/b", "read")
    # A capture is one decoded segment: it cannot smuggle a '/' into the resource.
    with pytest.raises(PathRefused):
        rules.resolve("GET", "/api/v1/acme%2Fother/contacts/1")


def test_unmatched_deny_refuses_requests_no_rule_matches() -> None:
    """With unmatched = "deny", only requests a rule matches get a resource."""
    rules = Rules.from_dict({"unmatched": "deny", "route": [{"path": "/ok/*", "resource": "ok"}]})
    assert rules.resolve("GET", "/ok/1") == Target("ok", "read")
    with pytest.raises(PathRefused):
        rules.resolve("GET", "/other")


@pytest.mark.parametrize(
    "data",
    [
        {"route": [{"path": "/a"}]},
        {"route": [{"path": "a", "resource": "a"}]},
        {"route": [{"path": "/a/{x}", "resource": "a/{y}"}]},
        {"route": [{"path": "/a/../b", "resource": "a"}]},
        {"route": [{"path": "/a/x*", "resource": "a"}]},
        {"route": [{"path": "/a", "resource": "a//b"}]},
        {"route": [{"path": "/a", "resource": "a", "method": "GET", "methods": ["GET"]}]},
        {"route": [{"path": "/a", "resource": "a", "extra": 1}]},
        {"unmatched": "allow"},
        {"actions": {"GET": ""}},
        {"nonsense": 1},
    ],
)
def test_bad_route_rules_are_config_errors(data: dict[str, object]) -> None:
    """A rule file that does not describe rules stops the service from starting."""
    with pytest.raises(ConfigError):
        Rules.from_dict(data)


def test_a_rules_file_that_is_not_toml_is_a_config_error(tmp_path: Path) -> None:
    """Unreadable or non-TOML rule files are ConfigError naming the file."""
    bad = tmp_path / "routes.toml"
    bad.write_text("[[route]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="routes.toml"):
        Rules.load(bad)
    with pytest.raises(ConfigError):
        Rules.load(tmp_path / "missing.toml")
