"""Open-weights base models by name: `hf:ORG/NAME` (the Hugging Face cache) or a local model directory.

`resolve_base_model` turns the name into a directory as `save_pretrained` writes it: a local path is checked, a
Hugging Face id is looked up in the cache and, when it is not there, downloaded after printing its size, or refused
in one line when downloads are off (HF_HUB_OFFLINE=1) or impossible. `load_tokenizer` and `load_causal_lm` then
load what the trainer and the server need; the heavy libraries are imported only there.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

from rasa_gpt3.data.base_model_spec import BaseModel
from rasa_gpt3.local.lora.errors import BASE_MODEL_NOT_FOUND, NO_CHAT_TEMPLATE, LoraError, require_installed

HF_PREFIX = "hf:"
# what a causal LM needs from a Hugging Face repository (weights in safetensors, config, tokenizer, template)
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
# transformers 4.x would import TensorFlow when it finds it (Rasa installs it): seconds and memory for nothing
os.environ.setdefault("USE_TF", "0")
_TRUE = {"1", "ON", "YES", "TRUE"}
# context length assumed for a Hub model not downloaded yet (describing never downloads)
UNKNOWN_CONTEXT = 4096


@dataclass(frozen=True)
class BaseModelSource:
    """Where a base model's files are: `name` as the user wrote it, `path` its directory, `repo_id` on the Hub."""

    name: str
    path: Path
    repo_id: Optional[str] = None

    @property
    def serving_name(self) -> str:
        """The name another server knows the base model by: the Hub id, else the directory."""
        return self.repo_id or str(self.path)


def is_open_weights_name(name: Optional[str]) -> bool:
    """Whether `name` asks for an open-weights base model (`hf:ORG/NAME` or a path), not an OpenAI-style name."""
    if not name or name.startswith("ft:"):
        return False
    return name.startswith(HF_PREFIX) or name.startswith(("/", "./", "../", "~")) or "/" in name


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def downloads_disabled() -> bool:
    """Whether the environment forbids downloads (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def resolve_base_model(name: str, *, announce: Callable[[str], None] = print) -> BaseModelSource:
    """The directory of base model `name`, downloading a Hub model not yet cached; raises LoraError."""
    if name.startswith(HF_PREFIX):
        repo_id = name[len(HF_PREFIX) :].strip()
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise LoraError(BASE_MODEL_NOT_FOUND, f"base model '{name}' is not of the form hf:ORG/NAME")
        return BaseModelSource(name=name, path=_hub_snapshot(name, repo_id, announce), repo_id=repo_id)
    path = Path(name).expanduser()
    if not path.is_dir():
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"base model directory {path} does not exist (give a directory written by save_pretrained, or hf:ORG/NAME)",
        )
    if not (path / "config.json").is_file():
        raise LoraError(
            BASE_MODEL_NOT_FOUND, f"{path} is not a model directory as save_pretrained writes it (no config.json)"
        )
    return BaseModelSource(name=name, path=path.resolve())


def _hub_snapshot(name: str, repo_id: str, announce: Callable[[str], None]) -> Path:
    require_installed()
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    cache = hf_cache_dir()
    try:
        return Path(
            snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=list(DOWNLOAD_PATTERNS))
        )
    except LocalEntryNotFoundError:
        pass
    if downloads_disabled():
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"base model {name} is not in the Hugging Face cache {cache} and "
            "downloads are off (HF_HUB_OFFLINE); download it where you are online "
            "or give a local model directory",
        )
    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
        size = sum(
            sibling.size or 0
            for sibling in info.siblings or []
            if any(fnmatch.fnmatch(sibling.rfilename, pattern) for pattern in DOWNLOAD_PATTERNS)
        )
        announce(f"Downloading base model {name} ({_human_size(size)}) into {cache}")
        return Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=list(DOWNLOAD_PATTERNS)))
    except RepositoryNotFoundError:
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"base model {name}: no such model on Hugging Face (or it is gated: log in with `hf auth login`)",
        ) from None
    except LoraError:
        raise
    except Exception as error:  # network, disk: the job fails with the reason, the process keeps running
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"base model {name} is not in the Hugging Face cache {cache} and could not be downloaded: {reason[:200]}",
        ) from None


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def load_tokenizer(source: BaseModelSource, *, needs_chat_template: bool) -> Any:
    """The base model's tokenizer (with a pad token); LoraError when chat records meet a template-less tokenizer."""
    require_installed()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    except (OSError, ValueError) as error:
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"cannot load the tokenizer of base model {source.name}: {str(error).splitlines()[0][:200]}",
        ) from None
    if needs_chat_template and not getattr(tokenizer, "chat_template", None):
        raise LoraError(
            NO_CHAT_TEMPLATE,
            f"the tokenizer of base model {source.name} has no chat template: use an "
            "instruct/chat model, or export completion records (--format completion)",
        )
    if tokenizer.pad_token_id is None:
        # padding positions are masked out of attention and loss, so any token will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(source: BaseModelSource, device: Optional[str] = None) -> Any:
    """The base model's weights on `device` (bfloat16 on a GPU that has it, else float32), in eval mode."""
    require_installed()
    import torch
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype)
    except (OSError, ValueError) as error:
        raise LoraError(
            BASE_MODEL_NOT_FOUND,
            f"cannot load base model {source.name} as a causal language model: {str(error).splitlines()[0][:200]}",
        ) from None
    return model.to(device).eval()


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The longest sequence the model takes: its config's position limit, capped by the tokenizer's."""
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions", "seq_length")]
    limits = [int(value) for value in limits if isinstance(value, int) and value > 0]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 10_000_000:  # unset tokenizers say 1e30
        limits.append(model_max)
    return min(limits) if limits else 2048


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


def describe_base_model(name: str) -> BaseModel:
    """The open-weights base model `name` as export, validation and the job runner need it; ValueError for other
    names.

    The name of a directory becomes its absolute path (the job's `model`, which a server elsewhere can open);
    fine-tuned model ids take its last part (ids.id_base). Format: chat when the tokenizer has a chat template,
    else completion; a Hub model not downloaded yet is taken as chat (training then says so when its tokenizer
    has no template). The tokenizer is the model's own (`encoding` is the name, see rendering.TokenizerEncoding);
    prices are nil: it trains and serves on your machine. Nothing is downloaded or loaded here.
    """
    if not is_open_weights_name(name):
        raise ValueError(f"the LoRA engine fine-tunes hf:ORG/NAME or a model directory, not '{name}'")
    directory = _known_directory(name)
    if directory is None and not name.startswith(HF_PREFIX):
        raise ValueError(f"base model directory {name} does not exist or has no config.json")
    if not name.startswith(HF_PREFIX):
        name = str(Path(name).expanduser().resolve())
    fmt = "chat" if directory is None or _has_chat_template(directory) else "completion"
    context = (_context_from_config(directory) if directory else None) or UNKNOWN_CONTEXT
    return BaseModel(
        name=name,
        format=fmt,
        encoding=name,
        context=context,
        training_price=0.0,
        input_price=0.0,
        output_price=0.0,
        open_weights=True,
    )
