"""A LoRA adapter's files in PEFT format (adapter_config.json and adapter_model.safetensors): read into arrays the
local backend's store keeps, written back from them for another server, and how to serve them with vLLM."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.local.lora.errors import INVALID_ADAPTER, LoraError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)


@dataclass
class AdapterWeights:
    """An adapter in memory: its PEFT config and its tensors by the names PEFT saves them under."""

    config: Dict[str, Any]
    tensors: Dict[str, np.ndarray]
    name: str = ""  # what tells two adapters apart when they are loaded on one base model
    key: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.name.encode("utf-8"))
        if not self.name:  # no name: the content itself
            digest.update(json.dumps(self.config, sort_keys=True).encode("utf-8"))
            for tensor_name in sorted(self.tensors):
                digest.update(tensor_name.encode("utf-8"))
                digest.update(np.ascontiguousarray(self.tensors[tensor_name]).tobytes())
        self.key = "w" + digest.hexdigest()[:16]


def read_adapter(adapter_dir: Union[str, Path], name: str = "") -> AdapterWeights:
    """The adapter in `adapter_dir` (float tensors as float32 numpy arrays); raises LoraError(INVALID_ADAPTER)."""
    adapter_dir = Path(adapter_dir)
    missing = [file for file in ADAPTER_FILES if not (adapter_dir / file).is_file()]
    if missing:
        raise LoraError(INVALID_ADAPTER, f"{adapter_dir} is not a PEFT adapter (missing {', '.join(missing)})")
    try:
        config = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoraError(INVALID_ADAPTER, f"{adapter_dir / CONFIG_FILE} is not JSON: {error}") from None
    from safetensors.torch import load_file

    # through torch: numpy has no bfloat16, which adapters trained on a GPU may be saved in
    tensors = {key: value.float().numpy() for key, value in load_file(str(adapter_dir / WEIGHTS_FILE)).items()}
    return AdapterWeights(config=config, tensors=tensors, name=name)


def write_adapter(
    weights: AdapterWeights, out_dir: Union[str, Path], base_model_name: Optional[str] = None
) -> List[Path]:
    """Writes the adapter's PEFT files into `out_dir`, each atomically; `base_model_name`, when given, becomes the
    config's base_model_name_or_path (the name another server loads the base model by)."""
    from safetensors.numpy import save

    config = dict(weights.config)
    if base_model_name:
        config["base_model_name_or_path"] = base_model_name
    out_dir = Path(out_dir)
    tensors = {key: np.ascontiguousarray(value) for key, value in weights.tensors.items()}
    return [
        write_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n"),
        write_atomic(out_dir / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"})),
    ]


def vllm_instructions(
    base_model_name: str,
    served_name: str,
    out_dir: Union[str, Path],
    rank: int = 16,
    port: int = 8000,
    bot_base_model: Optional[str] = None,
) -> str:
    """How to serve an exported adapter with vLLM and point the bot at it (printed after an export).

    `bot_base_model` is the base model as the bot names it (`hf:ORG/NAME` or a directory; default: derived from
    `base_model_name`): the components and the fallback action need it, as the registry does not know the served
    name, to read the model's answers with the labels of its tokenizer rather than gpt-4o-mini's.
    """
    if bot_base_model is None:
        is_directory = Path(base_model_name).expanduser().is_dir()
        bot_base_model = base_model_name if is_directory else f"hf:{base_model_name}"
    # vLLM refuses adapters above its --max-lora-rank, 16 by default
    rank_option = f" --max-lora-rank {rank}" if rank > 16 else ""
    return (
        f"Serve it:  vllm serve {base_model_name} --enable-lora --lora-modules {served_name}={Path(out_dir)} "
        f"--max-logprobs 20{rank_option} --port {port}\n"
        f"Point the bot at it:  OPENAI_BASE_URL=http://127.0.0.1:{port}/v1, and `model: {served_name}` with "
        f"`base_model: {bot_base_model}` in the component's config (gpt3_fallback.yml: `intent_model` or "
        f"`response_model`, and `base_model`)"
    )
