"""LoRA fine-tuning of an open-weights causal LM on fine-tune records, with transformers' Trainer and peft.

The job's hyperparameters map directly: n_epochs → num_train_epochs, batch_size → per-device batch size,
learning_rate_multiplier × BASE_LEARNING_RATE → the AdamW learning rate (linear decay to zero). LoRA's rank,
alpha, dropout and target modules come from LoraSettings, whose defaults a job's metadata may override
(`lora_rank`, `lora_alpha`, `lora_dropout`, `lora_target_modules`, `max_length`, which `rasa-gpt3 fine-tune
--lora NAME=VALUE` sets; OpenAI metadata values are strings, so strings are read). The job's seed seeds the LoRA
initialisation, the shuffling and dropout, so a rerun on the same data and machine gives the same adapter.

While it trains, `on_step` gets every optimizer step's train loss and token accuracy over the answer tokens (the
same dict keys as the stand-in trainer of rasa_gpt3.local.trainer), `on_epoch` gets each epoch's full validation
loss and accuracy together with the checkpoint the Trainer just saved (the adapter in PEFT format), and
`should_stop` is asked before every forward pass: when it says yes, TrainingCancelled leaves within one step.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from rasa_gpt3.local.engines import Hyperparameters, TrainingCancelled
from rasa_gpt3.local.lora.base_model import BaseModelSource, context_length, load_causal_lm, load_tokenizer, pick_device
from rasa_gpt3.local.lora.errors import INVALID_SETTINGS, OUT_OF_MEMORY, LoraError, require_installed
from rasa_gpt3.local.lora.rendering import IGNORE_INDEX, EncodedExample, encode_record, stop_token_ids

# AdamW step size at learning_rate_multiplier 1.0: the usual LoRA rate (PEFT's and QLoRA's examples use 1e-4..3e-4)
BASE_LEARNING_RATE = 2e-4
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"

StepCallback = Callable[[Dict[str, Any]], None]

# each LoRA setting's name (as `fine-tune --lora NAME=VALUE` takes it) -> its key in a job's metadata
METADATA_KEYS = {
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target_modules": "lora_target_modules",
    "max_length": "max_length",
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's shape. "all-linear" adapts every linear layer but the output head (the QLoRA recipe)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Union[str, Sequence[str]] = "all-linear"
    max_length: int = 1024  # longest training example in tokens (capped by the model's context)

    @classmethod
    def from_metadata(cls, metadata: Optional[Dict[str, Any]]) -> LoraSettings:
        """The defaults with a job's metadata overrides applied; LoraError(INVALID_SETTINGS) for a bad value."""
        metadata = metadata or {}
        settings = cls()
        readers = {
            METADATA_KEYS["rank"]: ("rank", int),
            METADATA_KEYS["alpha"]: ("alpha", int),
            METADATA_KEYS["dropout"]: ("dropout", float),
            METADATA_KEYS["max_length"]: ("max_length", int),
        }
        for key, (name, kind) in readers.items():
            if metadata.get(key) not in (None, ""):
                try:
                    settings = replace(settings, **{name: kind(metadata[key])})
                except (TypeError, ValueError):
                    raise LoraError(INVALID_SETTINGS, f"LoRA setting {key}={metadata[key]!r} is not a number") from None
        targets = metadata.get(METADATA_KEYS["target_modules"])
        if targets not in (None, ""):
            if isinstance(targets, str) and targets != "all-linear":
                targets = tuple(part.strip() for part in targets.split(",") if part.strip())
            settings = replace(settings, target_modules=targets)
        if settings.rank < 1 or settings.alpha < 1 or not 0 <= settings.dropout < 1 or settings.max_length < 8:
            raise LoraError(
                INVALID_SETTINGS,
                f"LoRA settings out of range: rank {settings.rank} and alpha "
                f"{settings.alpha} must be >= 1, dropout {settings.dropout} in [0, 1), "
                f"max_length {settings.max_length} >= 8",
            )
        return settings

    @classmethod
    def metadata_from_options(cls, options: Sequence[str]) -> Dict[str, str]:
        """`NAME=VALUE` options (`fine-tune --lora rank=32`) as job metadata, checked the way a job will read them."""
        metadata: Dict[str, str] = {}
        for option in options:
            name, equals, value = option.partition("=")
            name, value = name.strip().replace("-", "_"), value.strip()
            if not equals or name not in METADATA_KEYS or not value:
                raise LoraError(
                    INVALID_SETTINGS,
                    f"--lora takes NAME=VALUE with NAME one of {', '.join(METADATA_KEYS)}, not {option!r}",
                )
            metadata[METADATA_KEYS[name]] = value
        cls.from_metadata(metadata)
        return metadata

    def as_dict(self) -> Dict[str, Any]:
        """The settings as a job or model reports them."""
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": targets,
            "max_length": self.max_length,
        }


