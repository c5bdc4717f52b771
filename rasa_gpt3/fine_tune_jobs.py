"""What a fine-tuning job says about its model: the metadata rasa_gpt3 stores with it (the fine-tune's idempotency
key among it), its epochs and metrics.

Read by the fine-tune lifecycle (`finetune`) and by the registry's verbs (`registry`), which describe a model from
the job that made it and check that the backend still serves it. The SDK (`rasa_gpt3.client`) is imported inside
the functions that call the API: it takes seconds to import, and reading the registry must not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict, Optional

from rasa_gpt3.errors import BackendError, RasaGPT3Error
from rasa_gpt3.progress import JobProgress, apply_event
from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION

# the fine-tune lifecycle's log, which `rasa-gpt3 fine-tune` shows on stderr
logger = logging.getLogger("rasa_gpt3.finetune")

# Job metadata keys. `rasa_gpt3_key` marks a job as ours (other tools' jobs may also say `project`); the local
# backend reads `task` to choose between a classifier and retrieval.
META_KEY = "rasa_gpt3_key"
META_PROJECT = "project"
META_TASK = "task"
META_FINGERPRINT = "fingerprint"
META_PROMPT_FORMAT = "prompt_format"
META_FORMAT = "format"

# how many jobs to look through for a matching one when the server ignores a filter
JOB_SCAN_LIMIT = 500
DEFAULT_SEED = 42


def idempotency_key(
    fingerprint: str,
    task: str,
    base_model: str,
    hyperparameters: Dict[str, Any],
    seed: int = DEFAULT_SEED,
    lora: Optional[Dict[str, str]] = None,
) -> str:
    """The fine-tune's identity: the same data, task, base model, hyperparameters, seed and LoRA settings give the
    same key (no LoRA settings: the key an earlier version gave, so its models are still reused)."""
    identity: Dict[str, Any] = {
        "fingerprint": fingerprint,
        "task": task,
        "base_model": base_model,
        "hyperparameters": hyperparameters,
        "seed": seed,
    }
    if lora:
        identity["lora"] = lora
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def job_metadata(exported: Any, project_name: str, key: str) -> Dict[str, str]:
    """The metadata stored with a job: enough to find it again and to register its model later."""
    return {
        META_KEY: key,
        META_PROJECT: project_name[:512],
        META_TASK: exported.task,
        META_FINGERPRINT: exported.fingerprint,
        META_PROMPT_FORMAT: PROMPT_FORMAT_VERSION,
        META_FORMAT: exported.fmt,
    }


def job_epochs(job: Any) -> Optional[int]:
    """The job's n_epochs, from `method.supervised` or the legacy `hyperparameters` (None when 'auto')."""
    candidates = []
    method = getattr(job, "method", None)
    supervised = getattr(method, "supervised", None) if method is not None else None
    if supervised is not None and getattr(supervised, "hyperparameters", None) is not None:
        candidates.append(supervised.hyperparameters.n_epochs)
    if getattr(job, "hyperparameters", None) is not None:
        candidates.append(job.hyperparameters.n_epochs)
    for value in candidates:
        if isinstance(value, int):
            return value
    return None


def model_exists(client: Any, model: str) -> bool:
    """Whether the backend still serves `model` (a deleted model, or another machine's local model, does not)."""
    from rasa_gpt3.client import SDK_ERRORS, classify_api_error

    try:
        client.models.retrieve(model)
        return True
    except SDK_ERRORS as error:
        failure = classify_api_error(error)
        if failure.not_found or failure.forbidden:
            return False
        raise


def job_of_model(client: Any, model: str) -> Optional[Any]:
    """The newest job (of the newest JOB_SCAN_LIMIT) that made `model`, or None."""
    for index, job in enumerate(client.fine_tuning.jobs.list(limit=100)):
        if index >= JOB_SCAN_LIMIT:
            break
        if job.fine_tuned_model == model:
            return job
    return None


def fetch_results(client: Any, job: Any) -> Any:
    """The job's result file as a ResultTable; raises BackendError when the job has none yet."""
    from rasa_gpt3.client import api_errors
    from rasa_gpt3.training_results import parse_result_file

    if not getattr(job, "result_files", None):
        raise BackendError(f"job {job.id} has no result file yet (status: {job.status}); try again when it succeeded")
    with api_errors(f"downloading the result file of {job.id}"):
        content = client.files.content(job.result_files[0]).content
    return parse_result_file(content)


def job_metrics(client: Any, job: Any, progress: Optional[JobProgress] = None) -> Dict[str, float]:
    """The final metrics of a finished job, full-validation figures preferred.

    The result file gives the last per-step values; the events (or `progress`, when the job was followed) give the
    full-validation loss and accuracy of the last epoch, which replace the noisier per-step validation figures.
    """
    from rasa_gpt3.client import SDK_ERRORS

    metrics: Dict[str, float] = {}
    try:
        metrics.update(fetch_results(client, job).final_metrics())
    except RasaGPT3Error as error:
        logger.debug("no metrics from the result file of %s: %s", job.id, error)
    if progress is None:
        progress = JobProgress()
        try:
            events = list(client.fine_tuning.jobs.list_events(job.id, limit=100).data)
        except SDK_ERRORS as error:  # metrics are nice to have; a finished model must still be registered
            logger.debug("no events for %s: %s", job.id, error)
            events = []
        for event in reversed(events):
            progress = apply_event(progress, event)
    full = {"valid_loss": progress.full_valid_loss, "valid_accuracy": progress.full_valid_accuracy}
    metrics.update({name: value for name, value in full.items() if value is not None})
    for name, value in progress.metrics().items():
        metrics.setdefault(name, value)
    return metrics
