"""What is known about each fine-tunable base model: record format, tokenizer, context size, prices, shutdown date.

Shutdown dates are the provider's (OpenAI's) schedule, from base_models.yml. RASA_GPT3_SHUTDOWN_DATES overrides
them without editing the package, e.g. `gpt-4o-mini-2024-07-18=2027-01-14,babbage-002=none` (`none` clears a
date): for a date announced after this release, and for tests, which use it to put a model's shutdown 30 days
ahead or in the past. The embedded local backend announces only these overrides: its models are its own and are
retired by no provider.
"""

from __future__ import annotations

import datetime as _dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

import yaml

from rasa_gpt3.data.base_model_spec import BaseModel
from rasa_gpt3.errors import DataError, RasaGPT3Error

_TABLE = Path(__file__).with_name("base_models.yml")
ENV_SHUTDOWN_DATES = "RASA_GPT3_SHUTDOWN_DATES"
# the range of n_epochs the fine-tuning API accepts
MIN_EPOCHS, MAX_EPOCHS = 1, 50


@lru_cache(maxsize=1)
def _table() -> dict:
    return yaml.safe_load(_TABLE.read_text(encoding="utf-8"))


def known_base_models() -> Dict[str, BaseModel]:
    """Every base model in the table, by its full name."""
    return {name: _from_row(name, row) for name, row in _table()["models"].items()}


def _from_row(name: str, row: dict) -> BaseModel:
    return BaseModel(
        name=name,
        format=row["format"],
        encoding=row["encoding"],
        context=int(row["context"]),
        training_price=float(row["training"]),
        input_price=float(row["input"]),
        output_price=float(row["output"]),
        shutdown=row.get("shutdown"),
        shutdown_source=(_table().get("shutdown_sources", {}).get(row.get("source")) or {}).get("title"),
    )


def default_base_model(fmt: str) -> str:
    """The base model used for `fmt` ('chat' or 'completion') when none is given."""
    return _table()["default_chat" if fmt == "chat" else "default_completion"]


def resolve_base_model(name: Optional[str], fmt: Optional[str] = None) -> BaseModel:
    """Looks a base model up by full name, alias or fine-tuned id (`ft:<base>:...`), or an open-weights model
    (`hf:ORG/NAME`, a model directory); raises ValueError if unknown."""
    if not name:
        name = default_base_model(fmt or "chat")
    from rasa_gpt3.local.lora.base_model import describe_base_model, is_open_weights_name

    if is_open_weights_name(name):
        return describe_base_model(name)
    return openai_base_model(name)


def openai_base_model(name: str) -> BaseModel:
    """Looks an OpenAI base model up in the table by full name, alias or fine-tuned id (`ft:<base>:...`); raises
    ValueError for any other name (the local stand-in fine-tunes exactly these)."""
    table = _table()
    full = base_model_name(name)
    if full not in table["models"]:
        known = ", ".join(sorted(table["models"]))
        raise ValueError(f"unknown base model '{name}' (known: {known}; add it to {_TABLE.name})")
    return _from_row(full, table["models"][full])


def base_model_name(model: str) -> str:
    """The full base model name of a fine-tuned id (`ft:<base>:...`), an alias or a full name (else `model` itself)."""
    if model.startswith("ft:"):
        model = model.split(":")[1]
    return _table().get("aliases", {}).get(model, model)


def shutdown_overrides() -> Dict[str, Optional[_dt.date]]:
    """The dates of RASA_GPT3_SHUTDOWN_DATES by full base model name (None: cleared); raises RasaGPT3Error."""
    overrides: Dict[str, Optional[_dt.date]] = {}
    for item in os.environ.get(ENV_SHUTDOWN_DATES, "").split(","):
        model, _, value = (part.strip() for part in item.partition("="))
        if not model and not value:
            continue
        overrides[base_model_name(model)] = _override_date(model, value, item)
    return overrides


def _override_date(model: str, value: str, item: str) -> Optional[_dt.date]:
    if model and value.lower() == "none":
        return None
    try:
        if model:
            return _dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise RasaGPT3Error(f"{ENV_SHUTDOWN_DATES}: '{item.strip()[:80]}' is not MODEL=YYYY-MM-DD (or MODEL=none)")


def shutdown_date(model: str, provider_schedule: bool = True) -> Optional[_dt.date]:
    """The day `model` (a base model, alias or fine-tuned id) shuts down, None when none is announced.

    RASA_GPT3_SHUTDOWN_DATES first, then (with `provider_schedule`) the table's date of its base model. Raises
    RasaGPT3Error when the environment variable is malformed.
    """
    name = base_model_name(model)
    overrides = shutdown_overrides()
    if name in overrides:
        return overrides[name]
    row = _table()["models"].get(name) if provider_schedule else None
    return row.get("shutdown") if row else None


def is_base_model_id(name: str) -> bool:
    """Whether `name` names a base model itself (full name or alias), not a model fine-tuned from it."""
    table = _table()
    return name in table["models"] or name in table.get("aliases", {})


def default_epochs(n_examples: int) -> int:
    """Epochs OpenAI picks when none are given: about 3, scaled so the job sees 100..25,000 examples."""
    min_target, max_target, target_epochs, min_epochs, max_epochs = 100, 25_000, 3, 1, 25
    if n_examples <= 0:
        return target_epochs
    if n_examples * target_epochs < min_target:
        return min(max_epochs, -(-min_target // n_examples))
    if n_examples * target_epochs > max_target:
        return max(min_epochs, max_target // n_examples)
    return target_epochs


def check_epochs(epochs: Optional[int]) -> None:
    """Raises DataError (one line) unless `epochs` is None (chosen from the data size) or a whole number 1 to 50."""
    if epochs is None:
        return
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not MIN_EPOCHS <= epochs <= MAX_EPOCHS:
        raise DataError(
            f"epochs must be a whole number from {MIN_EPOCHS} to {MAX_EPOCHS}, not {epochs!r} "
            "(leave it out to have it chosen from the data size)"
        )
