"""Input safety: size limits, media types, JSON strictness, field-naming 422s, tokens in URLs."""

from __future__ import annotations

from collections.abc import Iterator

from tests.conftest import SCOPE
from tests.http.conftest import Api, assert_error, bearer

JSON = {"Content-Type": "application/json"}


def test_a_body_over_64_kib_is_413_when_declared(api: Api) -> None:
    """A Content-Length over 64 KiB is refused with 413 before the body is read."""
    body = b'{"token": "' + b"a" * 70_000 + b'"}'
    response = api.client.post("/v1/verify", content=body, headers=JSON)
    assert_error(response, 413, "too_large")


def test_a_body_over_64_kib_is_413_when_streamed_without_length(api: Api) -> None:
    """A chunked body with no Content-Length is counted as it arrives and refused at 64 KiB."""

    def chunks() -> Iterator[bytes]:
        yield b'{"token": "'
        for _ in range(100):
            yield b"a" * 1024
        yield b'"}'

    response = api.client.post("/v1/verify", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too_large")


def test_non_json_bodies_are_415_or_400(api: Api) -> None:
    """No JSON content type → 415; JSON that does not parse, or is not UTF-8 → 400 malformed_json."""
    issuer = bearer(api.issuer())
    form = api.client.post("/v1/tokens", data={"customer": "acme"}, headers=issuer)
    assert_error(form, 415, "unsupported_media_type")
    plain = api.client.post("/v1/verify", content=b"{}", headers={"Content-Type": "text/plain"})
    assert_error(plain, 415)
    for raw in (b"{", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1, "a": 2}', b'"\\ud800"', b"1e999"):
        assert_error(
            api.client.post("/v1/verify", content=raw, headers=JSON), 400, "malformed_json"
        )
    deep = b"[" * 30_000 + b"]" * 30_000
    assert_error(api.client.post("/v1/verify", content=deep, headers=JSON), 400, "malformed_json")


def test_schema_violations_are_422_naming_each_field(api: Api) -> None:
    """Wrong types, unknown fields and missing fields are 422 with the field names."""
    issuer = api.issuer()
    body = {**SCOPE, "ttl": "600", "audiences": ["crm"]}
    del body["agent"]
    out = assert_error(api.post("/v1/tokens", body, issuer), 422, "invalid_request")
    fields = {f["field"] for f in out["fields"]}
    assert fields == {"ttl", "audiences", "agent"}
    assert out["detail"].split(":")[0] in fields
    for bad in ({"resources": []}, {"resources": ["crm/**", 3]}, {"ttl": 0}, {"ttl": 1.5},
                {"ttl": True}, {"user": "a\nb"}, {"user": ""}):  # fmt: skip
        out = assert_error(api.post("/v1/tokens", {**SCOPE, **bad}, issuer), 422)
        assert out["fields"][0]["field"].split(".")[0] == next(iter(bad))
    array = assert_error(api.post("/v1/verify", [1, 2]), 422)
    assert array["fields"][0]["field"] == "body"


def test_422_never_echoes_the_input(api: Api) -> None:
    """Validation errors name fields, never values: a token in a wrong place is not repeated."""
    token = api.agent_token()
    response = api.post("/v1/verify", {"token": token, "resource": "x", "action": 7})
    assert_error(response, 422)
    response = api.post("/v1/revocations", {"token": token, "agent": token}, api.admin)
    assert_error(response, 422)
    assert token not in response.text


def test_a_token_in_the_query_string_is_400(api: Api) -> None:
    """A URL carrying a token, or a token/access_token parameter, is refused before any route."""
    token = api.agent_token()
    for query in (f"?t={token}", "?access_token=x", "?token=", f"?x=%61gc_{token[4:]}"):
        response = api.client.get("/healthz" + query)
        assert_error(response, 400, "token_in_query")
    assert api.client.get("/healthz?verbose=1").status_code == 200


def test_every_response_says_no_store(api: Api) -> None:
    """Success and error responses alike carry Cache-Control: no-store."""
    for response in (
        api.client.get("/healthz"),
        api.client.get("/openapi.json"),
        api.client.get("/nope"),
        api.client.delete("/v1/keys"),
        api.post("/v1/tokens", SCOPE, api.issuer()),
    ):
        assert response.headers["cache-control"] == "no-store"


def test_unknown_routes_and_methods_are_json_errors(api: Api) -> None:
    """404 and 405 come back as {"error", "detail"} like every other error."""
    assert_error(api.client.get("/v2/nothing"), 404, "not_found")
    response = api.client.delete("/v1/tokens")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_an_odd_content_length_is_never_a_500(api: Api) -> None:
    """ "²" passes str.isdigit, and int() refuses thousands of digits: neither is a 500."""
    for declared, status in (
        (b"\xb2", 400),
        (b"0" * 4400 + b"2", 422),  # 2: read, and judged as the {} it is
        (b"9" * 40, 413),
        (b"-1", 400),
    ):
        headers = {**JSON, "Content-Length": declared}
        response = api.client.post("/v1/verify", content=b"{}", headers=headers)
        assert response.status_code == status, (declared[:8], response.text)


def test_a_token_quoted_by_an_error_is_never_answered_back(api: Api) -> None:
    """A token as a JSON key, in a key id or in a path: every error masks it."""
    token = api.agent_token()
    body = {"token": token, "resource": "a", "action": "b", token: 1}
    answers = [
        api.post("/v1/verify", body),
        api.post(f"/v1/keys/{token}/rotate", None, api.admin),
        api.client.get(f"/v1/authz/other/{token}", headers=bearer(token)),
    ]
    for response in answers:
        assert response.status_code in (403, 404, 422), response.text
        assert token not in response.text, response.text
    # Quoted, masked; a key id of no key id's shape is not quoted at all.
    assert "[token]" in answers[0].text and "[token]" in answers[2].text
    assert "no root key by that id" in answers[1].text


def test_a_422_names_the_wrong_field_without_repeating_its_value(api: Api) -> None:
    """As the docs promise: the value may be anything the client pasted."""
    responses = [
        api.get("/v1/audit?since=mysecret-value", api.admin),
        api.post(
            "/v1/tokens/attenuate", {"token": api.agent_token(), "resources": ["mysecret//x"]}
        ),
    ]
    for response in responses:
        assert response.status_code == 422 and "mysecret" not in response.text, response.text
