"""The /v1/files routes: upload, list, retrieve, content and delete.

A `fine-tune` upload is refused at once, as OpenAI refuses it, when its name does not end in .jsonl or a line is not
a JSON object; whether the records suit a model is the job's check, later (jobs.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Optional

from aiohttp import web

from rasa_gpt3.local.api.backend import BACKEND, Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.api.params import id_or_404, page, query_int, shown
from rasa_gpt3.local.store import NotFound, public

PURPOSES = ("fine-tune", "batch", "assistants", "user_data", "vision", "evals")
FINE_TUNE = "fine-tune"

routes = web.RouteTableDef()


@routes.post("/v1/files")
async def upload_file(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Uploads must be multipart/form-data with the fields 'file' and 'purpose'.")
    try:
        form = await request.post()
    except (ValueError, AssertionError, LookupError, TypeError) as error:
        # aiohttp's multipart reader fails on a broken body with these (an assertion for a body cut short)
        raise ApiError(400, f"Could not parse the multipart form: {shown(error) or type(error).__name__}.") from None
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(
            400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise ApiError(400, f"Invalid value for 'purpose': {purpose[:40]}.", param="purpose", code="invalid_value")
    filename = upload.filename or "upload.jsonl"
    if purpose == FINE_TUNE and not filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl")
    content = upload.file.read()
    loop = asyncio.get_running_loop()
    if purpose == FINE_TUNE:
        problem = await loop.run_in_executor(None, jsonl_problem, content)
        if problem:
            raise ApiError(400, problem)
    obj = await loop.run_in_executor(None, backend.store.create_file, filename, purpose, content)
    return web.json_response(public(obj))


def jsonl_problem(content: bytes) -> Optional[str]:
    """What OpenAI says of a fine-tune upload whose lines are not all JSON objects (blank lines aside), else None."""
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply, a number too long
            record = None
        if not isinstance(record, dict):
            start = line.strip()[:3].decode("utf-8", errors="replace")
            return (
                "Expected file to have JSONL format, where every line is a JSON dictionary. "
                f'Line {number} is not a dictionary (HINT: line starts with: "{start}...").'
            )
    return None


@routes.get("/v1/files")
async def list_files(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    limit = query_int(request, "limit", 10000, 1, 10000)
    items = backend.store.list_files(request.query.get("purpose") or None)
    if request.query.get("order") == "asc":
        items.reverse()
    return web.json_response(page(items, request.query.get("after"), limit))


@routes.get("/v1/files/{file_id}")
async def retrieve_file(request: web.Request) -> web.Response:
    file_id = id_or_404(request.match_info["file_id"], "file", "file")
    try:
        return web.json_response(public(request.app[BACKEND].store.get_file(file_id)))
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None


@routes.delete("/v1/files/{file_id}")
async def delete_file(request: web.Request) -> web.Response:
    file_id = id_or_404(request.match_info["file_id"], "file", "file")
    try:
        request.app[BACKEND].store.delete_file(file_id)
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


@routes.get("/v1/files/{file_id}/content")
async def file_content(request: web.Request) -> web.Response:
    file_id = id_or_404(request.match_info["file_id"], "file", "file")
    try:
        content = request.app[BACKEND].store.file_content(file_id)
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None
    return web.Response(body=content, content_type="application/octet-stream")
