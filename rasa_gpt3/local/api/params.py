"""Reading and checking what a request sends: the JSON body, its typed fields, query integers, ids and pages.

Every check answers 400 in OpenAI's shape (messages and codes as the API words them for out-of-range values), so a
hostile body never reaches a handler unchecked: a JSON body is read up to MAX_JSON_BODY_BYTES (413 beyond), and
JSON nested too deeply or with an integer of more digits than Python converts is a 400, not a crash.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from aiohttp import web

from rasa_gpt3.local import ids
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.store import public

# the largest JSON request body read: far above any request a model's context admits (65,536 tokens of text are
# well under 1 MB), small enough that parsing it costs milliseconds; uploads have their own limit (multipart)
MAX_JSON_BODY_BYTES = 8 * 1024 * 1024
_BODY_CHUNK = 64 * 1024
# how much of a rejected value an error message repeats
_SHOWN_CHARS = 40


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused with 413 as soon as it exceeds `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(_BODY_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request too large: the limit is {limit} bytes.", code="request_too_large")


async def json_body(request: web.Request) -> Dict[str, Any]:
    """The request's JSON object (at most MAX_JSON_BODY_BYTES); raises ApiError 400 for anything else, 413 if larger."""
    raw = await read_limited(request, MAX_JSON_BODY_BYTES)
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except json.JSONDecodeError as error:
        raise _unparseable(error.msg) from None
    except UnicodeDecodeError:
        raise _unparseable("not UTF-8") from None
    except RecursionError:
        raise _unparseable("nested too deeply") from None
    except ValueError:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        raise _unparseable("a number has too many digits") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _unparseable(detail: str) -> ApiError:
    return ApiError(
        400, f"We could not parse the JSON body of your request ({detail}). The OpenAI API expects a JSON payload."
    )


def shown(value: Any) -> str:
    """`value` as an error message repeats it: at most a few dozen characters."""
    text = str(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def expect(body: Dict[str, Any], key: str, kinds, required: bool = False, default: Any = None) -> Any:
    """`body[key]` when it has one of the types `kinds` (a bool only if bool is one), else `default`; or ApiError."""
    value = body.get(key, default)
    if value is None:
        if required:
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"Invalid type for '{key}'.", param=key, code="invalid_type")
    if not isinstance(value, kinds):
        raise ApiError(400, f"Invalid type for '{key}'.", param=key, code="invalid_type")
    return value


def int_in(body: Dict[str, Any], key: str, low: int, high: int, default: Optional[int] = None) -> Optional[int]:
    """The integer `body[key]` (or `default`), checked to lie in [low, high] as the API checks it."""
    value = expect(body, key, int, default=default)
    if value is not None:
        _check_range(key, value, low, high, "integer")
    return value


def number_in(
    body: Dict[str, Any], key: str, low: float, high: float, default: Optional[float] = None
) -> Optional[float]:
    """The number `body[key]` (or `default`), checked to lie in [low, high] as the API checks it."""
    value = expect(body, key, (int, float), default=default)
    if value is not None:
        _check_range(key, value, low, high, "decimal")
    return value


def _check_range(key: str, value: Any, low: Any, high: Any, kind: str) -> None:
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{key}': {kind} below minimum value. Expected a value >= {low}, but got {shown(value)} instead.",
            param=key,
            code=f"{kind}_below_min_value",
        )
    if value > high:
        raise ApiError(
            400,
            f"Invalid '{key}': {kind} above maximum value. Expected a value <= {high}, but got {shown(value)} instead.",
            param=key,
            code=f"{kind}_above_max_value",
        )


def string_of_length(body: Dict[str, Any], key: str, shortest: int, longest: int) -> Optional[str]:
    """The string `body[key]` (or None), checked to have between `shortest` and `longest` characters."""
    value = expect(body, key, str)
    if value is None:
        return None
    if len(value) < shortest:
        raise ApiError(
            400,
            f"Invalid '{key}': string too short. Expected a string with minimum length {shortest}, "
            f"but got a string with length {len(value)} instead.",
            param=key,
            code="string_below_min_length",
        )
    if len(value) > longest:
        raise ApiError(
            400,
            f"Invalid '{key}': string too long. Expected a string with maximum length {longest}, "
            f"but got a string with length {len(value)} instead.",
            param=key,
            code="string_above_max_length",
        )
    return value


def query_int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    """The integer query parameter `key` (or `default`), checked to lie in [low, high]."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid '{key}': not an integer.", param=key) from None
    _check_range(key, value, low, high, "integer")
    return value


def page(items: List[Dict[str, Any]], after: Optional[str], limit: int) -> Dict[str, Any]:
    """A cursor page over `items` (already in API order): the items after `after`, at most `limit`."""
    start = 0
    if after:
        positions = [i for i, item in enumerate(items) if item.get("id") == after]
        start = positions[0] + 1 if positions else len(items)
    chunk = items[start : start + limit]
    return {
        "object": "list",
        "data": [public(item) for item in chunk],
        "has_more": start + limit < len(items),
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
    }


def id_or_404(value: str, kind: str, what: str) -> str:
    """`value` when it is a well-formed id of `kind`, else ApiError 404 naming `what`."""
    if not ids.is_object_id(value, kind):
        raise ApiError(404, f"No such {what}: {value[:80]}", code=f"{what.replace(' ', '_')}_not_found")
    return value
