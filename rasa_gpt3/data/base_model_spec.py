"""One fine-tunable base model as export, validation, the cost guard and the local engines see it (`BaseModel`).

The table of known models and the lookups are in `base_models`; this record sits below it, so that the local
backend's open-weights description (local/lora/base_model.py), which `base_models.resolve_base_model` calls, can
make one without importing the table back.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class BaseModel:
    """One fine-tunable base model; prices are USD per 1M tokens.

    An open-weights model (`open_weights`: `hf:ORG/NAME` or a model directory, fine-tuned with LoRA on your own
    machine) has no price, and its `encoding` is its own name: data.tokens.get_encoding loads its tokenizer.
    """

    name: str
    format: str
    encoding: str
    context: int
    training_price: float
    input_price: float
    output_price: float
    # the day the provider retires the model and its fine-tunes (None: none announced), and who announced it
    shutdown: Optional[_dt.date] = None
    shutdown_source: Optional[str] = None
    open_weights: bool = False

    def training_cost(self, trained_tokens: int) -> float:
        """USD for training on `trained_tokens` (tokens per epoch times epochs)."""
        return trained_tokens * self.training_price / 1_000_000

    def training_cost_text(self, trained_tokens: int) -> str:
        """The training cost estimate as the CLI prints it: dollars, or "local" for an open-weights model."""
        return cost_text(self.training_cost(trained_tokens), self.open_weights)

    def usage_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for calling the fine-tuned model with these token counts."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1_000_000


def cost_text(usd: float, local: bool) -> str:
    """An estimated cost as the CLI prints it: "est. $0.1234", or "local" (no price) for an open-weights model."""
    return "local (no price: trains on this machine)" if local else f"est. ${usd:.4f}"
