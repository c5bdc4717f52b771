"""The LoRA engine behind the local backend's engine seam (rasa_gpt3/local/engines.py).

It fine-tunes base models named `hf:ORG/NAME` or a local model directory (see base_model.py): training.py trains
an adapter, whose PEFT config and tensors become the stored model's metadata and arrays; the base weights stay in
the Hugging Face cache or their directory, and the metadata names them. Serving loads each base model once per
process (serving.host_for) and puts the stored adapter on it from the arrays, no files written.

To switch it on, add `lora.engine.ENGINE` to `ENGINES` in rasa_gpt3/local/engine_registry.py after the stand-in.
`describe` imports no torch, so the registry stays cheap for the stand-in's names; a job on an open-weights base
model without the `lora` extra fails with the install hint.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Sequence

import numpy as np

from rasa_gpt3.data.base_models import BaseModel
from rasa_gpt3.local.engines import EngineKind, Prompt, TrainedModel, TrainingRun
from rasa_gpt3.local.lora.adapter_files import AdapterWeights, read_adapter
from rasa_gpt3.local.lora.base_model import (
    HF_PREFIX,
    context_length,
    hf_cache_dir,
    is_open_weights_name,
    pick_device,
    resolve_base_model,
)
from rasa_gpt3.local.lora.errors import require_installed
from rasa_gpt3.local.lora.serving import LoraGeneration, host_for
from rasa_gpt3.local.lora.training import LoraSettings, train_adapter

logger = logging.getLogger(__name__)

NAME = "lora"
# jobs.py counts a job's trained_tokens with a tiktoken encoding of the base model's description; until the seam
# takes an engine's own count (the metadata's "trained_tokens", from the model's tokenizer) it gets this one
JOB_COUNT_ENCODING = "o200k_base"
# context length assumed for a Hub model not downloaded yet (describe never downloads)
UNKNOWN_CONTEXT = 4096


def _known_directory(name: str) -> Optional[Path]:
    """The model directory of `name` when it is on disk already (a local path, or a cached Hub snapshot)."""
    if not name.startswith(HF_PREFIX):
        path = Path(name).expanduser()
        return path if (path / "config.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name[len(HF_PREFIX) :], "config.json", cache_dir=hf_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def _has_chat_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def _context_from_config(directory: Path) -> Optional[int]:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return context_length(SimpleNamespace(**config)) if isinstance(config, dict) else None


def describe(name: str) -> BaseModel:
    """The base model `name` as the job runner needs it; ValueError for names this engine does not take.

    The name stays as given (the job's `model`); fine-tuned model ids take its last part (ids.id_base).
    Format: chat when the tokenizer has a chat template, else completion; a Hub model not downloaded yet is taken
    as chat (training then says so when its tokenizer has no template). Nothing is downloaded or loaded here.
    """
    if not is_open_weights_name(name):
        raise ValueError(f"the LoRA engine fine-tunes hf:ORG/NAME or a model directory, not '{name}'")
    directory = _known_directory(name)
    if directory is None and not name.startswith(HF_PREFIX):
        raise ValueError(f"base model directory {name} does not exist or has no config.json")
    fmt = "chat" if directory is None or _has_chat_template(directory) else "completion"
    context = (_context_from_config(directory) if directory else None) or UNKNOWN_CONTEXT
    return BaseModel(
        name=name,
        format=fmt,
        encoding=JOB_COUNT_ENCODING,
        context=context,
        training_price=0.0,
        input_price=0.0,
        output_price=0.0,
    )


def train(run: TrainingRun) -> TrainedModel:
    """Trains a LoRA adapter for `run`; its config and tensors become the stored model."""
    require_installed()
    base = resolve_base_model(run.job["model"], announce=run.events.message)
    settings = LoraSettings.from_metadata(run.metadata)
    device = pick_device()
    run.events.message(
        f"Training a LoRA adapter (rank {settings.rank}, alpha {settings.alpha}, "
        f"{settings.as_dict()['target_modules']}) on {base.name} ({device})"
    )

    def checkpoint(summary: Dict[str, Any]) -> None:
        # the checkpoint's adapter lives in a directory removed after training: the job lists it, not its path
        run.events.checkpoint({key: value for key, value in summary.items() if key != "checkpoint"})

    with tempfile.TemporaryDirectory(prefix="rasa-gpt3-lora-") as work:
        trained = train_adapter(
            base,
            run.train_records,
            run.valid_records,
            run.hyperparameters,
            work,
            seed=run.seed,
            settings=settings,
            on_step=run.events.step,
            on_epoch=checkpoint,
            should_stop=run.cancelled,
            device=device,
        )
        weights = read_adapter(trained.path)
    meta = {
        "format": run.base_model.format,
        "base_model": run.job["model"],
        "lora": settings.as_dict(),
        "adapter_config": weights.config,
        "trained_tokens": trained.trained_tokens,
        "training_seconds": round(trained.seconds, 3),
    }
    return TrainedModel(meta=meta, arrays=weights.tensors)


class LoraEngine:
    """A stored LoRA model as the completion handlers use it: its adapter on the process's shared base model."""

    def __init__(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        require_installed()
        self.format = meta["format"]
        self.base = resolve_base_model(meta["base_model"], announce=logger.info)
        self.host = host_for(self.base)
        # named by id and creation time: a model stored again under the same id is another adapter
        self.adapter = AdapterWeights(
            config=meta["adapter_config"], tensors=arrays, name=f"{meta.get('id')}@{meta.get('created')}"
        )

    @property
    def context_length(self) -> int:
        """Tokens the base model reads at most."""
        return self.host.context_length

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the base model's tokenizer."""
        return self.host.count_tokens(text)

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int],
        stops: Sequence[str],
        temperature: Optional[float],
        seed: Optional[int],
        top_logprobs: int,
    ) -> LoraGeneration:
        """One answer from the model's own next-token distribution (see serving.AdapterHost.generate)."""
        chat = not isinstance(prompt, str)
        return self.host.generate(
            self.adapter,
            messages=prompt if chat else None,
            prompt=None if chat else prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=stops,
            top_logprobs=top_logprobs,
        )


def load(meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> LoraEngine:
    """The stored LoRA model ready to serve."""
    return LoraEngine(meta, arrays)


ENGINE = EngineKind(name=NAME, describe=describe, train=train, load=load)
