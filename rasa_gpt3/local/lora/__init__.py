"""Open-weights causal language models with LoRA adapters for the local backend (the optional `lora` extra).

The modules here need torch, transformers and peft (`pip install 'rasa-gpt3[lora]'`); this package's __init__
imports none of them, so `is_installed()` can be asked cheaply before anything heavy is loaded.

- base_model: `hf:ORG/NAME` or a local directory → a model directory; loading tokenizer and model.
- rendering: records and requests → token ids with the tokenizer's own chat template; tokenizer-aware labels.
- training: LoRA fine-tuning with transformers' Trainer and peft, with per-step metrics, checkpoints and cancel.
- serving: one base model loaded once, adapters swapped on it, generation with real next-token logprobs.
- adapter_files: an adapter in PEFT format: read into arrays, written back for other servers (vLLM).
- engine: the LoRA engine behind the local backend's engine seam (rasa_gpt3/local/engines.py).
- tiny: a tiny random model and tokenizer built on the spot, the stand-in that tests and benchmarks use.
"""

from __future__ import annotations

import importlib.util

REQUIRED_MODULES = ("torch", "transformers", "peft", "safetensors")
INSTALL_HINT = "pip install 'rasa-gpt3[lora]'"


def is_installed() -> bool:
    """Whether the `lora` extra's libraries are importable (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)
