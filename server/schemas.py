"""Validation of prediction requests: raw body in, list of texts out, or an ApiError."""

from __future__ import annotations

import orjson

from server.errors import ApiError

JSON_TYPES = ("application/json",)


def check_content_type(content_type: str) -> None:
    # aiohttp reports a missing header as application/octet-stream.
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {content_type}",
            reason="unsupported_media_type",
        )


def parse_predict_body(body: bytes, max_texts: int, max_chars: int) -> tuple[list[str], bool]:
    """(texts, single): `{"text": str}` gives one text, `{"texts": [str, ...]}` several."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}", reason="invalid") from None
    if not isinstance(data, dict):
        raise _invalid('request body must be a JSON object with "text" or "texts"')
    unknown = sorted(set(data) - {"text", "texts"})
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)[:200]}")
    if "text" in data and "texts" in data:
        raise _invalid('give either "text" or "texts", not both')
    if "text" in data:
        text = data["text"]
        if not isinstance(text, str):
            raise _invalid(f'"text" must be a string, got {_type(text)}')
        texts, single = [text], True
    elif "texts" in data:
        texts = data["texts"]
        if not isinstance(texts, list):
            raise _invalid(f'"texts" must be a list of strings, got {_type(texts)}')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise _invalid(f'"texts"[{i}] must be a string, got {_type(text)}')
        if not texts:
            raise _unprocessable("empty_text", '"texts" is empty')
        if len(texts) > max_texts:
            raise _unprocessable(
                "too_many_texts", f"{len(texts)} texts in one request; at most {max_texts}", reason="too_large"
            )
        single = False
    else:
        raise _unprocessable("missing_text", 'request needs "text" (a string) or "texts" (a list of strings)')
    for i, text in enumerate(texts):
        where = '"text"' if single else f'"texts"[{i}]'
        if not text.strip():
            raise _unprocessable("empty_text", f"{where} is empty")
        if len(text) > max_chars:
            raise _unprocessable(
                "text_too_long", f"{where} has {len(text)} characters; at most {max_chars}", reason="too_large"
            )
    return texts, single


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, reason="invalid")


def _unprocessable(code: str, message: str, reason: str = "invalid") -> ApiError:
    return ApiError(422, code, message, reason=reason)
