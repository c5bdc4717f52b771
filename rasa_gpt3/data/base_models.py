"""What is known about each fine-tunable base model: record format, tokenizer, context size and prices."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

import yaml

_TABLE = Path(__file__).with_name("base_models.yml")


@dataclass(frozen=True)
class BaseModel:
    """One fine-tunable base model; prices are USD per 1M tokens."""

    name: str
    format: str
    encoding: str
    context: int
    training_price: float
    input_price: float
    output_price: float

    def training_cost(self, trained_tokens: int) -> float:
        """USD for training on `trained_tokens` (tokens per epoch times epochs)."""
        return trained_tokens * self.training_price / 1_000_000

    def usage_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for calling the fine-tuned model with these token counts."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1_000_000


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
    )


def default_base_model(fmt: str) -> str:
    """The base model used for `fmt` ('chat' or 'completion') when none is given."""
    return _table()["default_chat" if fmt == "chat" else "default_completion"]


def resolve_base_model(name: Optional[str], fmt: Optional[str] = None) -> BaseModel:
    """Looks a base model up by full name, alias or fine-tuned id (`ft:<base>:...`); raises ValueError if unknown."""
    if not name:
        name = default_base_model(fmt or "chat")
    if name.startswith("ft:"):
        name = name.split(":")[1]
    table = _table()
    full = table.get("aliases", {}).get(name, name)
    if full not in table["models"]:
        known = ", ".join(sorted(table["models"]))
        raise ValueError(f"unknown base model '{name}' (known: {known}; add it to {_TABLE.name})")
    return _from_row(full, table["models"][full])


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
