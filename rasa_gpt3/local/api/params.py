"""Reading and checking what a request sends: the JSON body, its typed fields, query integers, ids and pages."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from aiohttp import web

from rasa_gpt3.local import ids
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.store import public


async def json_body(request: web.Request) -> Dict[str, Any]:
    """The request's JSON object; raises ApiError 400 for anything else."""
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        detail = getattr(error, "msg", "not UTF-8")
        raise ApiError(
            400, f"We could not parse the JSON body of your request ({detail}). The OpenAI API expects a JSON payload."
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


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
    """The integer `body[key]` (or `default`), checked to lie in [low, high]."""
    value = expect(body, key, int, default=default)
    if value is not None and not low <= value <= high:
        raise ApiError(400, f"Invalid '{key}': must be between {low} and {high}.", param=key, code="invalid_value")
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
    if not low <= value <= high:
        raise ApiError(400, f"Invalid '{key}': must be between {low} and {high}.", param=key)
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
