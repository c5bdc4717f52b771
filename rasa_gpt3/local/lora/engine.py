"""The LoRA engine behind the local backend's engine seam (rasa_gpt3/local/engines.py).

It fine-tunes base models named `hf:ORG/NAME` or a local model directory (see base_model.py): training.py trains
an adapter, whose PEFT config and tensors become the stored model's metadata and arrays; the base weights stay in
the Hugging Face cache or their directory, and the metadata names them. Serving loads each base model once per
process (serving.host_for) and puts the stored adapter on it from the arrays, no files written.

rasa_gpt3/local/engine_registry.py asks it after the stand-in.
`describe` (base_model.describe_base_model) imports no torch, so the registry stays cheap for the stand-in's
names; a job on an open-weights base model without the `lora` extra fails with the install hint.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rasa_gpt3.errors import DataError
from rasa_gpt3.local.engines import EngineKind, Prompt, TrainedModel, TrainingRun
from rasa_gpt3.local.lora.adapter_files import AdapterWeights, read_adapter, vllm_instructions, write_adapter
from rasa_gpt3.local.lora.base_model import HF_PREFIX, pick_device, resolve_base_model
from rasa_gpt3.local.lora.base_model import describe_base_model as describe
from rasa_gpt3.local.lora.errors import require_installed
from rasa_gpt3.local.lora.serving import LoraGeneration, host_for
from rasa_gpt3.local.lora.training import LoraSettings, train_adapter

logger = logging.getLogger(__name__)

NAME = "lora"


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


@dataclass(frozen=True)
class ExportedAdapter:
    """A stored LoRA model written out in PEFT format: the files, the base model's name for other servers, and
    how to serve it with vLLM."""

    files: List[Path]
    base_model: str
    instructions: str


def serving_name(base_model: str) -> str:
    """The name another server loads base model `base_model` by: the Hub id of `hf:ORG/NAME`, else the directory."""
    return base_model[len(HF_PREFIX) :] if base_model.startswith(HF_PREFIX) else base_model


def export_adapter(meta: Dict[str, Any], arrays: Dict[str, np.ndarray], out_dir: Path) -> ExportedAdapter:
    """Writes the adapter of a stored model (metadata `meta`, arrays) into `out_dir` in PEFT format; DataError in
    one line when the model has no adapter (the stand-in's) or `out_dir` is a non-empty directory or a file."""
    model_id = meta.get("id")
    if meta.get("engine") != NAME or "adapter_config" not in meta:
        raise DataError(
            f"{model_id} was trained by the {meta.get('engine') or 'stand-in'} engine on "
            f"{meta.get('base_model') or 'an OpenAI base model name'}: it has no LoRA adapter to export; "
            "fine-tune an open-weights model (--base-model hf:ORG/NAME or a model directory) for one"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"--out {out_dir} exists and is not an empty directory; choose a new one")
    base = serving_name(meta["base_model"])
    files = write_adapter(AdapterWeights(config=meta["adapter_config"], tensors=arrays), out_dir, base_model_name=base)
    rank = int((meta.get("lora") or {}).get("rank") or meta["adapter_config"].get("r") or 16)
    instructions = vllm_instructions(base, model_id, out_dir, rank, bot_base_model=meta["base_model"])
    return ExportedAdapter(files=files, base_model=base, instructions=instructions)


ENGINE = EngineKind(name=NAME, describe=describe, train=train, load=load)
