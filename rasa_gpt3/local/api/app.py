"""The aiohttp application of a local backend: its middlewares, the local-only routes and every resource's routes.

Middlewares, outermost first: request ids (every response, errors and streams too, carries OpenAI's `x-request-id`
and `openai-processing-ms` headers, set just before its headers are sent), errors (every failure in OpenAI's error
shape, never a traceback) and service (request counting, the bearer token, then injected faults). Outside /v1:
GET /health, GET /_local/stats (request counts), POST /_local/stats/reset and POST /_local/faults (the fault spec
at run time).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Optional

from aiohttp import web

from rasa_gpt3.local.api import completions, files, fine_tuning, models
from rasa_gpt3.local.api.backend import BACKEND, DEFAULT_MAX_UPLOAD_BYTES, Backend
from rasa_gpt3.local.api.errors import STATUS_TYPES, ApiError, error_response
from rasa_gpt3.local.api.params import json_body
from rasa_gpt3.local.faults import HEADER, RETRY_COUNT_HEADER, FaultSpecError

logger = logging.getLogger(__name__)

# where a request keeps its id and start time for the headers of its response
_REQUEST_ID = "rasa_gpt3.request_id"
_STARTED = "rasa_gpt3.started"


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Gives every request an id and a start time; the response's headers get both (see _stamp_headers)."""
    request[_REQUEST_ID] = "req_" + uuid.uuid4().hex
    request[_STARTED] = time.perf_counter()
    return await handler(request)


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI's `x-request-id` and `openai-processing-ms` on every response, as its headers are about to be sent."""
    if _REQUEST_ID in request:
        response.headers["x-request-id"] = request[_REQUEST_ID]
        response.headers["openai-processing-ms"] = str(int((time.perf_counter() - request[_STARTED]) * 1000))


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """Turns every failure into OpenAI's error shape; never a traceback."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.message, error.type, error.param, error.code, error.headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        fallback = ("server_error" if error.status >= 500 else "invalid_request_error", None)
        type_, code = STATUS_TYPES.get(error.status, fallback)
        if error.status == 404:
            message = f"Invalid URL ({request.method} {request.path})"
        elif error.status == 405:
            message = f"Method {request.method} is not allowed for {request.path}"
        elif error.status == 413:
            limit = request.app[BACKEND].max_upload_bytes
            message = f"Request too large: the limit is {limit} bytes."
        else:
            message = error.reason
        return error_response(error.status, message, type_, None, code)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("local backend: unexpected error on %s %s", request.method, request.path)
        return error_response(500, "The server had an error while processing your request.", "server_error")


@web.middleware
async def service_middleware(request: web.Request, handler):
    """Counts API requests, checks the bearer token, then applies injected faults (never before the token)."""
    backend: Backend = request.app[BACKEND]
    path = request.path
    if not path.startswith("/v1/"):
        if path.startswith("/_local/"):
            _check_token(request, backend)
        return await handler(request)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else path
    backend.count(f"{request.method} {route}")
    _check_token(request, backend)
    try:
        faults = backend.faults.for_request(path, request.headers.get(HEADER), request.headers.get(RETRY_COUNT_HEADER))
    except FaultSpecError as error:
        raise ApiError(400, f"Bad {HEADER} header: {error}", param=HEADER) from None
    for fault in faults:
        if fault.latency:
            await asyncio.sleep(fault.latency)
        if fault.hang:
            await asyncio.sleep(fault.hang)
        if fault.drop:
            if request.transport is not None:
                request.transport.abort()
            # aiohttp finds the transport closed and sends nothing (it treats it as a client reset)
            return web.Response(status=500)
        if fault.status:
            headers = {}
            if fault.retry_after > 0:
                headers = {
                    "Retry-After": str(max(1, math.ceil(fault.retry_after))),
                    "retry-after-ms": str(int(fault.retry_after * 1000)),
                }
            type_, code = STATUS_TYPES.get(fault.status, ("server_error", None))
            return error_response(fault.status, f"Injected fault: status {fault.status}.", type_, None, code, headers)
        if fault.garbage:
            request["garbage"] = True
    return await handler(request)


def _check_token(request: web.Request, backend: Backend) -> None:
    if backend.token is None:
        return
    supplied = request.headers.get("Authorization", "")
    if supplied != f"Bearer {backend.token}":
        raise ApiError(401, "Incorrect API key provided for the local backend.", code="invalid_api_key")


# ---------------------------------------------------------------------- local-only routes

local_routes = web.RouteTableDef()


@local_routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@local_routes.get("/_local/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].stats())


@local_routes.post("/_local/stats/reset")
async def reset_stats(request: web.Request) -> web.Response:
    request.app[BACKEND].reset_stats()
    return web.json_response(request.app[BACKEND].stats())


@local_routes.post("/_local/faults")
async def configure_faults(request: web.Request) -> web.Response:
    body = await json_body(request)
    spec = body.get("faults") or ""
    if not isinstance(spec, str):
        raise ApiError(400, "'faults' must be a fault spec string.", param="faults")
    try:
        request.app[BACKEND].faults.configure(spec)
    except FaultSpecError as error:
        raise ApiError(400, str(error), param="faults") from None
    return web.json_response({"faults": request.app[BACKEND].faults.configured})


# ---------------------------------------------------------------------- the app


def create_app(
    state_dir: Path,
    *,
    token: Optional[str] = None,
    faults: Optional[str] = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    run_jobs: bool = True,
    header_faults: Optional[bool] = None,
) -> web.Application:
    """The aiohttp application of a local backend on `state_dir` (its job runner starts with the app).

    `header_faults`: whether the X-Rasa-GPT3-Fault header injects faults (None: RASA_GPT3_HEADER_FAULTS=1 says so).
    """
    backend = Backend(
        Path(state_dir),
        token=token,
        faults=faults,
        max_upload_bytes=max_upload_bytes,
        run_jobs=run_jobs,
        header_faults=header_faults,
    )
    app = web.Application(
        middlewares=[request_id_middleware, errors_middleware, service_middleware], client_max_size=max_upload_bytes
    )
    app[BACKEND] = backend
    app.on_response_prepare.append(_stamp_headers)
    for resource in (files, fine_tuning, models, completions):
        app.router.add_routes(resource.routes)
    app.router.add_routes(local_routes)

    async def start_runner(app: web.Application) -> None:
        if backend.run_jobs:
            backend.runner.start()

    async def stop_runner(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, backend.runner.stop)

    app.on_startup.append(start_runner)
    app.on_cleanup.append(stop_runner)
    return app
