"""The fine-tune lifecycle: cost guard, upload, job, follow, results, and the record in the project's registry.

The same code runs against OpenAI, any OpenAI-compatible server and the embedded local backend; it only uses the
current fine-tuning API (`client.files`, `client.fine_tuning.jobs`, `client.models`).

Decisions worth knowing:
- Idempotency: a fine-tune is identified by a key, sha256 over the data fingerprint (which already covers the
  prompt-format version and the format), task, base model, hyperparameters and seed. The key is stored in the
  job's metadata and in the registry entry. The same key never starts a second job: a succeeded model (from the
  registry, or found through the jobs list when the registry lost it) is reused, a running job is attached to.
  `force=True` starts anew. Epochs are resolved before hashing (`default_epochs(n)` when not given) and sent to
  the API explicitly, so the cost estimate and the key describe exactly the job that runs.
- Upload dedupe: the uploaded file's name embeds the sha256 of its bytes (`rasa-gpt3-intent-train-<16 hex>.jsonl`)
  and an identical file is found again through `files.list`. No local cache that could disagree with the server;
  it works for every member of a team against the same OpenAI organisation.
- The budget guard runs before anything is uploaded, and only when a new job would start: reusing a model costs
  nothing. The estimate uses the base model's price table even against the local backend (which is free), so a
  command behaves the same everywhere.
- Errors: every API failure becomes a BackendError with one line; a failed job's own error message is included
  with what to do next.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.client import SDK_ERRORS, api_errors, classify_api_error, make_client
from rasa_gpt3.data.base_models import BaseModel, check_epochs, default_epochs
from rasa_gpt3.errors import BackendError, BudgetError, DataError
from rasa_gpt3.fine_tune_jobs import (
    DEFAULT_SEED,
    JOB_SCAN_LIMIT,
    META_KEY,
    META_PROJECT,
    fetch_results,
    idempotency_key,
    job_epochs,
    job_metadata,
    job_metrics,
    model_exists,
)
from rasa_gpt3.model_lifecycle import fine_tune_refusal
from rasa_gpt3.progress import JobProgress, ProgressReporter, apply_event
from rasa_gpt3.registry import Registry, RegistryEntry, register_job
from rasa_gpt3.settings import Settings

logger = logging.getLogger(__name__)

RUNNING_STATUSES = ("validating_files", "queued", "running", "pausing", "paused")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
FILE_PURPOSE = "fine-tune"


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CostEstimate:
    """What a fine-tune would cost at the base model's training price."""

    base_model: str
    examples: int
    tokens_per_epoch: int
    epochs: int
    usd: float
    local: bool = False  # an open-weights model trained on this machine: no price, no budget to guard

    @property
    def trained_tokens(self) -> int:
        """Tokens billed: tokens per epoch times epochs."""
        return self.tokens_per_epoch * self.epochs

    def describe(self) -> str:
        """One line: dollars (or "local"), and how they come about."""
        price = "local, no price" if self.local else f"${self.usd:.4f}"
        return (
            f"{price} ({self.tokens_per_epoch:,} tokens x {self.epochs} epochs on {self.base_model}, "
            f"{self.examples} training examples)"
        )


@dataclass(frozen=True)
class FineTuneOutcome:
    """What `ensure_fine_tuned` did: the model (None while a job still runs), its job, and whether it was reused."""

    model: Optional[str]
    job_id: Optional[str]
    reused: bool
    status: str
    task: str
    base_model: str
    fingerprint: str
    key: str
    estimate: CostEstimate
    # True when an identical job was already running and we attached to it
    attached: bool = False
    entry: Optional[RegistryEntry] = None
    uploaded_files: Tuple[str, ...] = ()


