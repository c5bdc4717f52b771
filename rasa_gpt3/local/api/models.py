"""The /v1/models routes: list, retrieve and delete (base models are listed but cannot be deleted).

Every model carries OpenAI's optional `shutdown_date` ("YYYY-MM-DD", or null when none is announced; a fine-tuned
model shuts down with its base model). The local backend's models are retired by no provider, so it announces only
the dates of RASA_GPT3_SHUTDOWN_DATES (see rasa_gpt3.data.base_models), which lets tests simulate a retirement.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from aiohttp import web

from rasa_gpt3.data.base_models import known_base_models, shutdown_date
from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.local.api.backend import BACKEND, Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.store import NotFound

routes = web.RouteTableDef()


def _shutdown_date(model_id: str) -> Optional[str]:
    try:
        day = shutdown_date(model_id, provider_schedule=False)
    except RasaGPT3Error as error:
        raise ApiError(500, f"The local backend is misconfigured: {error}", "server_error") from None
    return day.isoformat() if day else None


def _base_model_object(name: str) -> Dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "system", "shutdown_date": _shutdown_date(name)}


def _public_model(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "id": meta["id"],
        "object": "model",
        "created": meta["created"],
        "owned_by": meta["owned_by"],
        "shutdown_date": _shutdown_date(meta["id"]),
    }


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    data = [_base_model_object(name) for name in known_base_models()]
    data += [_public_model(meta) for meta in backend.store.list_models()]
    return web.json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model}")
async def retrieve_model(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    model_id = request.match_info["model"]
    if model_id in known_base_models():
        return web.json_response(_base_model_object(model_id))
    try:
        return web.json_response(_public_model(backend.store.get_model(model_id)))
    except NotFound:
        raise ApiError(
            404, f"The model '{model_id[:120]}' does not exist", param="model", code="model_not_found"
        ) from None


@routes.delete("/v1/models/{model}")
async def delete_model(request: web.Request) -> web.Response:
    backend: Backend = request.app[BACKEND]
    model_id = request.match_info["model"]
    if model_id in known_base_models():
        raise ApiError(
            403, "You have insufficient permissions to delete a base model.", "permission_error", param="model"
        )
    try:
        backend.store.delete_model(model_id)
    except NotFound:
        raise ApiError(
            404, f"The model '{model_id[:120]}' does not exist", param="model", code="model_not_found"
        ) from None
    return web.json_response({"id": model_id, "object": "model", "deleted": True})
