"""The seam between the local backend and its model engines: what an engine trains from and what it serves through.

An engine is one way to turn a fine-tuning job into a model and to answer completions with it. Today there is one,
the stand-in (rasa_gpt3/local/standin.py: a softmax head or a retrieval index over sentence embeddings). The HTTP
handlers and the job runner only ever use the types in this module, so a second engine plugs in without touching
them.

How to add an engine (for example a causal LM fine-tuned with LoRA):

1. Write `rasa_gpt3/local/<name>.py` with
   - `describe(base_model_name) -> BaseModel`: the record format ("chat" or "completion"), tokenizer encoding and
     context size of a base model this engine fine-tunes; raise ValueError (one line for the user) for any name it
     does not take, so the registry asks the next engine.
   - `train(run: TrainingRun) -> TrainedModel`: train on `run.train_records` (checked fine-tune records of
     `run.base_model.format`); call `run.events.step(metrics)` after every optimizer step and
     `run.events.checkpoint(summary)` at every epoch's end (keys below), `run.events.message(text)` for anything
     else; poll `run.cancelled()` between steps and raise TrainingCancelled when it is true. Return the model's
     metadata (JSON; "format" is required) and its arrays (numpy, stored in one .npz beside the metadata: a LoRA
     adapter's tensors fit; the base weights stay where they are and the metadata names them).
   - `load(meta, arrays) -> Engine`: the object that serves the stored model (see `Engine` below); it is cached per
     model and called from worker threads, so it must be safe to call concurrently.
   - `ENGINE = EngineKind(name="<name>", describe=describe, train=train, load=load)`.
2. Add `ENGINE` to `ENGINES` in rasa_gpt3/local/engine_registry.py. A job goes to the first engine whose
   `describe` accepts its base model; the runner writes `"engine": "<name>"` into the stored model's metadata and
   the server loads it with that engine's `load` (metadata without an `engine` field is the stand-in's).

What is still tied to OpenAI's naming and needs opening up for base models outside data/base_models.yml: model ids
(`ids.new_model_id`/`ids.model_key` accept `ft:<base>:...` with a base of letters, digits, '.', '_' and '-') and the
job's `trained_tokens`, counted with the base model's tiktoken `encoding`.

Metrics keys: `step(metrics)` gets step, total_steps, epoch, train_loss, train_mean_token_accuracy and, with
validation data, valid_loss and valid_mean_token_accuracy; `checkpoint(summary)` gets step, epoch, total_steps and,
with validation data, full_valid_loss and full_valid_mean_token_accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import BaseModel

# a chat request's messages ({"role", "content"}, content already plain text), or a legacy completion's prompt text
Prompt = Union[List[Dict[str, str]], str]


@dataclass
class Generation:
    """What a model generated: tokens with their log-probabilities and, per token, the top alternatives."""

    tokens: List[str]
    logprobs: List[float]
    top: List[List[Tuple[str, float]]]
    # "length" when the engine itself stopped at max_tokens; cutting at a stop sequence makes it "stop" again
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        """The generated text."""
        return "".join(self.tokens)


class Engine(Protocol):
    """A loaded fine-tuned model as the completion handlers use it, whatever engine trained it."""

    format: str  # "chat" (served by /v1/chat/completions) or "completion" (served by /v1/completions)

    @property
    def context_length(self) -> int:
        """Tokens the model reads at most (prompt and answer together)."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's tokenizer (for the usage a response reports)."""

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int],
        stops: Sequence[str],
        temperature: Optional[float],
        seed: Optional[int],
        top_logprobs: int,
    ) -> Generation:
        """One answer to `prompt`: greedy, or sampled with `seed` (in [0, 2**64), or None) when `temperature` > 0.

        Every token carries its log-probability and its `max(top_logprobs, 1)` most likely alternatives (token,
        log-probability), best first. An engine may stop early at a stop sequence or after `max_tokens` (then with
        finish_reason "length"); the handlers cut every generation at the first stop sequence and at `max_tokens`
        anyway, so an engine that ignores both is still correct, only slower.
        """


class TrainingCancelled(Exception):
    """Raised inside training when the job was cancelled from outside (or the runner stops)."""


@dataclass(frozen=True)
class Hyperparameters:
    """Resolved hyperparameters (no 'auto' left)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def as_dict(self) -> Dict[str, Any]:
        """The hyperparameters as the API reports them."""
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


class TrainingEvents(Protocol):
    """Where a trainer reports progress; the job runner turns it into job events, checkpoints and the result file."""

    def message(self, text: str, level: str = "info") -> None:
        """A job event for the user ("info", "warn" or "error")."""

    def step(self, metrics: Dict[str, Any]) -> None:
        """One optimizer step's metrics (keys in the module docstring)."""

    def checkpoint(self, summary: Dict[str, Any]) -> None:
        """An epoch's end: a checkpoint with the epoch's summary (keys in the module docstring)."""


@dataclass(frozen=True)
class TrainingRun:
    """Everything a trainer gets for one fine-tuning job."""

    job: Dict[str, Any]  # the stored job, read only: id, model, suffix, seed, metadata
    base_model: BaseModel  # as the engine's `describe` gave it
    train_records: List[Dict[str, Any]]  # fine-tune records, checked for base_model.format
    valid_records: List[Dict[str, Any]]  # possibly empty
    hyperparameters: Hyperparameters
    seed: int
    events: TrainingEvents
    cancelled: Callable[[], bool]  # poll between steps; raise TrainingCancelled when it returns True

    @property
    def metadata(self) -> Dict[str, str]:
        """The job's metadata (the stand-in reads task, embedder, unknown_text, similarity_threshold from it)."""
        return self.job.get("metadata") or {}


@dataclass
class TrainedModel:
    """A trainer's result: JSON metadata ("format" required) and named arrays; the runner stores both."""

    meta: Dict[str, Any]
    arrays: Dict[str, np.ndarray]


Trainer = Callable[[TrainingRun], TrainedModel]
Loader = Callable[[Dict[str, Any], Dict[str, np.ndarray]], Engine]


@dataclass(frozen=True)
class EngineKind:
    """One engine: its name (stored in each model's metadata) and how it describes, trains and loads models."""

    name: str
    describe: Callable[[str], BaseModel]  # raises ValueError for base models this engine does not fine-tune
    train: Trainer
    load: Loader


def answer_text(answer: str, fmt: str) -> str:
    """The full text a model fine-tuned on `fmt` records writes for `answer` (completions: leading space and stop)."""
    return answer if fmt == "chat" else " " + answer + prompts.STOP
