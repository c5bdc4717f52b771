"""The /v1/files routes: upload, list, retrieve, content and delete."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rasa_gpt3.local.api.backend import BACKEND, Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.api.params import id_or_404, page, query_int, shown
from rasa_gpt3.local.store import NotFound, public

PURPOSES = ("fine-tune", "batch", "assistants", "user_data", "vision", "evals")

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
    content = upload.file.read()
    obj = await asyncio.get_running_loop().run_in_executor(
        None, backend.store.create_file, upload.filename or "upload.jsonl", purpose, content
    )
    return web.json_response(public(obj))


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
