"""From an HTTP request to what a token must allow: its resource and its action.

The path becomes the resource (`GET /crm/contacts/42` -> `crm/contacts/42`,
action `read`), unless a route rule from a TOML file says otherwise. The path
is normalised once and strictly: it is percent-decoded exactly once, and
anything that a server behind the gateway might read as a *different* path
is refused instead of repaired (encoded slashes and backslashes, NUL and
control characters, `.` and `..` segments, `..;` tricks, empty segments,
double encoding). A refused path is denied with `resource_denied`; it is never
"fixed up" into another path that a token might allow.

Route rules (the file named by AGENTCAPS_ROUTES):

    unmatched = "path"            # or "deny": requests no rule matches are denied

    [actions]                     # optional: method -> action (defaults below)
    OPTIONS = "read"

    [[route]]
    methods = ["GET", "HEAD"]     # optional; default: every method
    path = "/api/v1/{customer}/contacts/*"
    resource = "crm/{customer}/contacts"
    action = "list"               # optional; default: by method

A rule's path is `/`-separated segments: a literal, `*` (one segment), `**`
(any number), or `{name}` (one segment, captured). The resource template may
use captured names and `{path}` (the whole normalised path). The first rule
that matches decides.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from agentcaps.caveats import MAX_RESOURCE_CHARS, check_name, is_canonical_resource
from agentcaps.decision import Reason
from agentcaps.errors import ConfigError, InvalidArgument, NotAllowed

DEFAULT_ACTIONS: Mapping[str, str] = {
    "GET": "read",
    "HEAD": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "delete",
}

_METHOD = re.compile(r"^[A-Z]{1,20}$")
# The longest path whose resource can be allowed: MAX_RESOURCE_CHARS characters,
# each up to four UTF-8 bytes, each byte percent-encoded.
_MAX_PATH_CHARS = 1 + 12 * MAX_RESOURCE_CHARS
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Encoded '/', '\' and NUL: a server may decode them after we have split the path.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PathRefused(NotAllowed):
    """The request path could be read as another resource; it is denied, never repaired."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the request path is refused: {detail}", Reason.RESOURCE_DENIED)


class Target(NamedTuple):
    """What a request asks for, as a token sees it."""

    resource: str
    action: str


def path_segments(target: str) -> tuple[str, ...]:
    """The decoded segments of a request target's path (`/a/b%20c?q` -> `("a", "b c")`).

    Raises:
        PathRefused: a path that is not exactly one unambiguous resource.
    """
    path = target.split("?", 1)[0]
    if len(path) > _MAX_PATH_CHARS:
        # Before any other work: such a path never names a resource a token can allow.
        raise PathRefused(f"longer than {_MAX_PATH_CHARS} characters")
    if "#" in path:
        # A fragment never reaches a server; a "#" that did is a path some
        # servers (uvicorn's h11) keep whole, and must not be judged cut short.
        raise PathRefused("a '#'")
    if not path.startswith("/"):
        raise PathRefused("it does not start with '/'")
    if not path.isascii() or not path.isprintable():
        raise PathRefused("raw non-ASCII or control characters")
    if "\\" in path:
        raise PathRefused("a backslash")
    # Most paths have no escapes: their segments are already what they say.
    encoded = "%" in path
    if encoded and _ENCODED_SEPARATOR.search(path):
        raise PathRefused("an encoded '/', '\\' or NUL")
    if encoded and _BAD_ESCAPE.search(path):
        raise PathRefused("a '%' that is not followed by two hex digits")
    if path == "/":
        return ()
    segments = []
    for raw in path[1:].split("/"):
        segment = _decoded(raw) if encoded else raw
        # "..;x" is ".." to servers that strip path parameters.
        if segment.split(";", 1)[0] in ("", ".", ".."):
            raise PathRefused("an empty, '.' or '..' segment")
        segments.append(segment)
    return tuple(segments)


def _bounded(resource: str) -> str:
    """`resource`, if a token could allow it: no resource is longer than MAX_RESOURCE_CHARS."""
    if len(resource) > MAX_RESOURCE_CHARS:
        raise PathRefused(f"its resource is longer than {MAX_RESOURCE_CHARS} characters")
    return resource


def _decoded(raw: str) -> str:
    """One percent-encoded path segment, decoded; raise PathRefused for anything ambiguous."""
    try:
        segment = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("percent-encoded bytes that are not UTF-8") from None
    if not segment.isprintable():
        raise PathRefused("an encoded control character")
    if "%" in segment:
        raise PathRefused("double percent-encoding")
    return segment


