"""An adapter in PEFT format for another server: adapter_config.json and adapter_model.safetensors, and how to
serve it with vLLM and point the bot at it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Union

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.local.lora.errors import INVALID_ADAPTER, LoraError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_adapter(adapter_dir: Union[str, Path], out_dir: Union[str, Path],
                   base_model_name: Optional[str] = None) -> List[Path]:
    """Copies the adapter's PEFT files into `out_dir` (each written atomically); `base_model_name`, when given,
    becomes the config's base_model_name_or_path (the name the other server loads the base model by)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise LoraError(INVALID_ADAPTER, f"{adapter_dir} is not a PEFT adapter (missing {', '.join(missing)})")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoraError(INVALID_ADAPTER, f"{adapter_dir}/adapter_config.json is not JSON: {error}") from None
    if base_model_name:
        config["base_model_name_or_path"] = base_model_name
    written = [write_atomic(out_dir / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n"),
               write_atomic(out_dir / "adapter_model.safetensors",
                            (adapter_dir / "adapter_model.safetensors").read_bytes())]
    return written


def vllm_instructions(base_model_name: str, served_name: str, out_dir: Union[str, Path], rank: int = 16,
                      port: int = 8000) -> str:
    """How to serve an exported adapter with vLLM and point the bot at it (printed after an export)."""
    # vLLM refuses adapters above its --max-lora-rank, 16 by default
    rank_option = f" --max-lora-rank {rank}" if rank > 16 else ""
    return (f"Serve it:  vllm serve {base_model_name} --enable-lora --lora-modules {served_name}={Path(out_dir)} "
            f"--max-logprobs 20{rank_option} --port {port}\n"
            f"Point the bot at it:  OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 and `model: {served_name}` in the "
            "component's config")
