"""One server instance's state: the store, the job runner, faults, request counters and the loaded models."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from aiohttp import web

from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.engine_registry import engine_for_base_model, load_engine
from rasa_gpt3.local.engines import Engine
from rasa_gpt3.local.faults import FaultPlan
from rasa_gpt3.local.jobs import JobRunner
from rasa_gpt3.local.lora.errors import MISSING_DEPENDENCY, LoraError
from rasa_gpt3.local.store import NotFound, Store

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# a file every local backend of every process appends one line per API request to (tests across processes)
ENV_REQUEST_LOG = "RASA_GPT3_REQUEST_LOG"


class Backend:
    """Everything one server instance needs: the store, the job runner, faults, counters and loaded models."""

    def __init__(
        self,
        state_dir: Path,
        *,
        token: Optional[str] = None,
        faults: Optional[str] = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        run_jobs: bool = True,
        header_faults: Optional[bool] = None,
    ) -> None:
        self.store = Store(state_dir)
        self.token = token or None
        self.faults = FaultPlan(faults, header_faults=header_faults)
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
            line = f"{time.time():.3f} {os.getpid()} {route}\n".encode()
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
            return {
                "requests": self.counts.get("total", 0),
                "by_route": by_route,
                "state_dir": str(self.store.root),
                "faults": self.faults.configured,
            }

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
        except LoraError as error:  # its base model is gone, or the lora extra is not installed here
            raise ApiError(
                503 if error.code == MISSING_DEPENDENCY else 404,
                f"The model `{model_id}` cannot be loaded: {error.message}",
                type_="server_error" if error.code == MISSING_DEPENDENCY else "invalid_request_error",
                param="model",
                code=error.code,
            ) from None
        with self._models_lock:
            self._models[model_id] = (version, loaded)
        return loaded


def _model_missing_message(model_id: str) -> str:
    try:
        engine_for_base_model(model_id)
        if not str(model_id).startswith("ft:"):
            return (
                f"The model `{model_id}` is a base model; the local backend only serves models fine-tuned on it. "
                "Fine-tune first (rasa-gpt3 fine-tune)."
            )
    except ValueError:
        pass
    return f"The model `{model_id}` does not exist or you do not have access to it."


BACKEND = web.AppKey("backend", Backend)
