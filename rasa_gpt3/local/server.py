"""The local backend's HTTP API: the OpenAI routes the official SDK uses, served by aiohttp.

Routes (all under /v1): files (upload, list, retrieve, content, delete), fine_tuning/jobs (create, list, retrieve,
cancel, events, checkpoints), models (list, retrieve, delete), chat/completions (with logprobs/top_logprobs and
stream) and completions (integer logprobs, stream). Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` and status codes; nothing ever answers with a traceback.
Outside /v1: GET /health, GET /_local/stats (request counts), POST /_local/stats/reset, POST /_local/faults.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aiohttp import web

from rasa_gpt3.data.base_models import known_base_models
from rasa_gpt3.local import ids
from rasa_gpt3.local.faults import GARBAGE_TEXT, HEADER, RETRY_COUNT_HEADER, FaultPlan, FaultSpecError
from rasa_gpt3.local.engine_registry import engine_for_base_model, load_engine
from rasa_gpt3.local.engines import Engine, Generation, Prompt, answer_text
from rasa_gpt3.local.jobs import JobRunner
from rasa_gpt3.local.store import ACTIVE_STATUSES, PRIVATE, NotFound, Store, public

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# a file every local backend of every process appends one line per API request to (tests across processes)
ENV_REQUEST_LOG = "RASA_GPT3_REQUEST_LOG"
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ORGANIZATION_ID = "org-local"


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
                   code: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> web.Response:
    """A JSON error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


_STATUS_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", None),
    405: ("invalid_request_error", None),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


class Backend:
    """Everything one server instance needs: the store, the job runner, faults, counters and loaded models."""

    def __init__(self, state_dir: Path, *, token: Optional[str] = None, faults: Optional[str] = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, run_jobs: bool = True) -> None:
        self.store = Store(state_dir)
        self.token = token or None
        self.faults = FaultPlan(faults)
        self.max_upload_bytes = max_upload_bytes
        self.runner = JobRunner(self.store)
        self.run_jobs = run_jobs
        self.counts: Counter = Counter()
        self._counts_lock = threading.Lock()
        self._models: Dict[str, Tuple[Optional[int], Engine]] = {}
        self._models_lock = threading.Lock()
        self.started = time.time()

    def count(self, route: str) -> None:
        """Counts one request that reached the API (and logs it to RASA_GPT3_REQUEST_LOG when that is set)."""
        with self._counts_lock:
            self.counts[route] += 1
            self.counts["total"] += 1
        log_path = os.environ.get(ENV_REQUEST_LOG)
        if log_path:
            # an append-only log shared by processes: one O_APPEND write per line is atomic, no rewrite needed
            line = f"{time.time():.3f} {os.getpid()} {route}\n".encode("utf-8")
            try:
                handle = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(handle, line)
                finally:
                    os.close(handle)
            except OSError:
                logger.warning("cannot write the request log %s", log_path)

    def stats(self) -> Dict[str, Any]:
        """Request counts since start (or the last reset)."""
        with self._counts_lock:
            by_route = {key: value for key, value in self.counts.items() if key != "total"}
            return {"requests": self.counts.get("total", 0), "by_route": by_route,
                    "state_dir": str(self.store.root), "faults": self.faults.configured}

    def reset_stats(self) -> None:
        """Zeroes the request counters."""
        with self._counts_lock:
            self.counts.clear()

    def model(self, model_id: str) -> Engine:
        """The fine-tuned model `model_id` loaded by its engine (reloaded when its files change); raises ApiError."""
        version = self.store.model_version(model_id)
        if version is None:
            raise ApiError(404, _model_missing_message(model_id), param="model", code="model_not_found")
        with self._models_lock:
            cached = self._models.get(model_id)
            if cached is not None and cached[0] == version:
                return cached[1]
        try:
            loaded = load_engine(self.store.get_model(model_id), self.store.model_arrays(model_id))
        except NotFound:
            raise ApiError(404, _model_missing_message(model_id), param="model", code="model_not_found") from None
        except ValueError as error:  # stored by an engine this backend does not have
            raise ApiError(400, str(error), param="model", code="model_not_supported") from None
        with self._models_lock:
            self._models[model_id] = (version, loaded)
        return loaded