class FollowInterrupted(KeyboardInterrupt):
    """Ctrl-C while following a job: the job keeps running on the server."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def resume_hint(self, project: Optional[str] = None) -> str:
        """One line telling how to pick the job up again."""
        where = f" --project {project}" if project and project != "." else ""
        return f"stopped following {self.job_id}; it keeps running. Resume with: rasa-gpt3 follow {self.job_id}{where}"


# ---------------------------------------------------------------------------------------------- pure parts


def estimate_cost(
    train_records: Sequence[Dict[str, Any]], base_model: BaseModel, epochs: Optional[int] = None
) -> CostEstimate:
    """The training cost of `train_records` on `base_model` (epochs: given, else OpenAI's default for the size).

    Raises DataError for epochs the API would refuse (0 is no way to say "auto": leave them out).
    """
    from rasa_gpt3.data.tokens import count_record_tokens, get_encoding

    check_epochs(epochs)
    records = list(train_records)
    n_epochs = epochs if epochs is not None else default_epochs(len(records))
    per_record = count_record_tokens(records, get_encoding(base_model.encoding)) if records else []
    # OpenAI truncates examples to the context; billed tokens cannot exceed it
    tokens = sum(min(count, base_model.context) for count in per_record)
    usd = base_model.training_cost(tokens * n_epochs)
    return CostEstimate(
        base_model=base_model.name,
        examples=len(records),
        tokens_per_epoch=tokens,
        epochs=n_epochs,
        usd=usd,
        local=base_model.open_weights,
    )


def check_budget(estimate: CostEstimate, max_cost: Optional[float]) -> None:
    """Raises BudgetError (one line) when the estimate is above `max_cost` dollars (never for a local model)."""
    if max_cost is None or estimate.local or estimate.usd <= max_cost:
        return
    raise BudgetError(
        f"estimated cost {estimate.describe()} is above --max-cost ${max_cost:.4f}; nothing was uploaded. "
        "Raise --max-cost, lower --epochs, or choose a cheaper --base-model"
    )


def supervised_hyperparameters(
    epochs: int, batch_size: Optional[int] = None, learning_rate_multiplier: Optional[float] = None
) -> Dict[str, Any]:
    """The hyperparameters sent with the job: explicit epochs, batch size and learning rate multiplier when given,
    else left to the API ("auto")."""
    return {
        "n_epochs": int(epochs),
        "batch_size": "auto" if batch_size is None else int(batch_size),
        "learning_rate_multiplier": "auto" if learning_rate_multiplier is None else float(learning_rate_multiplier),
    }


def upload_filename(task: str, kind: str, content: bytes) -> str:
    """The name an upload gets; it embeds the content hash, which is how an identical upload is found again."""
    return f"rasa-gpt3-{task}-{kind}-{hashlib.sha256(content).hexdigest()[:16]}.jsonl"


def default_suffix(project_name: str) -> str:
    """A model-name suffix from the project name (lowercase letters, digits and dashes, at most 40 characters)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", project_name.lower()).strip("-")
    return cleaned[:40].rstrip("-") or "rasa-gpt3"


def failure_message(job: Any) -> str:
    """One line: why the job failed or stopped, and what to do next."""
    if job.status == "cancelled":
        return f"fine-tuning job {job.id} was cancelled; run `rasa-gpt3 fine-tune` again to start a new one"
    error = getattr(job, "error", None)
    reason = " ".join(str(getattr(error, "message", "") or "no reason given").split()) if error else "no reason given"
    code = f" [{error.code}]" if error is not None and getattr(error, "code", None) else ""
    param = getattr(error, "param", None) if error is not None else None
    if param in ("training_file", "validation_file"):
        hint = "fix the data (check it with `rasa-gpt3 validate FILE.jsonl`) and run `rasa-gpt3 fine-tune` again"
    else:
        hint = f"run `rasa-gpt3 fine-tune` again; if it fails again, look at `rasa-gpt3 status {job.id}`"
    return f"fine-tuning job {job.id} failed: {reason}{code}; {hint}"


def poll_interval(settings: Settings) -> float:
    """Seconds between polls of a job: short for the local backend (jobs take seconds), longer for a remote API."""
    from urllib.parse import urlparse

    host = urlparse(settings.base_url).hostname if settings.base_url else None
    if settings.uses_local_backend or host in ("127.0.0.1", "localhost", "::1"):
        return 0.2
    return 5.0


# ---------------------------------------------------------------------------------------------- API access


def _retrieve_job(client: Any, job_id: str, backend: str) -> Any:
    try:
        return client.fine_tuning.jobs.retrieve(job_id)
    except SDK_ERRORS as error:
        if classify_api_error(error).not_found:
            raise BackendError(f"no fine-tuning job '{job_id}' on {backend}; see `rasa-gpt3 list`") from None
        raise


def upload_jsonl(client: Any, content: bytes, task: str, kind: str) -> Tuple[str, bool]:
    """Uploads JSONL `content` unless an identical file is already there; returns (file id, reused)."""
    filename = upload_filename(task, kind, content)
    for existing in client.files.list(purpose=FILE_PURPOSE):
        if (
            existing.filename == filename
            and existing.bytes == len(content)
            and getattr(existing, "status", None) not in ("error", "deleted")
        ):
            logger.debug("reusing uploaded file %s (%s)", existing.id, filename)
            return existing.id, True
    uploaded = client.files.create(file=(filename, content, "application/jsonl"), purpose=FILE_PURPOSE)
    logger.debug("uploaded %s as %s", filename, uploaded.id)
    return uploaded.id, False


def find_identical_job(client: Any, key: str) -> Optional[Any]:
    """The newest job with idempotency `key` that succeeded or still runs (succeeded preferred), or None."""
    succeeded, running = None, None
    for index, job in enumerate(client.fine_tuning.jobs.list(metadata={META_KEY: key}, limit=100)):
        if index >= JOB_SCAN_LIMIT:
            break
        if (job.metadata or {}).get(META_KEY) != key:
            continue
        if job.status == "succeeded" and job.fine_tuned_model and succeeded is None:
            succeeded = job
        elif job.status in RUNNING_STATUSES and running is None:
            running = job
    return succeeded or running


def _new_events(client: Any, job_id: str, seen: set) -> List[Any]:
    """Events not seen yet, oldest first (the API lists newest first; stop paging at the first one seen)."""
    fresh: List[Any] = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        if event.id in seen:
            break
        fresh.append(event)
    fresh.reverse()
    return fresh


def _is_metrics(event: Any) -> bool:
    return getattr(event, "type", None) == "metrics" or bool(re.match(r"\s*step \d+", event.message or "", re.I))


def follow_job(
    client: Any,
    job_id: str,
    *,
    progress: Optional[ProgressReporter] = None,
    interval: float = 0.2,
    reconnect_for: float = 180.0,
    backend: str = "the backend",
    sleep: Callable[[float], None] = time.sleep,
) -> Tuple[Any, JobProgress]:
    """Polls job `job_id` and its events until it finishes; returns (final job, last progress snapshot).

    Lost connections, timeouts, 429s and 5xx are retried for up to `reconnect_for` seconds, resuming from the
    last event seen (so a restarted server or a dropped connection costs nothing). Ctrl-C raises FollowInterrupted;
    the job keeps running.
    """
    state = JobProgress(job_id=job_id)
    seen: set = set()
    trouble_since: Optional[float] = None
    try:
        while True:
            try:
                job = _retrieve_job(client, job_id, backend)
                state = replace(state, n_epochs=job_epochs(job) or state.n_epochs)
                for event in _new_events(client, job_id, seen):
                    seen.add(event.id)
                    state = apply_event(state, event)
                    if progress is not None and not _is_metrics(event):
                        progress.update(state, event.message)
                # the status last: events fetched after it may still describe an earlier state
                state = replace(state, status=job.status)
                if progress is not None:
                    progress.update(state)
                if trouble_since is not None:
                    logger.info("reconnected to %s; following %s again", backend, job_id)
                    trouble_since = None
                if job.status in FINISHED_STATUSES:
                    return job, state
            except SDK_ERRORS as error:
                failure = classify_api_error(error)
                if not failure.retryable:
                    raise BackendError(f"following {job_id}: {failure.message}") from None
                now = time.monotonic()
                if trouble_since is None:
                    trouble_since = now
                    logger.warning("lost contact with %s while following %s; retrying", backend, job_id)
                elif now - trouble_since > reconnect_for:
                    raise BackendError(
                        f"lost contact with {backend} for {reconnect_for:.0f}s while following {job_id} "
                        f"({failure.message}); the job may still run: rasa-gpt3 follow {job_id}"
                    ) from None
                sleep(min(max(interval, 1.0), 5.0))
                continue
            sleep(interval)
    except KeyboardInterrupt:
        raise FollowInterrupted(job_id) from None
    finally:
        if progress is not None:
            progress.close()


# ---------------------------------------------------------------------------------------------- the lifecycle


def _check_records(exported: Any) -> None:
    """Raises DataError when the export's validation report (computed now if missing) has errors."""
    if not exported.train:
        raise DataError(f"no {exported.task} training examples in the project; nothing to fine-tune")
    report = getattr(exported, "report", None)
    if report is None:
        from rasa_gpt3.data.validation import validate_records

        report = validate_records(
            exported.train + exported.valid,
            fmt=exported.fmt,
            base_model=exported.base_model,
            codec=exported.codec,
            source=f"{exported.task} export",
        )
    errors = list(report.errors)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        fix = f"; {first.fix}" if getattr(first, "fix", "") else ""
        raise DataError(
            f"the {exported.task} data has errors, nothing was uploaded: {first.message}{fix}{more}; "
            "`rasa-gpt3 export` shows the full report"
        )


def ensure_fine_tuned(
    settings: Settings,
    exported: Any,
    *,
    project_name: str,
    epochs: Optional[int] = None,
    suffix: Optional[str] = None,
    max_cost: Optional[float] = None,
    wait: bool = True,
    force: bool = False,
    progress: Optional[ProgressReporter] = None,
    seed: int = DEFAULT_SEED,
    registry: Optional[Registry] = None,
    batch_size: Optional[int] = None,
    learning_rate_multiplier: Optional[float] = None,
    lora: Optional[Dict[str, str]] = None,
) -> FineTuneOutcome:
    """Makes sure a fine-tuned model exists for `exported` (an ExportedTask) and records it in the registry.

    Validates, estimates the cost, reuses an identical succeeded model or attaches to an identical running job
    (unless `force`), otherwise checks `max_cost`, uploads (deduplicated), creates the job (batch size and
    learning rate multiplier "auto" unless given; `lora`, job metadata from LoraSettings.metadata_from_options, only
    for an open-weights base model) and, with `wait`, follows it. `progress=None` is quiet (for
    `rasa train`). `registry` is the project's registry when the caller has already read it (read once
    otherwise). Raises DataError, BudgetError or BackendError, each with one line;
    Ctrl-C while waiting raises FollowInterrupted and leaves the job running.
    """
    base_model: BaseModel = exported.base_model
    _check_records(exported)
    if lora and not base_model.open_weights:
        raise DataError(
            f"LoRA settings apply to open-weights base models (--base-model hf:ORG/NAME or a directory), "
            f"not {base_model.name}"
        )
    estimate = estimate_cost(exported.train, base_model, epochs)
    hyperparameters = supervised_hyperparameters(estimate.epochs, batch_size, learning_rate_multiplier)
    key = idempotency_key(exported.fingerprint, exported.task, base_model.name, hyperparameters, seed, lora)
    backend = settings.backend_name
    common = dict(
        task=exported.task, base_model=base_model.name, fingerprint=exported.fingerprint, key=key, estimate=estimate
    )

    client = make_client(settings)
    if not force:
        if registry is None:
            registry = Registry.load(settings.registry_path)
        reused = _reuse(settings, registry, client, exported.task, key, common)
        if reused is not None:
            if reused.model is not None or not wait:
                return reused
            return _finish(settings, client, reused.job_id, progress, common, reused=True, attached=True)

    check_budget(estimate, max_cost)
    logger.info("estimated cost: %s", estimate.describe())
    with api_errors(f"uploading the {exported.task} training data to {backend}"):
        # the bytes of `rasa-gpt3 export`'s train.jsonl / valid.jsonl, so their sha256 matches the upload's name
        train_id, reused_train = upload_jsonl(client, exported.jsonl("train").encode("utf-8"), exported.task, "train")
        valid_id, reused_valid = None, True
        if exported.valid:
            valid_content = exported.jsonl("valid").encode("utf-8")
            valid_id, reused_valid = upload_jsonl(client, valid_content, exported.task, "valid")
    logger.info(
        "training file %s, validation file %s (%s)",
        train_id,
        valid_id or "none",
        "already uploaded" if reused_train and reused_valid else "uploaded",
    )
    with api_errors(f"creating the fine-tuning job on {backend}"):
        try:
            job = client.fine_tuning.jobs.create(
                model=base_model.name,
                training_file=train_id,
                validation_file=valid_id,
                seed=seed,
                suffix=suffix or default_suffix(project_name),
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
                metadata={**job_metadata(exported, project_name, key), **(lora or {})},
            )
        except SDK_ERRORS as error:
            # a provider that no longer fine-tunes (for this organisation, or this base model) is not a glitch
            refusal = fine_tune_refusal(error, base_model.name, backend)
            if refusal is None:
                raise
            raise BackendError(refusal) from None
    logger.info("started fine-tuning job %s (%s, %s) on %s", job.id, exported.task, base_model.name, backend)
    files = tuple(file_id for file_id in (train_id, valid_id) if file_id)
    if not wait:
        return FineTuneOutcome(
            model=None, job_id=job.id, reused=False, status=job.status, uploaded_files=files, **common
        )
    outcome = _finish(settings, client, job.id, progress, common, reused=False, attached=False)
    return replace(outcome, uploaded_files=files)


def _reuse(
    settings: Settings, registry: Registry, client: Any, task: str, key: str, common: Dict[str, Any]
) -> Optional[FineTuneOutcome]:
    """An outcome for an identical model (registry, then jobs list) or an identical running job; None if neither."""
    backend = settings.backend_name
    entry = registry.find(task, backend, key=key)
    with api_errors(f"looking for an identical fine-tune on {backend}"):
        if entry is not None and model_exists(client, entry.model):
            if (registry.active(task, backend) or entry).model != entry.model:
                with Registry.editing(settings.registry_path) as editing:
                    editing.record(task, entry, activate=True)
            logger.info("reusing %s: same data, base model and hyperparameters", entry.model)
            return FineTuneOutcome(
                model=entry.model, job_id=entry.job, reused=True, status="succeeded", entry=entry, **common
            )
        job = find_identical_job(client, key)
        if job is None:
            return None
        if job.status == "succeeded":
            if not model_exists(client, job.fine_tuned_model):
                return None
            registered = register_job(settings, job, job_metrics(client, job))
            logger.info("reusing %s from job %s", job.fine_tuned_model, job.id)
            return FineTuneOutcome(
                model=job.fine_tuned_model, job_id=job.id, reused=True, status=job.status, entry=registered, **common
            )
    logger.info("attaching to the identical job %s, still %s", job.id, job.status)
    return FineTuneOutcome(model=None, job_id=job.id, reused=True, attached=True, status=job.status, **common)


def _finish(
    settings: Settings,
    client: Any,
    job_id: str,
    progress: Optional[ProgressReporter],
    common: Dict[str, Any],
    *,
    reused: bool,
    attached: bool,
) -> FineTuneOutcome:
    try:
        job, state = follow_job(
            client, job_id, progress=progress, interval=poll_interval(settings), backend=settings.backend_name
        )
    except FollowInterrupted as stop:
        if progress is None:  # quiet callers (`rasa train`) print nothing else about the job
            logger.warning(stop.resume_hint(str(settings.project_dir)))
        raise
    if job.status != "succeeded":
        raise BackendError(failure_message(job))
    entry = register_job(settings, job, job_metrics(client, job, state))
    return FineTuneOutcome(
        model=job.fine_tuned_model,
        job_id=job.id,
        reused=reused,
        attached=attached,
        status=job.status,
        entry=entry,
        **common,
    )


def follow(
    settings: Settings, job_id: str, progress: Optional[ProgressReporter] = None
) -> Tuple[Any, Optional[RegistryEntry]]:
    """Follows a job to its end (`rasa-gpt3 follow`); a succeeded rasa_gpt3 job is recorded in the registry.

    Returns (job, registry entry or None); raises BackendError with the job's error when it failed.
    """
    client = make_client(settings)
    job, state = follow_job(
        client, job_id, progress=progress, interval=poll_interval(settings), backend=settings.backend_name
    )
    if job.status != "succeeded":
        raise BackendError(failure_message(job))
    return job, register_job(settings, job, job_metrics(client, job, state))


# ---------------------------------------------------------------------------------------------- job inspection


def get_job(settings: Settings, job_id: str) -> Tuple[Any, JobProgress, List[Any]]:
    """A job, its progress as of its newest 100 events, and the newest 10 non-metrics events (oldest first)."""
    client = make_client(settings)
    with api_errors(f"reading job {job_id}"):
        job = _retrieve_job(client, job_id, settings.backend_name)
        events = list(client.fine_tuning.jobs.list_events(job_id, limit=100).data)
    events.reverse()
    progress = JobProgress(job_id=job_id, n_epochs=job_epochs(job))
    for event in events:
        progress = apply_event(progress, event)
    progress = replace(progress, status=job.status)
    messages = [event for event in events if not _is_metrics(event)][-10:]
    return job, progress, messages


def cancel_job(settings: Settings, job_id: str) -> Any:
    """Cancels a job; raises BackendError when it already finished."""
    client = make_client(settings)
    with api_errors(f"reading job {job_id}"):
        job = _retrieve_job(client, job_id, settings.backend_name)
    if job.status in FINISHED_STATUSES:
        raise BackendError(f"job {job_id} already {job.status}; nothing to cancel")
    with api_errors(f"cancelling job {job_id}"):
        return client.fine_tuning.jobs.cancel(job_id)


def list_jobs(settings: Settings, project_name: Optional[str], limit: int = 100) -> List[Any]:
    """The newest jobs (at most `limit`), only this project's (from job metadata) when `project_name` is given."""
    client = make_client(settings)
    jobs: List[Any] = []
    query = {"metadata": {META_PROJECT: project_name}} if project_name else {}
    with api_errors(f"listing fine-tuning jobs on {settings.backend_name}"):
        for index, job in enumerate(client.fine_tuning.jobs.list(limit=min(limit, 100), **query)):
            if index >= JOB_SCAN_LIMIT or len(jobs) >= limit:
                break
            meta = job.metadata or {}
            if project_name and (meta.get(META_PROJECT) != project_name or META_KEY not in meta):
                continue
            jobs.append(job)
    return jobs


def job_results(settings: Settings, job_id: str) -> Tuple[Any, Any]:
    """(job, ResultTable) of a finished job."""
    client = make_client(settings)
    with api_errors(f"reading job {job_id}"):
        job = _retrieve_job(client, job_id, settings.backend_name)
    return job, fetch_results(client, job)
