"""A fine-tuning job's progress as seen through its events, and a tqdm progress bar that shows it.

`apply_event` is a pure function (event in, new snapshot out) so the mapping is tested without a server. It reads
OpenAI's metrics events (`data` with step, total_steps, train_loss, valid_loss, train_mean_token_accuracy,
valid_mean_token_accuracy, full_valid_*; sometimes epoch) and, for servers that only send text, the message
"Step 12/90: training loss=0.41, validation loss=0.52".
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Protocol, TextIO

_STEP = re.compile(r"\bstep\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_TRAIN_LOSS = re.compile(r"(?<!full )training loss\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)
_VALID_LOSS = re.compile(r"(?<!full )validation loss\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)

# data keys per snapshot field, first present wins (OpenAI's names first, then shorter spellings)
_METRIC_KEYS = {
    "train_loss": ("train_loss",),
    "valid_loss": ("valid_loss",),
    "train_accuracy": ("train_mean_token_accuracy", "train_accuracy"),
    "valid_accuracy": ("valid_mean_token_accuracy", "valid_accuracy"),
    "full_valid_loss": ("full_valid_loss",),
    "full_valid_accuracy": ("full_valid_mean_token_accuracy",),
}


@dataclass(frozen=True)
class JobProgress:
    """What is known about a running job: step and epoch counters and the latest losses and accuracies."""

    job_id: str = ""
    status: Optional[str] = None
    step: int = 0
    total_steps: Optional[int] = None
    epoch: Optional[int] = None
    n_epochs: Optional[int] = None
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None
    train_accuracy: Optional[float] = None
    valid_accuracy: Optional[float] = None
    # over the whole validation file, reported at epoch ends (valid_* are per-step batch estimates)
    full_valid_loss: Optional[float] = None
    full_valid_accuracy: Optional[float] = None
    last_event_id: Optional[str] = None

    def metrics(self) -> Dict[str, float]:
        """The latest losses and accuracies, as the registry names them (full-validation figures preferred)."""
        found = {
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "valid_loss": self.full_valid_loss if self.full_valid_loss is not None else self.valid_loss,
            "valid_accuracy": self.full_valid_accuracy if self.full_valid_accuracy is not None else self.valid_accuracy,
        }
        return {name: value for name, value in found.items() if value is not None}


def _field(event: Any, name: str) -> Any:
    if isinstance(event, dict):
        return event.get(name)
    return getattr(event, name, None)


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def apply_event(progress: JobProgress, event: Any) -> JobProgress:
    """The snapshot after `event` (an SDK FineTuningJobEvent or its dict): counters and metrics updated."""
    changes: Dict[str, Any] = {"last_event_id": _field(event, "id") or progress.last_event_id}
    data = _field(event, "data")
    data = data if isinstance(data, dict) else {}
    message = str(_field(event, "message") or "")

    step = _number(data.get("step"))
    total = _number(data.get("total_steps"))
    match = _STEP.search(message)
    if match:
        step = step if step is not None else float(match.group(1))
        total = total if total is not None else float(match.group(2))
    if step is not None:
        changes["step"] = max(progress.step, int(step))
    if total:
        changes["total_steps"] = int(total)

    for name, keys in _METRIC_KEYS.items():
        for key in keys:
            value = _number(data.get(key))
            if value is not None:
                changes[name] = value
                break
    if not data:  # a server that only sends text: read the losses from the message
        if found := _TRAIN_LOSS.search(message):
            changes["train_loss"] = _number(found.group(1))
        if found := _VALID_LOSS.search(message):
            changes["valid_loss"] = _number(found.group(1))

    updated = replace(progress, **{key: value for key, value in changes.items() if value is not None})
    epoch = _number(data.get("epoch"))
    if epoch is not None:
        return replace(updated, epoch=int(epoch))
    return replace(updated, epoch=epoch_of(updated.step, updated.total_steps, updated.n_epochs) or updated.epoch)


def epoch_of(step: int, total_steps: Optional[int], n_epochs: Optional[int]) -> Optional[int]:
    """The epoch (1-based) that `step` falls in, when the counts are known and steps split evenly into epochs."""
    if not step or not total_steps or not n_epochs or total_steps % n_epochs:
        return None
    per_epoch = total_steps / n_epochs
    return max(1, min(n_epochs, math.ceil(step / per_epoch)))


def describe(progress: JobProgress) -> str:
    """One short line: epoch and the latest losses and accuracies (what the bar shows after its counter)."""
    parts = []
    if progress.epoch and progress.n_epochs:
        parts.append(f"epoch {progress.epoch}/{progress.n_epochs}")
    for label, value in (
        ("loss", progress.train_loss),
        ("val_loss", progress.valid_loss),
        ("acc", progress.train_accuracy),
        ("val_acc", progress.valid_accuracy),
        ("full_val_loss", progress.full_valid_loss),
    ):
        if value is not None:
            parts.append(f"{label} {value:.3f}")
    return ", ".join(parts)


class ProgressReporter(Protocol):
    """Receives a job's progress while it is followed (the CLI shows a bar; `rasa train` passes none)."""

    def update(self, progress: JobProgress, message: Optional[str] = None) -> None:
        """Shows the new snapshot; `message` is a non-metric event's text worth a line of its own."""

    def close(self) -> None:
        """Ends the display (the job finished, failed, or following stopped)."""


