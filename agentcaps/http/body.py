"""Reading a request body into a model: bounded, strict JSON, validated by pydantic.

The size limit holds whether or not the client sent Content-Length: the
stream is counted as it arrives and reading stops at the limit. JSON is parsed
strictly (no NaN or Infinity, no duplicate keys, no lone surrogates) before
the model sees it, so that a value means one thing only.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from agentcaps.http.errors import (
    BadRequest,
    BodyTooLarge,
    InvalidBody,
    MalformedJson,
    UnsupportedMediaType,
)

MAX_BODY_BYTES = 64 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]+")

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, refusing one over `limit` bytes as soon as that is known.

    Raises:
        BodyTooLarge: declared or streamed over the limit.
        BadRequest: a Content-Length that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        # ASCII digits only (str.isdigit takes "²" too), and few of them: int()
        # refuses thousands of digits, and no body here is that long anyway.
        if not _CONTENT_LENGTH.fullmatch(declared):
            raise BadRequest("Content-Length is not a number")
        digits = declared.lstrip("0")
        if len(digits) > 18 or int(digits or "0") > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body is over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client went away before sending the whole body") from None
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def parse_json(body: bytes) -> object:
    """Strict JSON from UTF-8 bytes.

    Raises:
        MalformedJson: anything that is not one plain JSON value.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite,
        )
        # Lone surrogates ("\ud800") parse, but cannot be stored or echoed as UTF-8.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise MalformedJson("the body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise MalformedJson("the body nests too deeply") from None
    except ValueError as exc:
        raise MalformedJson(f"the body is not JSON: {exc}") from None
    return value


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validate(model: type[Model], value: object, *, strict: bool = True) -> Model:
    """`value` as `model`, or InvalidBody naming each field that is wrong.

    `strict=False` lets text stand for numbers: for query strings, where everything is text.
    """
    try:
        return model.model_validate(value, strict=strict)
    except ValidationError as exc:
        # Only where and what: pydantic's own text would repeat the input,
        # and the input may be a token.
        fields = [
            {"field": _field(error["loc"]), "message": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        first = fields[0]
        detail = f"{first['field']}: {first['message']}"
        if len(fields) > 1:
            detail += f" (and {len(fields) - 1} more)"
        raise InvalidBody(detail, fields=fields) from None


async def parse(request: Request, model: type[Model], *, optional: bool = False) -> Model:
    """The request's JSON body as `model`.

    With `optional`, an empty body stands for `{}` (routes whose fields all have
    defaults, such as `POST /v1/keys`).

    Raises:
        BodyTooLarge (413), UnsupportedMediaType (415), MalformedJson (400),
        InvalidBody (422).
    """
    body = await read_body(request)
    if optional and not body.strip():
        return validate(model, {})
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as JSON (Content-Type: application/json)")
    return validate(model, parse_json(body))


def parse_query(request: Request, model: type[Model]) -> Model:
    """The request's query string as `model` (each parameter at most once).

    Raises:
        InvalidBody (422): a parameter given twice, unknown, or of the wrong shape.
    """
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in values:
            raise InvalidBody(
                f"{name}: given more than once",
                fields=[{"field": name, "message": "given more than once"}],
            )
        values[name] = value
    return validate(model, values, strict=False)