def _model_missing_message(model_id: str) -> str:
    try:
        engine_for_base_model(model_id)
        if not str(model_id).startswith("ft:"):
            return (f"The model `{model_id}` is a base model; the local backend only serves models fine-tuned on it. "
                    "Fine-tune first (rasa-gpt3 fine-tune).")
    except ValueError:
        pass
    return f"The model `{model_id}` does not exist or you do not have access to it."


BACKEND = web.AppKey("backend", Backend)


# ---------------------------------------------------------------------- middlewares


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
        type_, code = _STATUS_TYPES.get(error.status, ("server_error" if error.status >= 500 else "invalid_request_error", None))
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
    """Counts API requests, applies injected faults, and checks the bearer token."""
    backend: Backend = request.app[BACKEND]
    path = request.path
    if not path.startswith("/v1/"):
        if path.startswith("/_local/"):
            _check_token(request, backend)
        return await handler(request)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else path
    backend.count(f"{request.method} {route}")
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
                headers = {"Retry-After": str(max(1, math.ceil(fault.retry_after))),
                           "retry-after-ms": str(int(fault.retry_after * 1000))}
            type_, code = _STATUS_TYPES.get(fault.status, ("server_error", None))
            return error_response(fault.status, f"Injected fault: status {fault.status}.", type_, None, code, headers)
        if fault.garbage:
            request["garbage"] = True
    _check_token(request, backend)
    started = time.perf_counter()
    response = await handler(request)
    if not response.prepared:  # streamed responses have sent their headers already
        response.headers["openai-processing-ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
    return response


def _check_token(request: web.Request, backend: Backend) -> None:
    if backend.token is None:
        return
    supplied = request.headers.get("Authorization", "")
    if supplied != f"Bearer {backend.token}":
        raise ApiError(401, "Incorrect API key provided for the local backend.", code="invalid_api_key")


# ---------------------------------------------------------------------- request helpers


async def _json_body(request: web.Request) -> Dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        detail = getattr(error, "msg", "not UTF-8")
        raise ApiError(400, f"We could not parse the JSON body of your request ({detail}). "
                            "The OpenAI API expects a JSON payload.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _expect(body: Dict[str, Any], key: str, kinds, required: bool = False, default: Any = None) -> Any:
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


def _int_in(body: Dict[str, Any], key: str, low: int, high: int, default: Optional[int] = None) -> Optional[int]:
    value = _expect(body, key, int, default=default)
    if value is not None and not low <= value <= high:
        raise ApiError(400, f"Invalid '{key}': must be between {low} and {high}.", param=key, code="invalid_value")
    return value


def _query_int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
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


def _page(items: List[Dict[str, Any]], after: Optional[str], limit: int) -> Dict[str, Any]:
    """A cursor page over `items` (already in API order): the items after `after`, at most `limit`."""
    start = 0
    if after:
        positions = [i for i, item in enumerate(items) if item.get("id") == after]
        start = positions[0] + 1 if positions else len(items)
    chunk = items[start : start + limit]
    return {"object": "list", "data": [public(item) for item in chunk], "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}


def _id_or_404(value: str, kind: str, what: str) -> str:
    if not ids.is_object_id(value, kind):
        raise ApiError(404, f"No such {what}: {value[:80]}", code=f"{what.replace(' ', '_')}_not_found")
    return value


# ---------------------------------------------------------------------- files


async def upload_file(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Uploads must be multipart/form-data with the fields 'file' and 'purpose'.")
    form = await request.post()
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    if purpose not in ("fine-tune", "batch", "assistants", "user_data", "vision", "evals"):
        raise ApiError(400, f"Invalid value for 'purpose': {purpose[:40]}.", param="purpose", code="invalid_value")
    content = upload.file.read()
    obj = await asyncio.get_running_loop().run_in_executor(
        None, backend.store.create_file, upload.filename or "upload.jsonl", purpose, content
    )
    return web.json_response(public(obj))


async def list_files(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    limit = _query_int(request, "limit", 10000, 1, 10000)
    items = backend.store.list_files(request.query.get("purpose") or None)
    if request.query.get("order") == "asc":
        items.reverse()
    return web.json_response(_page(items, request.query.get("after"), limit))


async def retrieve_file(request: web.Request) -> web.Response:
    file_id = _id_or_404(request.match_info["file_id"], "file", "file")
    try:
        return web.json_response(public(request.app[BACKEND].store.get_file(file_id)))
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None


async def file_content(request: web.Request) -> web.Response:
    file_id = _id_or_404(request.match_info["file_id"], "file", "file")
    try:
        content = request.app[BACKEND].store.file_content(file_id)
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None
    return web.Response(body=content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    file_id = _id_or_404(request.match_info["file_id"], "file", "file")
    try:
        request.app[BACKEND].store.delete_file(file_id)
    except NotFound:
        raise ApiError(404, f"No such File object: {file_id}", param="id") from None
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


# ---------------------------------------------------------------------- fine-tuning jobs


def _hyperparameters(body: Dict[str, Any]) -> Dict[str, Any]:
    method = body.get("method")
    requested: Any = {}
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            raise ApiError(400, "The local backend supports only the 'supervised' fine-tuning method.", param="method")
        supervised = method.get("supervised") or {}
        requested = supervised.get("hyperparameters") if isinstance(supervised, dict) else None
    if not requested:
        requested = body.get("hyperparameters") or {}
    if not isinstance(requested, dict):
        raise ApiError(400, "Invalid 'hyperparameters': must be an object.", param="hyperparameters")
    checks = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": ((int, float), 1e-6, 100.0)}
    clean: Dict[str, Any] = {}
    for key, value in requested.items():
        if key not in checks:
            raise ApiError(400, f"Unknown hyperparameter '{key}'.", param=f"hyperparameters.{key}")
        kinds, low, high = checks[key]
        if value == "auto" or value is None:
            clean[key] = "auto"
            continue
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise ApiError(400, f"Invalid '{key}': must be 'auto' or a number between {low} and {high}.",
                           param=f"hyperparameters.{key}")
        clean[key] = value
    for key in checks:
        clean.setdefault(key, "auto")
    return clean


async def create_job(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    body = await _json_body(request)
    model = _expect(body, "model", str, required=True)
    try:
        _, base = engine_for_base_model(model)
    except ValueError:
        raise ApiError(400, f"Model {model[:120]} is not available for fine-tuning or does not exist.",
                       param="model", code="model_not_available") from None
    hyperparameters = _hyperparameters(body)
    training_file = _expect(body, "training_file", str, required=True)
    validation_file = _expect(body, "validation_file", str)
    for param, file_id in (("training_file", training_file), ("validation_file", validation_file)):
        if file_id is None:
            continue
        try:
            if not ids.is_object_id(file_id, "file"):
                raise NotFound(file_id)
            backend.store.get_file(file_id)
        except NotFound:
            raise ApiError(400, f"invalid {param}: {file_id[:80]}", param=param, code="invalid_file") from None
    suffix = _expect(body, "suffix", str)
    if suffix is not None and len(suffix) > 64:
        raise ApiError(400, "Invalid 'suffix': at most 64 characters.", param="suffix")
    seed = _expect(body, "seed", int)
    metadata = _expect(body, "metadata", dict) or None
    if metadata is not None:
        if len(metadata) > 16 or any(not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512
                                     for k, v in metadata.items()):
            raise ApiError(400, "Invalid 'metadata': at most 16 string keys (64 chars) with string values (512).",
                           param="metadata")
    job = {
        "id": ids.new_id("job"),
        "object": "fine_tuning.job",
        "created_at": int(time.time()),
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": hyperparameters,
        "model": base.name,
        "organization_id": ORGANIZATION_ID,
        "result_files": [],
        "seed": seed if seed is not None else random.randint(0, 2**31 - 1),
        "status": "validating_files",
        "trained_tokens": None,
        "training_file": training_file,
        "validation_file": validation_file,
        "estimated_finish": None,
        "integrations": [],
        "metadata": metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "user_provided_suffix": suffix,
        "suffix": suffix,
        PRIVATE: {"requested_hyperparameters": hyperparameters},
    }
    backend.store.create_job(job)
    backend.store.add_events(job["id"], [{
        "id": ids.new_id("event"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
        "level": "info", "message": f"Created fine-tuning job: {job['id']}", "data": {}, "type": "message"}])
    backend.runner.wake()
    return web.json_response(_job_view(job))


def _job_view(job: Dict[str, Any]) -> Dict[str, Any]:
    view = public(job)
    view.pop("suffix", None)
    return view


def _job_or_404(request: web.Request) -> Dict[str, Any]:
    job_id = _id_or_404(request.match_info["job_id"], "job", "job")
    try:
        return request.app[BACKEND].store.get_job(job_id)
    except NotFound:
        raise ApiError(404, f"Could not find fine-tune: {job_id}", param="fine_tuning_job_id",
                       code="fine_tune_not_found") from None


async def list_jobs(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    limit = _query_int(request, "limit", 20, 1, 100)
    jobs = backend.store.list_jobs()
    wanted = {key[len("metadata["):-1]: value for key, value in request.query.items()
              if key.startswith("metadata[") and key.endswith("]")}
    if wanted:
        jobs = [job for job in jobs if all((job.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
    page = _page(jobs, request.query.get("after"), limit)
    page["data"] = [_job_view(job) for job in page["data"]]
    return web.json_response(page)


async def retrieve_job(request: web.Request) -> web.Response:
    return web.json_response(_job_view(_job_or_404(request)))


async def cancel_job(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    job = _job_or_404(request)

    def change(current: Dict[str, Any]) -> None:
        if current["status"] in ("succeeded", "failed"):
            raise ApiError(400, f"Job has already completed: {current['status']}.", param="fine_tuning_job_id",
                           code="job_already_completed")
        if current["status"] in ACTIVE_STATUSES:
            current.update(status="cancelled", finished_at=int(time.time()), estimated_finish=None)

    updated = backend.store.update_job(job["id"], change)
    if job["status"] in ACTIVE_STATUSES:
        backend.store.add_events(job["id"], [{
            "id": ids.new_id("event"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
            "level": "info", "message": "Fine-tuning job cancelled", "data": {}, "type": "message"}])
    return web.json_response(_job_view(updated))


async def list_events(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    job = _job_or_404(request)
    limit = _query_int(request, "limit", 20, 1, 1000)
    return web.json_response(_page(backend.store.list_events(job["id"]), request.query.get("after"), limit))


async def list_checkpoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    limit = _query_int(request, "limit", 10, 1, 100)
    checkpoints = list(reversed(job.get(PRIVATE, {}).get("checkpoints", []) if job["status"] == "succeeded" else []))
    return web.json_response(_page(checkpoints, request.query.get("after"), limit))


async def unsupported_job_action(request: web.Request) -> web.Response:
    raise ApiError(400, "Pausing and resuming jobs is not supported by the local backend.")


# ---------------------------------------------------------------------- models


def _base_model_object(name: str) -> Dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "system"}


async def list_models(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    data = [_base_model_object(name) for name in known_base_models()]
    data += [_public_model(meta) for meta in backend.store.list_models()]
    return web.json_response({"object": "list", "data": data})


def _public_model(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": meta["id"], "object": "model", "created": meta["created"], "owned_by": meta["owned_by"]}


async def retrieve_model(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    model_id = request.match_info["model"]
    if model_id in known_base_models():
        return web.json_response(_base_model_object(model_id))
    try:
        return web.json_response(_public_model(backend.store.get_model(model_id)))
    except NotFound:
        raise ApiError(404, f"The model '{model_id[:120]}' does not exist", param="model",
                       code="model_not_found") from None


async def delete_model(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    model_id = request.match_info["model"]
    if model_id in known_base_models():
        raise ApiError(403, "You have insufficient permissions to delete a base model.", "permission_error",
                       param="model")
    try:
        backend.store.delete_model(model_id)
    except NotFound:
        raise ApiError(404, f"The model '{model_id[:120]}' does not exist", param="model",
                       code="model_not_found") from None
    return web.json_response({"id": model_id, "object": "model", "deleted": True})


# ---------------------------------------------------------------------- completions


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    if content is None:
        return ""
    raise ApiError(400, "Invalid 'messages': content must be a string or a list of text parts.", param="messages")


def _stops(body: Dict[str, Any]) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return [s for s in stop if s]
    raise ApiError(400, "Invalid 'stop': a string or a list of up to 4 strings.", param="stop")


def _finish(generation: Generation, stops: Sequence[str], max_tokens: Optional[int]) -> Tuple[Generation, str]:
    """Cuts a generation at the first stop sequence and at max_tokens, as the API does; returns it and the reason."""
    tokens, logprobs, tops = generation.tokens, generation.logprobs, generation.top
    reason = generation.finish_reason
    if stops:
        text = ""
        for position, token in enumerate(tokens):
            candidate = text + token
            cuts = [candidate.find(stop) for stop in stops if candidate.find(stop) >= 0]
            if cuts:
                keep = min(cuts) - len(text)
                if keep > 0:
                    tokens = tokens[:position] + [token[:keep]]
                    logprobs, tops = logprobs[: position + 1], tops[: position + 1]
                else:
                    tokens, logprobs, tops = tokens[:position], logprobs[:position], tops[:position]
                reason = "stop"
                break
            text = candidate
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, logprobs, tops, reason = tokens[:max_tokens], logprobs[:max_tokens], tops[:max_tokens], "length"
    return Generation(tokens=list(tokens), logprobs=list(logprobs), top=list(tops)), reason


def _garbage(model: Engine) -> Generation:
    pieces = [answer_text(GARBAGE_TEXT, model.format)]
    return Generation(tokens=pieces, logprobs=[-0.1], top=[[(pieces[0], -0.1)]])


def _sampling(body: Dict[str, Any]) -> Tuple[Optional[float], Optional[int], int]:
    temperature = _expect(body, "temperature", (int, float))
    if temperature is not None and not 0 <= temperature <= 2:
        raise ApiError(400, "Invalid 'temperature': must be between 0 and 2.", param="temperature")
    seed = _expect(body, "seed", int)
    n = _int_in(body, "n", 1, 16, default=1)
    return temperature, seed, n


def _token_bytes(token: str) -> List[int]:
    return list(token.encode("utf-8"))


async def _generate(request: web.Request, model: Engine, prompt: Prompt, top_n: int,
                    temperature: Optional[float], seed: Optional[int], n: int) -> List[Generation]:
    if request.get("garbage"):
        return [_garbage(model) for _ in range(n)]
    loop = asyncio.get_running_loop()
    generations = []
    for index in range(n):
        choice_seed = None if seed is None else seed + index
        generate = functools.partial(model.generate, prompt, max_tokens=None, stops=(), temperature=temperature,
                                     seed=choice_seed, top_logprobs=top_n)
        generations.append(await loop.run_in_executor(None, generate))
    return generations


def _prompt_tokens(texts: Sequence[str], model: Engine, per_message: int = 0) -> int:
    return sum(model.count_tokens(t) + per_message for t in texts)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    backend: Backend = request.app[BACKEND]
    body = await _json_body(request)
    model_id = _expect(body, "model", str, required=True)
    messages = _expect(body, "messages", list, required=True)
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                       param="messages", code="empty_array")
    clean = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, "Invalid 'messages': every message needs a role.", param="messages")
        clean.append({"role": message["role"], "content": _message_text(message.get("content"))})
    want_logprobs = bool(_expect(body, "logprobs", bool, default=False))
    top_n = _int_in(body, "top_logprobs", 0, 20, default=0) or 0
    if top_n and not want_logprobs:
        raise ApiError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    max_tokens = _int_in(body, "max_completion_tokens", 1, 1_000_000) or _int_in(body, "max_tokens", 1, 1_000_000)
    temperature, seed, n = _sampling(body)
    stops = _stops(body)
    stream = bool(_expect(body, "stream", bool, default=False))
    model = backend.model(model_id)
    if model.format != "chat":
        raise ApiError(404, "This is not a chat model and thus not supported in the v1/chat/completions endpoint. "
                            "Did you mean to use v1/completions?", param="model", code="model_not_supported")
    generations = await _generate(request, model, clean, top_n, temperature, seed, n)
    finished = [_finish(g, stops, max_tokens) for g in generations]
    created = int(time.time())
    completion_id = "chatcmpl-" + ids.new_id("file")[5:]
    prompt_tokens = _prompt_tokens([m["content"] for m in clean] + [m["role"] for m in clean], model, 3) + 3
    completion_tokens = sum(model.count_tokens(g.text) for g, _ in finished)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}

    def logprob_entries(generation: Generation) -> List[Dict[str, Any]]:
        return [{"token": token, "logprob": logprob, "bytes": _token_bytes(token),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": _token_bytes(t)} for t, lp in top[:top_n]]}
                for token, logprob, top in zip(generation.tokens, generation.logprobs, generation.top)]

    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = await _start_stream(request)
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "system_fingerprint": "fp_local"}
        for index, (generation, reason) in enumerate(finished):
            await _send(response, {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})
            entries = logprob_entries(generation)
            for position, token in enumerate(generation.tokens):
                logprobs = {"content": [entries[position]], "refusal": None} if want_logprobs else None
                await _send(response, {**base, "choices": [{"index": index, "delta": {"content": token},
                                                            "logprobs": logprobs, "finish_reason": None}]})
            await _send(response, {**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                        "finish_reason": reason}]})
        if include_usage:
            await _send(response, {**base, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    choices = []
    for index, (generation, reason) in enumerate(finished):
        choices.append({
            "index": index,
            "message": {"role": "assistant", "content": generation.text, "refusal": None, "annotations": []},
            "logprobs": {"content": logprob_entries(generation), "refusal": None} if want_logprobs else None,
            "finish_reason": reason,
        })
    return web.json_response({"id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
                              "choices": choices, "usage": usage, "service_tier": "default",
                              "system_fingerprint": "fp_local"})


async def completions(request: web.Request) -> web.StreamResponse:
    backend: Backend = request.app[BACKEND]
    body = await _json_body(request)
    model_id = _expect(body, "model", str, required=True)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt_list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt_list = prompt
    elif prompt is None:
        raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    else:
        raise ApiError(400, "Invalid 'prompt': the local backend accepts a string or a list of strings.", param="prompt")
    logprobs_n = _int_in(body, "logprobs", 0, 5)
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported by the local backend.", param="echo")
    max_tokens = _int_in(body, "max_tokens", 0, 1_000_000, default=DEFAULT_COMPLETION_MAX_TOKENS)
    temperature, seed, n = _sampling(body)
    stops = _stops(body)
    stream = bool(_expect(body, "stream", bool, default=False))
    model = backend.model(model_id)
    if model.format != "completion":
        raise ApiError(404, "This is a chat model and not supported in the v1/completions endpoint. "
                            "Did you mean to use v1/chat/completions?", param="model", code="model_not_supported")
    choices = []
    completion_tokens = 0
    for prompt_index, text in enumerate(prompt_list):
        generations = await _generate(request, model, text, logprobs_n or 0, temperature, seed, n)
        for generation in generations:
            generation, reason = _finish(generation, stops, max_tokens)
            completion_tokens += model.count_tokens(generation.text)
            logprobs = None
            if logprobs_n is not None:
                offsets, offset = [], len(text)
                for token in generation.tokens:
                    offsets.append(offset)
                    offset += len(token)
                logprobs = {"tokens": generation.tokens, "token_logprobs": generation.logprobs,
                            "top_logprobs": [dict(top[: max(logprobs_n, 1)]) for top in generation.top],
                            "text_offset": offsets}
            choices.append({"index": len(choices), "text": generation.text, "logprobs": logprobs,
                            "finish_reason": reason})
    prompt_tokens = _prompt_tokens(prompt_list, model)
    result = {"id": "cmpl-" + ids.new_id("file")[5:], "object": "text_completion", "created": int(time.time()),
              "model": model_id, "choices": choices, "system_fingerprint": "fp_local",
              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens}}
    if stream:
        response = await _start_stream(request)
        for choice in choices:
            await _send(response, {**result, "usage": None, "choices": [choice]})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    return web.json_response(result)


async def _start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, payload: Dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n")


# ---------------------------------------------------------------------- local-only routes


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].stats())


async def reset_stats(request: web.Request) -> web.Response:
    request.app[BACKEND].reset_stats()
    return web.json_response(request.app[BACKEND].stats())


async def configure_faults(request: web.Request) -> web.Response:
    body = await _json_body(request)
    spec = body.get("faults") or ""
    if not isinstance(spec, str):
        raise ApiError(400, "'faults' must be a fault spec string.", param="faults")
    try:
        request.app[BACKEND].faults.configure(spec)
    except FaultSpecError as error:
        raise ApiError(400, str(error), param="faults") from None
    return web.json_response({"faults": request.app[BACKEND].faults.configured})


# ---------------------------------------------------------------------- the app


def create_app(state_dir: Path, *, token: Optional[str] = None, faults: Optional[str] = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, run_jobs: bool = True) -> web.Application:
    """The aiohttp application of a local backend on `state_dir` (its job runner starts with the app)."""
    backend = Backend(Path(state_dir), token=token, faults=faults, max_upload_bytes=max_upload_bytes, run_jobs=run_jobs)
    app = web.Application(middlewares=[errors_middleware, service_middleware], client_max_size=max_upload_bytes)
    app[BACKEND] = backend
    v1 = "/v1"
    app.router.add_post(f"{v1}/files", upload_file)
    app.router.add_get(f"{v1}/files", list_files)
    app.router.add_get(f"{v1}/files/{{file_id}}", retrieve_file)
    app.router.add_delete(f"{v1}/files/{{file_id}}", delete_file)
    app.router.add_get(f"{v1}/files/{{file_id}}/content", file_content)
    app.router.add_post(f"{v1}/fine_tuning/jobs", create_job)
    app.router.add_get(f"{v1}/fine_tuning/jobs", list_jobs)
    app.router.add_get(f"{v1}/fine_tuning/jobs/{{job_id}}", retrieve_job)
    app.router.add_post(f"{v1}/fine_tuning/jobs/{{job_id}}/cancel", cancel_job)
    app.router.add_post(f"{v1}/fine_tuning/jobs/{{job_id}}/pause", unsupported_job_action)
    app.router.add_post(f"{v1}/fine_tuning/jobs/{{job_id}}/resume", unsupported_job_action)
    app.router.add_get(f"{v1}/fine_tuning/jobs/{{job_id}}/events", list_events)
    app.router.add_get(f"{v1}/fine_tuning/jobs/{{job_id}}/checkpoints", list_checkpoints)
    app.router.add_get(f"{v1}/models", list_models)
    app.router.add_get(f"{v1}/models/{{model}}", retrieve_model)
    app.router.add_delete(f"{v1}/models/{{model}}", delete_model)
    app.router.add_post(f"{v1}/chat/completions", chat_completions)
    app.router.add_post(f"{v1}/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/_local/stats", stats)
    app.router.add_post("/_local/stats/reset", reset_stats)
    app.router.add_post("/_local/faults", configure_faults)

    async def start_runner(app: web.Application) -> None:
        if backend.run_jobs:
            backend.runner.start()

    async def stop_runner(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, backend.runner.stop)

    app.on_startup.append(start_runner)
    app.on_cleanup.append(stop_runner)
    return app