class TqdmProgressBar:
    """A tqdm bar over the job's training steps, with the status before it and epoch and losses after it.

    Event messages are printed above the bar. On a stream that is not a terminal (CI logs, pipes) the bar is off:
    the messages are printed as lines and the final state as one summary line.
    """

    WAITING_FORMAT = "{desc} [{elapsed}]"
    STEPS_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None
        self._last: Optional[JobProgress] = None

    def _ensure_bar(self, progress: JobProgress) -> Any:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=progress.total_steps,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
                disable=None,
                bar_format=self.STEPS_FORMAT if progress.total_steps else self.WAITING_FORMAT,
            )
        elif progress.total_steps and self._bar.total != progress.total_steps:
            self._bar.total = progress.total_steps
            self._bar.bar_format = self.STEPS_FORMAT
        return self._bar

    def update(self, progress: JobProgress, message: Optional[str] = None) -> None:
        """Moves the bar to the current step and prints `message` above it."""
        from tqdm import tqdm

        bar = self._ensure_bar(progress)
        self._last = progress
        if message:
            tqdm.write(f"  {message}", file=self.stream)
        if bar.disable:
            return
        if progress.step > bar.n:
            bar.update(progress.step - bar.n)
        bar.set_description_str(progress.status or "starting", refresh=False)
        bar.set_postfix_str(_bar_postfix(progress), refresh=True)

    def close(self) -> None:
        """Closes the bar (leaving its last state on screen), or prints the summary line when the bar was off."""
        if self._bar is not None:
            if self._bar.disable and self._last is not None:
                last = self._last
                steps = f"step {last.step}/{last.total_steps}, " if last.total_steps else ""
                print(f"{last.job_id} {last.status or ''}: {steps}{describe(last)}".rstrip(": "), file=self.stream)
            self._bar.close()
            self._bar = None


def _bar_postfix(progress: JobProgress) -> str:
    """The short text after the bar: epoch, train loss, validation loss and accuracy."""
    parts = []
    if progress.epoch and progress.n_epochs:
        parts.append(f"epoch {progress.epoch}/{progress.n_epochs}")
    valid_loss = progress.full_valid_loss if progress.full_valid_loss is not None else progress.valid_loss
    valid_accuracy = (
        progress.full_valid_accuracy if progress.full_valid_accuracy is not None else progress.valid_accuracy
    )
    for label, value in (("loss", progress.train_loss), ("val_loss", valid_loss), ("val_acc", valid_accuracy)):
        if value is not None:
            parts.append(f"{label} {value:.3f}")
    return " ".join(parts)
