"""The local backend's engines, and the two choices made from them: who trains a job, who serves a stored model.

See engines.py for what an engine is and how to add one.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from rasa_gpt3.data.base_models import BaseModel
from rasa_gpt3.local import standin
from rasa_gpt3.local.engines import Engine, EngineKind
from rasa_gpt3.local.lora import engine as lora

# asked in this order: the first engine whose `describe` accepts a job's base model trains it (the stand-in takes
# the OpenAI names of base_models.yml, LoRA takes hf:ORG/NAME and model directories)
ENGINES: Tuple[EngineKind, ...] = (standin.ENGINE, lora.ENGINE)
# the engine of stored models whose metadata names none (every model stored before engines had names)
DEFAULT_ENGINE = standin.ENGINE.name
ENGINE_FIELD = "engine"


def engine_for_base_model(name: str) -> Tuple[EngineKind, BaseModel]:
    """The engine that fine-tunes base model `name`, with its description; raises the first engine's ValueError."""
    first_error = None
    for engine in ENGINES:
        try:
            return engine, engine.describe(name)
        except ValueError as error:
            first_error = first_error or error
    raise first_error or ValueError(f"no engine fine-tunes '{name}'")


def engine_of_model(meta: Dict[str, Any]) -> EngineKind:
    """The engine that trained the stored model with metadata `meta`; raises ValueError for an unknown one."""
    name = meta.get(ENGINE_FIELD) or DEFAULT_ENGINE
    for engine in ENGINES:
        if engine.name == name:
            return engine
    raise ValueError(f"model {meta.get('id')} needs the engine '{name}', which this backend does not have")


def load_engine(meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Engine:
    """The stored model (metadata and arrays) loaded by the engine that trained it, ready to serve."""
    return engine_of_model(meta).load(meta, arrays)