@dataclass
class Checkpoint:
    """An epoch's end: the step, the adapter saved there, and the epoch's full validation metrics."""

    step: int
    epoch: int
    path: Path
    metrics: Dict[str, float] = field(default_factory=dict)


@dataclass
class TrainedAdapter:
    """What a finished training leaves: the adapter directory (PEFT format), checkpoints and figures."""

    path: Path
    base: BaseModelSource
    settings: LoraSettings
    checkpoints: List[Checkpoint]
    steps: int
    trained_tokens: int  # tokens the model read, over all epochs (what a job reports as trained_tokens)
    seconds: float
    rows: List[Dict[str, Any]]  # every step's metrics, as on_step got them


class _Meter:
    """Sums loss and correct next-token guesses over the answer tokens, separately for training and evaluation."""

    def __init__(self) -> None:
        self.sums = {True: [0.0, 0, 0], False: [0.0, 0, 0]}  # training? -> [loss sum, correct, tokens]

    def add(self, logits: Any, labels: Any, training: bool) -> None:
        import torch

        with torch.no_grad():
            predicted = logits[:, :-1, :].float()
            targets = labels[:, 1:]
            mask = targets != IGNORE_INDEX
            loss = torch.nn.functional.cross_entropy(
                predicted.reshape(-1, predicted.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            correct = ((predicted.argmax(dim=-1) == targets) & mask).sum()
            sums = self.sums[training]
            sums[0] += float(loss)
            sums[1] += int(correct)
            sums[2] += int(mask.sum())

    def pop(self, training: bool) -> Optional[Dict[str, float]]:
        loss, correct, tokens = self.sums[training]
        self.sums[training] = [0.0, 0, 0]
        if not tokens:
            return None
        return {"loss": loss / tokens, "accuracy": correct / tokens}


def _trainer_class() -> Any:
    from transformers import Trainer

    class MeteredTrainer(Trainer):
        """Trainer that meters answer-token loss/accuracy of every forward pass and honours cancellation."""

        def __init__(self, *args: Any, meter: _Meter, should_stop: Optional[Callable[[], bool]], **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.meter = meter
            self.should_stop = should_stop

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.should_stop is not None and self.should_stop():
                raise TrainingCancelled()
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            self.meter.add(outputs.logits, inputs["labels"], training=model.training)
            return (loss, outputs) if return_outputs else loss

    return MeteredTrainer


def _callback(
    meter: _Meter,
    steps_per_epoch: int,
    on_step: Optional[StepCallback],
    on_epoch: Optional[StepCallback],
    rows: List[Dict[str, Any]],
    checkpoints: List[Checkpoint],
) -> Any:
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Turns the Trainer's step, evaluation and save events into the job's metrics and checkpoints."""

        def __init__(self) -> None:
            self.validation: Optional[Dict[str, float]] = None

        def on_step_end(self, args, state, control, **kwargs):
            measured = meter.pop(training=True)
            if measured is None:
                return
            metrics = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": min(math.ceil(state.global_step / steps_per_epoch), int(args.num_train_epochs)),
                "train_loss": measured["loss"],
                "train_mean_token_accuracy": measured["accuracy"],
            }
            rows.append(metrics)
            if on_step is not None:
                on_step(metrics)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.validation = meter.pop(training=False)

        def on_save(self, args, state, control, **kwargs):
            epoch = max(1, round(state.epoch or 0))
            summary: Dict[str, Any] = {"step": state.global_step, "epoch": epoch, "total_steps": state.max_steps}
            if self.validation is not None:
                summary["full_valid_loss"] = self.validation["loss"]
                summary["full_valid_mean_token_accuracy"] = self.validation["accuracy"]
            self.validation = None
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoints.append(
                Checkpoint(
                    step=state.global_step,
                    epoch=epoch,
                    path=path,
                    metrics={k: v for k, v in summary.items() if k.startswith("full_")},
                )
            )
            if on_epoch is not None:
                on_epoch({**summary, "checkpoint": str(path)})

    return Reporter()


def encode_records(
    tokenizer: Any, records: Sequence[Dict[str, Any]], max_length: int, generation_config: Any = None
) -> List[EncodedExample]:
    """Every record as token ids with answer-only labels (see rendering.encode_record)."""
    stops = stop_token_ids(tokenizer, generation_config)
    return [encode_record(tokenizer, record, stops, max_length) for record in records]


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def train_adapter(
    base: BaseModelSource,
    train_records: Sequence[Dict[str, Any]],
    valid_records: Sequence[Dict[str, Any]],
    hyperparameters: Hyperparameters,
    out_dir: Union[str, Path],
    *,
    seed: int = 0,
    settings: Optional[LoraSettings] = None,
    on_step: Optional[StepCallback] = None,
    on_epoch: Optional[StepCallback] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    device: Optional[str] = None,
) -> TrainedAdapter:
    """Trains a LoRA adapter on `train_records`; writes checkpoints and the final adapter under `out_dir`.

    Raises LoraError (base model, tokenizer, settings, out of memory) and TrainingCancelled.
    """
    require_installed()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, TrainingArguments, set_seed

    settings = settings or LoraSettings()
    out_dir = Path(out_dir)
    device = device or pick_device()
    needs_template = any("messages" in record for record in list(train_records) + list(valid_records))
    tokenizer = load_tokenizer(base, needs_chat_template=needs_template)
    model = load_causal_lm(base, device)
    max_length = min(settings.max_length, context_length(model.config, tokenizer))
    train = [
        example.as_features()
        for example in encode_records(tokenizer, train_records, max_length, model.generation_config)
    ]
    valid = [
        example.as_features()
        for example in encode_records(tokenizer, valid_records, max_length, model.generation_config)
    ]
    set_seed(seed)  # the LoRA matrices' initial values come from torch's generator
    try:
        model = get_peft_model(
            model,
            LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=settings.target_modules
                if isinstance(settings.target_modules, str)
                else list(settings.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    except ValueError as error:
        raise LoraError(
            INVALID_SETTINGS,
            f"LoRA target modules {settings.as_dict()['target_modules']} do not fit "
            f"{base.name}: {str(error).splitlines()[0][:200]}",
        ) from None
    batch_size = max(1, min(hyperparameters.batch_size, len(train)))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    args = TrainingArguments(
        output_dir=str(out_dir / CHECKPOINTS_DIR),
        num_train_epochs=hyperparameters.n_epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 8),
        learning_rate=BASE_LEARNING_RATE * hyperparameters.learning_rate_multiplier,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        seed=seed,
        data_seed=seed,
        eval_strategy="epoch" if valid else "no",
        save_strategy="epoch",
        save_only_model=True,
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        prediction_loss_only=True,  # else evaluation keeps every logit (examples x tokens x vocabulary)
    )
    meter = _Meter()
    rows: List[Dict[str, Any]] = []
    checkpoints: List[Checkpoint] = []
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True),
        callbacks=[_callback(meter, steps_per_epoch, on_step, on_epoch, rows, checkpoints)],
        meter=meter,
        should_stop=should_stop,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the callbacks report instead
    started = time.perf_counter()
    try:
        trainer.train()
    except TrainingCancelled:
        raise
    except Exception as error:
        if _is_out_of_memory(error):
            raise LoraError(
                OUT_OF_MEMORY,
                f"out of memory training {base.name} on {device} with batch_size "
                f"{batch_size}: use a smaller batch_size, max_length or base "
                "model",
            ) from None
        raise
    seconds = time.perf_counter() - started
    adapter_dir = out_dir / ADAPTER_DIR
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    # the name other servers (vLLM) find the base model by, instead of this machine's cache path
    model.peft_config["default"].base_model_name_or_path = base.serving_name
    model.save_pretrained(str(adapter_dir))
    trained_tokens = sum(len(example["input_ids"]) for example in train) * hyperparameters.n_epochs
    return TrainedAdapter(
        path=adapter_dir,
        base=base,
        settings=settings,
        checkpoints=checkpoints,
        steps=len(rows),
        trained_tokens=trained_tokens,
        seconds=seconds,
        rows=rows,
    )
