"""The fallback action's configuration: `gpt3_fallback.yml` in the bot project, every setting with a default.

The file is `<project>/gpt3_fallback.yml`, where the project is `RASA_GPT3_PROJECT` or the directory `rasa run
actions` runs in; `RASA_GPT3_FALLBACK_CONFIG` names another file. A missing file means the defaults; a key or value
the action cannot use is one line naming the file and the key (`FallbackConfigError`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.errors import first_line
from rasa_gpt3.inference.calls import DEFAULT_MAX_MESSAGE_CHARS
from rasa_gpt3.intent_names import FALLBACK_INTENT

CONFIG_FILE = "gpt3_fallback.yml"
ENV_PROJECT = "RASA_GPT3_PROJECT"
ENV_CONFIG = "RASA_GPT3_FALLBACK_CONFIG"
# OpenAI accepts at most 4 stop sequences
MAX_STOP_SEQUENCES = 4


class FallbackConfigError(ValueError):
    """gpt3_fallback.yml has a key or value the action cannot use; the message is one line."""


@dataclass(frozen=True)
class FallbackConfig:
    """The action's settings (`gpt3_fallback.yml`); every field has a default."""

    # step 1: ask the intent model when NLU did not, re-inject when it is confident enough
    reclassify: bool = True
    reclassify_threshold: float = 0.6
    # intents never re-injected (re-injecting the fallback intent would only loop)
    ignore_intents: Tuple[str, ...] = (FALLBACK_INTENT,)
    # add entities from the entities model to a re-injected message when the pipeline has no GPT3EntityExtractor
    extract_entities: bool = True
    # step 2: answer with the response model
    generate: bool = True
    history: int = 3
    max_tokens: int = 150
    temperature: float = 0.0
    stop: Tuple[str, ...] = ()
    forbidden_patterns: Tuple[str, ...] = ()
    answer_slot: Optional[str] = "gpt3_answer"
    # what the user gets when nothing else works
    failure_response: str = "utter_default"
    # seconds per model call (one quick retry included) and for the first load of the project and models
    timeout: float = 5.0
    load_timeout: float = 60.0
    breaker_failures: int = 3
    breaker_cooldown: float = 30.0
    # a longer user message is never sent to a model (see rasa_gpt3.inference.calls.DEFAULT_MAX_MESSAGE_CHARS)
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    # explicit model ids (else environment, else the registry); for a model the registry lacks (one served by vLLM,
    # say) its base model, whose tokenizer decides the intent labels, and the record format (else the base model's)
    intent_model: Optional[str] = None
    entities_model: Optional[str] = None
    response_model: Optional[str] = None
    base_model: Optional[str] = None
    format: Optional[str] = None

    @classmethod
    def from_mapping(cls, data: Any, where: str = CONFIG_FILE) -> FallbackConfig:
        """A config from a parsed YAML mapping; raises FallbackConfigError naming `where` and the key."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise FallbackConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
        known = {item.name: item for item in fields(cls)}
        values: Dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise FallbackConfigError(f"{where}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
            values[key] = _checked(key, value, getattr(cls(), key), where)
        config = cls(**values)
        config._validate(where)
        return config

    def _validate(self, where: str) -> None:
        if not 0.0 <= self.reclassify_threshold <= 1.0:
            raise FallbackConfigError(f"{where}: reclassify_threshold must be between 0 and 1")
        for name in ("timeout", "load_timeout"):
            if getattr(self, name) <= 0:
                raise FallbackConfigError(f"{where}: {name} must be a positive number of seconds")
        if self.history < 1 or self.max_tokens < 1 or self.max_message_chars < 1:
            raise FallbackConfigError(f"{where}: history, max_tokens and max_message_chars must be at least 1")
        if self.format not in (None, *prompts.FORMATS):
            raise FallbackConfigError(f"{where}: format must be chat or completion")
        if len(self.stop) > MAX_STOP_SEQUENCES - 1:
            raise FallbackConfigError(f"{where}: at most {MAX_STOP_SEQUENCES - 1} extra stop sequences")
        for pattern in self.forbidden_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise FallbackConfigError(
                    f"{where}: forbidden pattern {pattern!r} is not a regular expression: {error}"
                ) from None

    @property
    def forbidden(self) -> List[re.Pattern[str]]:
        """The compiled forbidden patterns."""
        return [re.compile(pattern) for pattern in self.forbidden_patterns]


def _checked(key: str, value: Any, default: Any, where: str) -> Any:
    """`value` converted to the type of the setting's default; FallbackConfigError when it cannot be."""
    if key in ("answer_slot", "intent_model", "entities_model", "response_model", "base_model", "format"):
        if value is None or isinstance(value, str):
            return value or None
        raise FallbackConfigError(f"{where}: {key} must be a string")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise FallbackConfigError(f"{where}: {key} must be true or false")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise FallbackConfigError(f"{where}: {key} must be a list of strings")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FallbackConfigError(f"{where}: {key} must be a number")
        if isinstance(default, float):
            return float(value)
        if float(value).is_integer():
            return int(value)
        raise FallbackConfigError(f"{where}: {key} must be a whole number")
    if isinstance(default, str):
        if isinstance(value, str) and value:
            return value
        raise FallbackConfigError(f"{where}: {key} must be a non-empty string")
    return value


def project_dir() -> Path:
    """The bot project the action serves: RASA_GPT3_PROJECT, else the working directory of `rasa run actions`."""
    return Path(os.environ.get(ENV_PROJECT) or Path.cwd())


def load_fallback_config(project: Path) -> FallbackConfig:
    """Reads RASA_GPT3_FALLBACK_CONFIG or `<project>/gpt3_fallback.yml`; defaults when the file does not exist."""
    import yaml

    path = Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else project / CONFIG_FILE
    if not path.is_file():
        if os.environ.get(ENV_CONFIG):
            raise FallbackConfigError(f"{path}: file not found (set by {ENV_CONFIG})")
        return FallbackConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise FallbackConfigError(f"{path}: cannot read it: {first_line(error)}") from None
    return FallbackConfig.from_mapping(data, where=str(path))