def _segment_regex(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    if not pattern.startswith("/"):
        raise ConfigError(f"route path {pattern!r} must start with '/'")
    out: list[str] = []
    names: list[str] = []
    parts = [] if pattern == "/" else pattern[1:].split("/")
    for part in parts:
        named = _PLACEHOLDER.fullmatch(part)
        if part == "**":
            out.append("(?:/[^/]+)*")
        elif part == "*":
            out.append("/[^/]+")
        elif named:
            name = named.group(1)
            if name in names or name == "path":
                raise ConfigError(f"route path {pattern!r} names {{{name}}} twice or reserves it")
            names.append(name)
            out.append(f"/(?P<{name}>[^/]+)")
        elif part in ("", ".", "..") or "*" in part or "{" in part or "}" in part:
            raise ConfigError(f"route path {pattern!r} has a bad segment {part!r}")
        else:
            out.append("/" + re.escape(part))
    return re.compile("".join(out)), tuple(names)


@dataclass(frozen=True)
class Route:
    """One rule: which requests it matches and what they ask for."""

    methods: frozenset[str] | None
    path: str
    resource: str
    action: str | None
    regex: re.Pattern[str]

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.methods is not None and method not in self.methods:
            return None
        found = self.regex.fullmatch(path)
        return None if found is None else found.groupdict()


class Rules:
    """How requests map to (resource, action): route rules first, then the path itself.

    Args:
        routes: rules, first match wins.
        actions: method -> action (default: read, write, delete).
        unmatched: "path" (the path is the resource) or "deny".
    """

    def __init__(
        self,
        routes: tuple[Route, ...] = (),
        *,
        actions: Mapping[str, str] = DEFAULT_ACTIONS,
        unmatched: str = "path",
    ) -> None:
        if unmatched not in ("path", "deny"):
            raise ConfigError('unmatched must be "path" or "deny"')
        self.routes = routes
        self.actions = dict(actions)
        self.unmatched = unmatched

    def action_for(self, method: str) -> str:
        """The action of an HTTP method; unknown methods are their own lowercase name."""
        action = self.actions.get(method)
        if action is not None:
            return action
        if not _METHOD.fullmatch(method):
            raise PathRefused("a method that is not a plain word")
        return method.lower()

    def resolve(self, method: str, target: str) -> Target:
        """The resource and action a request asks for.

        Raises:
            PathRefused: the path is ambiguous, or no rule matches and unmatched is "deny".
        """
        method = method.upper()
        segments = path_segments(target)
        whole = "/".join(segments)
        path = "/" + whole if segments else ""
        for route in self.routes:
            captured = route.match(method, path)
            if captured is None:
                continue
            captured["path"] = whole
            resource = _fill(route.resource, captured)
            return Target(_bounded(resource), route.action or self.action_for(method))
        if self.unmatched == "deny":
            raise PathRefused("no route rule matches it")
        return Target(_bounded(whole), self.action_for(method))

    @classmethod
    def load(cls, path: str | Path) -> Rules:
        """Rules from a TOML file.

        Raises:
            ConfigError: the file cannot be read or does not describe rules.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the route rules {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the route rules {path} are not TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Rules:
        """Rules from parsed TOML. Raises ConfigError."""
        unknown = set(data) - {"unmatched", "actions", "route"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}")
        actions = dict(DEFAULT_ACTIONS)
        raw_actions = data.get("actions", {})
        if not isinstance(raw_actions, dict):
            raise ConfigError("[actions] must be a table")
        for method, action in raw_actions.items():
            actions[_method(method)] = _action(action)
        raw_routes = data.get("route", [])
        if not isinstance(raw_routes, list):
            raise ConfigError("route must be an array of tables ([[route]])")
        unmatched = data.get("unmatched", "path")
        if not isinstance(unmatched, str):
            raise ConfigError('unmatched must be "path" or "deny"')
        return cls(tuple(_route(r) for r in raw_routes), actions=actions, unmatched=unmatched)


def _fill(template: str, values: Mapping[str, str]) -> str:
    """A resource template with its `{name}` placeholders replaced."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _method(value: object) -> str:
    if not isinstance(value, str) or not _METHOD.fullmatch(value.upper()):
        raise ConfigError(f"{value!r} is not an HTTP method")
    return value.upper()


def _action(value: object) -> str:
    try:
        return check_name(value, "action")
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None


def _route(raw: object) -> Route:
    if not isinstance(raw, dict):
        raise ConfigError("each [[route]] must be a table")
    unknown = set(raw) - {"methods", "method", "path", "resource", "action"}
    if unknown:
        raise ConfigError(f"unknown route keys {sorted(unknown)}")
    path, resource = raw.get("path"), raw.get("resource")
    if not isinstance(path, str) or not isinstance(resource, str):
        raise ConfigError("each [[route]] needs a path and a resource (strings)")
    regex, names = _segment_regex(path)
    used = set(_PLACEHOLDER.findall(resource))
    if not used <= {*names, "path"}:
        raise ConfigError(f"resource {resource!r} uses names its path does not capture")
    if "path" not in used and not is_canonical_resource(_PLACEHOLDER.sub("x", resource)):
        raise ConfigError(f"resource {resource!r} is not a resource (empty, '.' or '..' segment)")
    methods: frozenset[str] | None = None
    if "method" in raw and "methods" in raw:
        raise ConfigError("give method or methods, not both")
    if "method" in raw:
        methods = frozenset({_method(raw["method"])})
    elif "methods" in raw:
        listed = raw["methods"]
        if not isinstance(listed, list) or not listed:
            raise ConfigError("methods must be a non-empty list")
        methods = frozenset(_method(m) for m in listed)
    action = _action(raw["action"]) if "action" in raw else None
    return Route(methods, path, resource, action, regex)
