"""Runs the local backend's fine-tuning jobs: validate the files, train, write events, the model and the results.

Each server process has one JobRunner thread. It looks for jobs that are not finished, claims one by taking the
job's file lock (so exactly one process trains it), and trains it. A job left `running` by a process that died has
a free lock and is claimed and trained again from the start by whichever process looks next.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from rasa_gpt3.data.base_models import BaseModel
from rasa_gpt3.data.tokens import count_record_tokens, get_encoding
from rasa_gpt3.data.tool_calls import makes_a_call, tool_use_problems
from rasa_gpt3.data.validation import CHAT_ROLES
from rasa_gpt3.local import ids
from rasa_gpt3.local.engine_registry import ENGINE_FIELD, engine_for_base_model
from rasa_gpt3.local.engines import EngineKind, Hyperparameters, TrainedModel, TrainingCancelled, TrainingRun
from rasa_gpt3.local.lora.errors import LoraError
from rasa_gpt3.local.store import PRIVATE, TERMINAL_STATUSES, NotFound, Store
from rasa_gpt3.local.trainer import resolve_hyperparameters

logger = logging.getLogger(__name__)

MIN_EXAMPLES = 10
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# how often buffered events are written and cancellation is checked while training
FLUSH_SECONDS = 0.3


class InvalidFile(Exception):
    """A training or validation file the job cannot use; carries OpenAI's error code/param."""

    def __init__(self, message: str, param: str, code: str = "invalid_training_file") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def parse_records(content: bytes, base_model: BaseModel, param: str) -> List[Dict[str, Any]]:
    """The records of a fine-tune JSONL file, checked as OpenAI checks them; raises InvalidFile."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFile("Invalid file format: the file is not UTF-8 text.", param) from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidFile(f"Invalid file format. Line {number} is not valid JSON: {error.msg}.", param) from None
        if not isinstance(record, dict):
            raise InvalidFile(f"Invalid file format. Line {number} is not a JSON object.", param)
        problem = _record_problem(record, base_model.format)
        if problem:
            raise InvalidFile(f"Invalid file format. Line {number}, {problem}", param)
        records.append(record)
    if len(records) < MIN_EXAMPLES and param == "training_file":
        raise InvalidFile(
            f"Training file has {len(records)} example(s), but must have at least {MIN_EXAMPLES} examples.", param
        )
    return records


def _record_problem(record: Dict[str, Any], fmt: str) -> Optional[str]:
    if fmt == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return 'key "messages": a non-empty list of messages is required for chat models.'
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
                return f'key "messages": every message needs a role of {", ".join(sorted(CHAT_ROLES))}.'
            content = message.get("content")
            if not isinstance(content, str) and not (content is None and makes_a_call(message)):
                return 'key "messages": every message needs string content (a message that calls a tool may have none).'
            if message.get("weight", 1) not in (0, 1):
                return 'key "weight": 0 or 1 is expected.'
        problems = tool_use_problems(record)
        if problems:
            return f"tool calls: {problems[0]}."
        if messages[-1]["role"] != "assistant":
            return 'key "messages": the last message must be from the assistant.'
        return None
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("completion"), str):
        return 'keys "prompt" and "completion" (strings) are required for completion models.'
    return None


def job_event(
    message: str, level: str = "info", data: Optional[Dict[str, Any]] = None, kind: str = "message"
) -> Dict[str, Any]:
    """A new fine-tuning job event as the API lists it."""
    return {
        "id": ids.new_id("event"),
        "object": "fine_tuning.job.event",
        "created_at": int(time.time()),
        "level": level,
        "message": message,
        "data": data or {},
        "type": kind,
    }


class JobRunner:
    """The background thread that trains this process's share of the jobs in one state directory."""

    def __init__(self, store: Store, poll_seconds: float = 0.5) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._finished: set = set()

    def start(self) -> None:
        """Starts the runner thread (a daemon: it never keeps the process alive)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rasa-gpt3-local-jobs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Asks the runner to stop after the current step."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Looks for new work now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_pending()
            except Exception:  # a broken job must not stop the runner
                logger.exception("local backend job runner error")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _run_pending(self) -> None:
        for job_id, status in self.store.job_statuses(skip=self._finished):
            if self._stop.is_set():
                return
            if status in TERMINAL_STATUSES:
                self._finished.add(job_id)
                continue
            lock = self.store.try_claim_job(job_id)
            if lock is None:
                continue
            try:
                # re-read under the claim: another process may have finished it meanwhile
                job = self.store.get_job(job_id)
                if job["status"] in TERMINAL_STATUSES:
                    self._finished.add(job_id)
                    continue
                JobExecution(self.store, job, self._stop).run()
                self._finished.add(job_id)
            except NotFound:
                self._finished.add(job_id)
            finally:
                lock.release()


class JobExecution:
    """One run of one job: emits events as it goes and writes the model and result file at the end."""

    def __init__(self, store: Store, job: Dict[str, Any], stop: threading.Event) -> None:
        self.store = store
        self.job = job
        self.job_id = job["id"]
        self.stop = stop
        self._buffer: List[Dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._last_check = 0.0
        self._cancelled = False
        self.rows: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ events

    def event(
        self, message: str, level: str = "info", data: Optional[Dict[str, Any]] = None, kind: str = "message"
    ) -> None:
        """Queues an event; flushed within FLUSH_SECONDS."""
        self._buffer.append(job_event(message, level, data, kind))
        if time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Writes queued events."""
        events, self._buffer = self._buffer, []
        self.store.add_events(self.job_id, events)
        self._last_flush = time.monotonic()

    def set(self, **fields: Any) -> Dict[str, Any]:
        """Updates job fields unless the job was cancelled meanwhile; returns the stored job."""

        def change(job: Dict[str, Any]) -> None:
            if job["status"] == "cancelled":
                self._cancelled = True
                return
            job.update(fields)

        self.job = self.store.update_job(self.job_id, change)
        if self._cancelled:
            raise TrainingCancelled()
        return self.job

    def cancelled(self) -> bool:
        """Whether the job was cancelled (checked on disk at most every FLUSH_SECONDS) or the runner stops."""
        if self.stop.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check > FLUSH_SECONDS:
            self._last_check = now
            try:
                self._cancelled = self.store.get_job(self.job_id)["status"] == "cancelled"
            except NotFound:
                self._cancelled = True
            if now - self._last_flush > FLUSH_SECONDS:
                self.flush()
        return self._cancelled

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        """Validates, trains and finishes the job; never raises for a bad job (the job fails instead)."""
        started = time.time()
        try:
            if self.job["status"] == "running":
                self.event("Training restarted: the process that was running this job stopped.", level="warn")
            engine, base_model = engine_for_base_model(self.job["model"])
            self.set(status="validating_files")
            self.event(f"Validating training file: {self.job['training_file']}")
            train_records, valid_records = self._load_files(base_model)
            self.event("Files validated, moving job to queued state")
            self.set(status="queued")
            requested = self.job[PRIVATE].get("requested_hyperparameters") or {}
            hyperparameters = resolve_hyperparameters(requested, len(train_records))
            self.set(
                status="running",
                hyperparameters=hyperparameters.as_dict(),
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters.as_dict()}},
                estimated_finish=int(time.time()) + 30,
            )
            self.event("Fine-tuning job started")
            trained = engine.train(
                TrainingRun(
                    job=self.job,
                    base_model=base_model,
                    train_records=train_records,
                    valid_records=valid_records,
                    hyperparameters=hyperparameters,
                    seed=int(self.job.get("seed") or 0),
                    events=self,
                    cancelled=self.cancelled,
                )
            )
            if self.cancelled():
                raise TrainingCancelled()
            self._finish(engine, base_model, trained, train_records, hyperparameters, started)
        except TrainingCancelled:
            self.flush()
        except InvalidFile as error:
            self.event(error.message, level="error")
            self._fail(error.code, error.message, error.param)
        except NotFound as error:
            self._fail("invalid_training_file", f"File {error} does not exist.", "training_file")
        except ValueError as error:
            self._fail("invalid_request", str(error), None)
        except LoraError as error:  # base model not found, no chat template, out of memory...: the user can fix it
            self._fail(error.code, error.message, None)
        except Exception as error:  # the job fails with a reason; the server keeps running
            logger.exception("local fine-tuning job %s crashed", self.job_id)
            self._fail("server_error", f"Training failed: {type(error).__name__}: {error}", None)

    def _fail(self, code: str, message: str, param: Optional[str]) -> None:
        self.event(f"Fine-tuning job failed: {message}", level="error")
        self.flush()
        try:
            self.set(
                status="failed",
                finished_at=int(time.time()),
                estimated_finish=None,
                error={"code": code, "message": message, "param": param},
            )
        except TrainingCancelled:
            pass

    def _load_files(self, base_model: BaseModel) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        try:
            content = self.store.file_content(self.job["training_file"])
        except NotFound:
            raise InvalidFile(f"File {self.job['training_file']} does not exist.", "training_file") from None
        train_records = parse_records(content, base_model, "training_file")
        valid_records: List[Dict[str, Any]] = []
        if self.job.get("validation_file"):
            try:
                content = self.store.file_content(self.job["validation_file"])
            except NotFound:
                raise InvalidFile(
                    f"File {self.job['validation_file']} does not exist.", "validation_file", "invalid_validation_file"
                ) from None
            valid_records = parse_records(content, base_model, "validation_file")
        return train_records, valid_records

    # ------------------------------------------------------------------ engines.TrainingEvents

    def message(self, text: str, level: str = "info") -> None:
        """A job event from the trainer."""
        self.event(text, level=level)

    def step(self, metrics: Dict[str, Any]) -> None:
        """A metrics event and a row of the result file for one training step."""
        keys = (
            "step",
            "train_loss",
            "train_mean_token_accuracy",
            "valid_loss",
            "valid_mean_token_accuracy",
            "total_steps",
        )
        data = {key: metrics[key] for key in keys if key in metrics}
        message = f"Step {metrics['step']}/{metrics['total_steps']}: training loss={metrics['train_loss']:.4f}"
        if "valid_loss" in metrics:
            message += f", validation loss={metrics['valid_loss']:.4f}"
        self.event(message, data=data, kind="metrics")
        self.rows.append(metrics)

    def checkpoint(self, summary: Dict[str, Any]) -> None:
        """A checkpoint (with the latest step's metrics) and a metrics event at an epoch's end."""
        checkpoint = {
            "id": ids.new_id("checkpoint"),
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(time.time()),
            "fine_tuning_job_id": self.job_id,
            "step_number": summary["step"],
            "metrics": {"step": float(summary["step"]), **{k: v for k, v in summary.items() if k.startswith("full_")}},
        }
        if self.rows:
            last = self.rows[-1]
            for key in ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"):
                if key in last:
                    checkpoint["metrics"][key] = last[key]
        self.job[PRIVATE].setdefault("checkpoints", []).append(checkpoint)
        message = f"Epoch {summary['epoch']} done at step {summary['step']}"
        if "full_valid_loss" in summary:
            message += (
                f": full validation loss={summary['full_valid_loss']:.4f}, "
                f"accuracy={summary['full_valid_mean_token_accuracy']:.4f}"
            )
        self.event(message, data=summary, kind="metrics")

    def _result_csv(self) -> bytes:
        out = io.StringIO()
        out.write(",".join(RESULT_COLUMNS) + "\n")
        for row in self.rows:
            values = [
                row["step"],
                row["train_loss"],
                row["train_mean_token_accuracy"],
                row.get("valid_loss"),
                row.get("valid_mean_token_accuracy"),
            ]
            cells = ("" if v is None else (str(v) if isinstance(v, int) else f"{v:.6g}") for v in values)
            out.write(",".join(cells) + "\n")
        return out.getvalue().encode("utf-8")

    def _finish(
        self,
        engine: EngineKind,
        base_model: BaseModel,
        trained: TrainedModel,
        train_records,
        hyperparameters: Hyperparameters,
        started: float,
    ) -> None:
        model_id = ids.new_model_id(base_model.name, self.job.get("suffix"))
        trained_tokens = trained.meta.get("trained_tokens")  # an engine that counts with the model's own tokenizer
        if trained_tokens is None:
            tokens_per_epoch = sum(count_record_tokens(train_records, get_encoding(base_model.encoding)))
            trained_tokens = tokens_per_epoch * hyperparameters.n_epochs
        # OpenAI serves result files base64-encoded; so does this backend
        result = self.store.create_file("step_metrics.csv", "fine-tune-results", base64.b64encode(self._result_csv()))
        checkpoints = self.job[PRIVATE].get("checkpoints", [])[-3:]
        for checkpoint in checkpoints:
            checkpoint["fine_tuned_model_checkpoint"] = f"{model_id}:ckpt-step-{checkpoint['step_number']}"
        if not checkpoints:
            checkpoints = [
                {
                    "id": ids.new_id("checkpoint"),
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(time.time()),
                    "fine_tuning_job_id": self.job_id,
                    "step_number": 1,
                    "metrics": {"step": 1.0},
                    "fine_tuned_model_checkpoint": f"{model_id}:ckpt-step-1",
                }
            ]
        for checkpoint in checkpoints:
            self.event(f"Checkpoint created at step {checkpoint['step_number']}")
        with self.store.locked():
            if self.store.get_job(self.job_id)["status"] == "cancelled":
                raise TrainingCancelled()
            model_meta = dict(trained.meta)
            model_meta.update(
                {
                    ENGINE_FIELD: engine.name,
                    "id": model_id,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": ids.ORGANIZATION,
                    PRIVATE: {"job": self.job_id},
                }
            )
            self.store.save_model(model_meta, trained.arrays)
            self.event(f"New fine-tuned model created: {model_id}")
            self.event("The job has successfully completed")
            self.flush()

            def change(job: Dict[str, Any]) -> None:
                job[PRIVATE]["checkpoints"] = checkpoints
                job[PRIVATE]["wall_seconds"] = round(time.time() - started, 3)
                job.update(
                    status="succeeded",
                    fine_tuned_model=model_id,
                    finished_at=int(time.time()),
                    estimated_finish=None,
                    result_files=[result["id"]],
                    trained_tokens=trained_tokens,
                )

            self.job = self.store.update_job(self.job_id, change)
