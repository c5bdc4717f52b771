"""The /v1/fine_tuning/jobs routes: create, list, retrieve, cancel, events and checkpoints (jobs.py trains them)."""

from __future__ import annotations

import random
import time
from typing import Any, Dict

from aiohttp import web

from rasa_gpt3.local import ids
from rasa_gpt3.local.api.backend import BACKEND, Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.api.params import expect, id_or_404, int_in, json_body, page, query_int, string_of_length
from rasa_gpt3.local.engine_registry import engine_for_base_model
from rasa_gpt3.local.faults import HEADER
from rasa_gpt3.local.jobs import job_event
from rasa_gpt3.local.store import ACTIVE_STATUSES, PRIVATE, NotFound, public

ORGANIZATION_ID = "org-local"
# the spec's ranges for a job's seed and the length of its suffix
SEED_RANGE = (0, 2**31 - 1)
SUFFIX_LENGTH = (1, 64)
# each hyperparameter's type and allowed range (besides "auto")
HYPERPARAMETER_RANGES = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": ((int, float), 1e-6, 100.0),
}

routes = web.RouteTableDef()


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
    clean: Dict[str, Any] = {}
    for key, value in requested.items():
        if key not in HYPERPARAMETER_RANGES:
            raise ApiError(400, f"Unknown hyperparameter '{key}'.", param=f"hyperparameters.{key}")
        kinds, low, high = HYPERPARAMETER_RANGES[key]
        if value == "auto" or value is None:
            clean[key] = "auto"
            continue
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise ApiError(
                400,
                f"Invalid '{key}': must be 'auto' or a number between {low} and {high}.",
                param=f"hyperparameters.{key}",
            )
        clean[key] = value
    for key in HYPERPARAMETER_RANGES:
        clean.setdefault(key, "auto")
    return clean


@routes.post("/v1/fine_tuning/jobs")
async def create_job(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    body = await json_body(request)
    model = expect(body, "model", str, required=True)
    refusal = backend.faults.fine_tune_refusal(request.headers.get(HEADER))
    if refusal == "access":
        # OpenAI answers organisations without fine-tuning access (since 2026-05-07) with a permission error; its
        # exact text is not published, this one says what users report ("permission denied") and why
        raise ApiError(
            403,
            "Fine-tuning is not available to your organization: you do not have access to create fine-tuning jobs.",
            "permission_error",
            code="fine_tuning_not_available",
        )
    try:
        if refusal == "model":
            raise ValueError(model)
        _, base = engine_for_base_model(model)
    except ValueError:
        raise ApiError(
            400,
            f"Model {model[:120]} is not available for fine-tuning or does not exist.",
            param="model",
            code="model_not_available",
        ) from None
    hyperparameters = _hyperparameters(body)
    # the values are checked against the spec before any file is looked up, as the API does
    suffix = string_of_length(body, "suffix", *SUFFIX_LENGTH)
    seed = int_in(body, "seed", *SEED_RANGE)
    metadata = expect(body, "metadata", dict) or None
    if metadata is not None:
        if len(metadata) > 16 or any(
            not isinstance(k, str) or len(k) > 64 or not isinstance(v, str) or len(v) > 512 for k, v in metadata.items()
        ):
            raise ApiError(
                400, "Invalid 'metadata': at most 16 string keys (64 chars) with string values (512).", param="metadata"
            )
    training_file = expect(body, "training_file", str, required=True)
    validation_file = expect(body, "validation_file", str)
    for param, file_id in (("training_file", training_file), ("validation_file", validation_file)):
        if file_id is None:
            continue
        try:
            if not ids.is_object_id(file_id, "file"):
                raise NotFound(file_id)
            backend.store.get_file(file_id)
        except NotFound:
            raise ApiError(400, f"invalid {param}: {file_id[:80]}", param=param, code="invalid_file") from None
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
        "seed": seed if seed is not None else random.randint(*SEED_RANGE),
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
    backend.store.add_events(job["id"], [job_event(f"Created fine-tuning job: {job['id']}")])
    backend.runner.wake()
    return web.json_response(_job_view(job))


def _job_view(job: Dict[str, Any]) -> Dict[str, Any]:
    view = public(job)
    view.pop("suffix", None)
    return view


def _job_or_404(request: web.Request) -> Dict[str, Any]:
    job_id = id_or_404(request.match_info["job_id"], "job", "job")
    try:
        return request.app[BACKEND].store.get_job(job_id)
    except NotFound:
        raise ApiError(
            404, f"Could not find fine-tune: {job_id}", param="fine_tuning_job_id", code="fine_tune_not_found"
        ) from None


@routes.get("/v1/fine_tuning/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    limit = query_int(request, "limit", 20, 1, 100)
    jobs = backend.store.list_jobs()
    wanted = {
        key[len("metadata[") : -1]: value
        for key, value in request.query.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    if wanted:
        jobs = [job for job in jobs if all((job.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
    listed = page(jobs, request.query.get("after"), limit)
    listed["data"] = [_job_view(job) for job in listed["data"]]
    return web.json_response(listed)


@routes.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(request: web.Request) -> web.Response:
    return web.json_response(_job_view(_job_or_404(request)))


@routes.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    job = _job_or_404(request)

    def change(current: Dict[str, Any]) -> None:
        if current["status"] in ("succeeded", "failed"):
            raise ApiError(
                400,
                f"Job has already completed: {current['status']}.",
                param="fine_tuning_job_id",
                code="job_already_completed",
            )
        if current["status"] in ACTIVE_STATUSES:
            current.update(status="cancelled", finished_at=int(time.time()), estimated_finish=None)

    updated = backend.store.update_job(job["id"], change)
    if job["status"] in ACTIVE_STATUSES:
        backend.store.add_events(job["id"], [job_event("Fine-tuning job cancelled")])
    return web.json_response(_job_view(updated))


@routes.post("/v1/fine_tuning/jobs/{job_id}/pause")
@routes.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def unsupported_job_action(request: web.Request) -> web.Response:
    raise ApiError(400, "Pausing and resuming jobs is not supported by the local backend.")


@routes.get("/v1/fine_tuning/jobs/{job_id}/events")
async def list_events(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    job = _job_or_404(request)
    limit = query_int(request, "limit", 20, 1, 1000)
    return web.json_response(page(backend.store.list_events(job["id"]), request.query.get("after"), limit))


@routes.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    limit = query_int(request, "limit", 10, 1, 100)
    checkpoints = list(reversed(job.get(PRIVATE, {}).get("checkpoints", []) if job["status"] == "succeeded" else []))
    return web.json_response(page(checkpoints, request.query.get("after"), limit))
