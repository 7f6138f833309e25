"""A fuzz pass over every route with generated bodies, headers and path parameters: never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcaps.http.app import ENDPOINTS
from tests.conftest import SCOPE
from tests.http.conftest import Api

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.sampled_from(["acme", "alice", "planner", "crm/**", "read", "sync", "", " x", "a\nb",
                         "agentcaps", "..", "é" * 300, "**"])  # fmt: skip
field_values = st.one_of(
    names,
    st.lists(names, max_size=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["00" * 16, "ab" * 16, "agc_", "kmissing"]),
    json_values,
)

HEADERS = [
    "X-Original-URI",
    "X-Forwarded-Uri",
    "X-Original-Method",
    "X-Agentcaps-Purpose",
    "X-Agentcaps-Actor",
]

OPERATIONS = [
    (method, endpoint) for endpoint in ENDPOINTS for method in endpoint.methods if method != "HEAD"
]


def valid_bodies(api: Api) -> dict[str, dict[str, Any]]:
    """A good body per request model: mutating one field of it reaches deep into each route."""
    token = api.agent_token()
    return {
        "IssuerRequest": {"customer": "acme", "ttl": 60},
        "MintRequest": dict(SCOPE),
        "AttenuateRequest": {"token": token, "ttl": 60, "delegate_to": "fetcher"},
        "VerifyRequest": {"token": token, "resource": "crm/a", "action": "read"},
        "RevocationRequest": {"token": token},
        "KeyCreateRequest": {"customer": "acme"},
        "KeyRevokeRequest": {"reason": "test"},
        "NoFields": {},
    }


def body_strategy(endpoint: Any, valid: dict[str, dict[str, Any]]) -> st.SearchStrategy[Any]:
    fields = list(endpoint.body.model_fields) if endpoint.body is not None else []
    if not fields:
        return st.one_of(st.none(), st.just({}), json_values)
    good = valid[endpoint.body.__name__]
    structured = st.fixed_dictionaries(
        {}, optional={name: field_values for name in fields + ["extra"]}
    )
    mutated = st.builds(
        lambda name, value, drop: {
            **{k: v for k, v in good.items() if k != drop},
            **({} if value is _DROP else {name: value}),
        },
        st.sampled_from(fields),
        st.one_of(st.just(_DROP), field_values),
        st.sampled_from([None, *good]),
    )
    return st.one_of(st.just(good), mutated, structured, json_values, st.binary(max_size=64))


_DROP = object()


def assert_no_500(response: Any) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        body = response.json()
        assert set(body) >= {"error", "detail"}, body
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "endpoint"), OPERATIONS, ids=[f"{m} {e.path}" for m, e in OPERATIONS]
)
def test_no_generated_request_makes_a_route_fail(api: Api, method: str, endpoint: Any) -> None:
    """Bodies, bearer tokens, path parameters and headers from hypothesis never produce a 500."""
    admin, issuer = api.admin, api.issuer()
    tokens = [admin, admin, issuer, issuer, api.agent_token(), None, "agc_garbage", "x" * 20]

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )
    @given(
        body=body_strategy(endpoint, valid_bodies(api)),
        token=st.sampled_from(tokens),
        param=st.one_of(
            st.sampled_from(["crm/contacts/42", "crm/a", "kmissing", "crm/../x"]),
            st.text(min_size=1, max_size=40),
        ),
        extra=st.dictionaries(
            st.sampled_from(HEADERS),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        ),
        content_type=st.sampled_from(["application/json"] * 6 + ["text/plain", "a/b+json; x=1"]),
    )
    def run(
        body: Any, token: str | None, param: str, extra: dict[str, str], content_type: str
    ) -> None:
        path = endpoint.path.replace("{kid}", quote(param, safe="")).replace(
            "{path:path}", quote(param, safe="/")
        )
        headers = dict(extra)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, bytes):
            content = body
        elif body is None:
            content = b""
        else:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        response = api.client.request(method, path, content=content, headers=headers)
        assert_no_500(response)

    run()
