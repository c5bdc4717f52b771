"""`action_gpt3_fallback`: what a bot does with a message its NLU pipeline was unsure about.

```yaml
# data/rules.yml
- rule: low NLU confidence -> GPT fallback
  steps:
  - intent: nlu_fallback
  - action: action_gpt3_fallback
```

```python
# actions/actions.py (served by `rasa run actions`)
from rasa_gpt3.actions import ActionGPT3Fallback  # noqa: F401
```

Two things it can do, in this order (each can be switched off):

1. **Re-classify.** When the fine-tuned intent model was not asked in NLU (a DIET-only pipeline; routing mode
   skipped it because the earlier classifier looked confident; or its call failed), the action asks it about the
   latest user message. When the top intent is one the domain knows and its confidence is at least
   `reclassify_threshold`, the action reverts the fallback (`UserUtteranceReverted`) and re-injects the message
   (`ActionExecuted(action_listen)` + `UserUttered` with the new intent, its ranking and entities), exactly as
   Rasa's own two-stage fallback does. Rasa then runs `action_extract_slots` and the bot's rules and stories
   carry on as if NLU had got it right. Entities: those NLU found, plus, when the pipeline has no
   GPT3EntityExtractor, those of the fine-tuned entities model, mapped through the training data's synonyms.
   A retrieval intent (`faq/ask_x`) also sets the response selector's choice, so `utter_faq` answers it.
2. **Generate.** Otherwise the fine-tuned `response` model gets the last `history` turns of the conversation,
   rendered by `rasa_gpt3.prompts.response_request` (the same as the `response` export), and its answer is sent;
   the slot `answer_slot` (default `gpt3_answer`, if the domain has it) is set to it.

Guardrails: `max_tokens`, the format's stop sequences plus `stop`, a `timeout` per call (the process-wide
`rasa_gpt3.inference` caller: one quick retry, circuit breaker, cache); `{slot}` templates in an answer are filled
from the tracker, and an answer naming an unset or unknown slot is refused; an answer matching one of
`forbidden_patterns` (regular expressions) is refused. On any failure or refusal the action sends
`failure_response` (default `utter_default`; a fixed sentence if the domain lacks it). The user always gets a
reply and the action server never crashes. Failures are logged once, without the user's text or the API key.

Configuration (all optional): `gpt3_fallback.yml` in the bot project (the directory `rasa run actions` runs in,
or `RASA_GPT3_PROJECT`; another file with `RASA_GPT3_FALLBACK_CONFIG`). Model ids: the file's `intent_model` /
`entities_model` / `response_model`, else `RASA_GPT3_INTENT_MODEL` / `RASA_GPT3_ENTITIES_MODEL` /
`RASA_GPT3_RESPONSE_MODEL`, else the project's registry (`gpt3_models.yml`, re-read when it changes). The API key
and base URL come from the environment only (see `rasa_gpt3.settings`); no key is ever read from a file.

Every decision is recorded for the transcript (the demo reads it from the tracker): a re-injected message carries
`parse_data["gpt3_fallback"]` (`reclassified`, `model`, `confidence`, `previous_intent`); a bot message the action
sent carries `metadata["rasa_gpt3"]` (`source`: `generated` or `failure`, and the reason).
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Text, Tuple

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActionExecuted, SlotSet, UserUtteranceReverted, UserUttered
from rasa_sdk.executor import CollectingDispatcher

from rasa_gpt3 import prompts

logger = logging.getLogger(__name__)

ACTION_NAME = "action_gpt3_fallback"
CONFIG_FILE = "gpt3_fallback.yml"
ENV_PROJECT = "RASA_GPT3_PROJECT"
ENV_CONFIG = "RASA_GPT3_FALLBACK_CONFIG"
ENV_MODELS = {
    "intent": "RASA_GPT3_INTENT_MODEL",
    "entities": "RASA_GPT3_ENTITIES_MODEL",
    "response": "RASA_GPT3_RESPONSE_MODEL",
}
# sent when even the failure response is missing from the domain
LAST_RESORT_TEXT = "Sorry, I can't answer that right now."
# what the NLU component records when the intent model gave an answer (so asking again would not help)
ANSWERED_OUTCOMES = ("ok", "unknown_label", "no_logprobs")
SLOT_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
    ignore_intents: Tuple[str, ...] = ("nlu_fallback",)
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
    # explicit model ids (else environment, else the registry) and the record format of models the registry lacks
    intent_model: Optional[str] = None
    entities_model: Optional[str] = None
    response_model: Optional[str] = None
    format: Optional[str] = None

    @classmethod
    def from_mapping(cls, data: Any, where: str = CONFIG_FILE) -> "FallbackConfig":
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
        if self.history < 1 or self.max_tokens < 1:
            raise FallbackConfigError(f"{where}: history and max_tokens must be at least 1")
        if self.format not in (None, *prompts.FORMATS):
            raise FallbackConfigError(f"{where}: format must be chat or completion")
        if len(self.stop) > MAX_STOP_SEQUENCES - 1:
            raise FallbackConfigError(f"{where}: at most {MAX_STOP_SEQUENCES - 1} extra stop sequences")
        for pattern in self.forbidden_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise FallbackConfigError(f"{where}: forbidden pattern {pattern!r} is not a regular expression: {error}") from None

    @property
    def forbidden(self) -> List["re.Pattern[str]"]:
        """The compiled forbidden patterns."""
        return [re.compile(pattern) for pattern in self.forbidden_patterns]


def _checked(key: str, value: Any, default: Any, where: str) -> Any:
    """`value` converted to the type of the setting's default; FallbackConfigError when it cannot be."""
    if key in ("answer_slot", "intent_model", "entities_model", "response_model", "format"):
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
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FallbackConfigError(f"{path}: cannot read it: {first}") from None
    return FallbackConfig.from_mapping(data, where=str(path))


# ---------------------------------------------------------------- the models the action uses


@dataclass(frozen=True)
class ServingModels:
    """What the action serves with: the caller and whichever of the three models the project has."""

    caller: Any  # rasa_gpt3.inference.BoundedCaller
    intent: Any = None  # rasa_gpt3.inference.IntentModel
    entities: Any = None  # rasa_gpt3.inference.EntityModel
    response: Optional[Tuple[str, str]] = None  # (model id, format)
    # lower-cased entity text -> value, from the training data (what EntitySynonymMapper does in NLU)
    synonyms: Dict[str, str] = field(default_factory=dict)
    registry_stamp: Any = None


class ModelLoader:
    """Loads the project data and resolves the models once per process, again when the registry file changes.

    Loading the project through Rasa's importer and exporting the intent data (for its label codec) takes a few
    seconds, so it starts in a background thread when the action server starts and requests wait for it.
    """

    def __init__(self, project: Path, config: FallbackConfig) -> None:
        self.project = project
        self.config = config
        self._lock = threading.Lock()
        self._models: Optional[ServingModels] = None
        self._project_data: Any = None
        self._exports: Dict[Tuple[str, Optional[str], Optional[str]], Any] = {}
        self._warned: set = set()

    def start_background(self) -> None:
        """Starts loading in a daemon thread (errors are logged and retried on the first request)."""
        threading.Thread(target=self._load_quietly, name="rasa-gpt3-fallback-load", daemon=True).start()

    def _load_quietly(self) -> None:
        try:
            self.models()
        except Exception as error:  # the first request tries again and reports it
            logger.warning("action_gpt3_fallback: loading the models failed: %s", _one_line(error))

    def _settings(self) -> Any:
        from rasa_gpt3.settings import Settings

        return Settings.from_env(self.project)

    def _registry_stamp(self, settings: Any) -> Any:
        try:
            stat = settings.registry_path.stat()
            return stat.st_mtime_ns, stat.st_size
        except OSError:
            return None

    def models(self) -> ServingModels:
        """The current models (blocking; run it off the event loop)."""
        settings = self._settings()
        stamp = self._registry_stamp(settings)
        with self._lock:
            if self._models is not None and self._models.registry_stamp == stamp:
                return self._models
            self._models = self._resolve(settings, stamp)
            return self._models

    def _project(self) -> Any:
        if self._project_data is None:
            from rasa_gpt3.data.project import load_project

            self._project_data = load_project(self.project)
        return self._project_data

    def _export(self, task: str, fmt: Optional[str], base_model: Optional[str]) -> Any:
        from rasa_gpt3.data.export import export_task

        key = (task, fmt, base_model)
        if key not in self._exports:
            self._exports[key] = export_task(task, self._project().nlu, fmt=fmt, base_model=base_model, validate=False)
        return self._exports[key]

    def _resolve(self, settings: Any, stamp: Any) -> ServingModels:
        from rasa_gpt3.inference import CallPolicy, EntityModel, IntentModel, caller_for
        from rasa_gpt3.registry import Registry

        config = self.config
        policy = CallPolicy(
            timeout=config.timeout, breaker_failures=config.breaker_failures, breaker_cooldown=config.breaker_cooldown
        )
        caller = caller_for(settings, policy)
        registry = Registry.load(settings.registry_path)
        backend = settings.backend_name

        def choose(task: str) -> Optional[Tuple[str, str, Optional[str], Optional[str]]]:
            """(model, format, base model, registered fingerprint) for `task`, or None."""
            explicit = getattr(config, f"{task}_model") or os.environ.get(ENV_MODELS[task]) or None
            entry = registry.find(task, backend, model=explicit) if explicit else registry.active(task, backend)
            if explicit:
                fmt = (entry.format if entry else None) or config.format or prompts.FORMATS[0]
                return explicit, fmt, entry.base_model if entry else None, entry.fingerprint if entry else None
            if entry is None:
                return None
            return entry.model, entry.format or config.format or prompts.FORMATS[0], entry.base_model, entry.fingerprint

        intent_model = entity_model = response = None
        synonyms: Dict[str, str] = {}
        project = None
        intent_choice = choose("intent") if config.reclassify else None
        if intent_choice is not None:
            model, fmt, base, fingerprint = intent_choice
            exported = self._export("intent", fmt, base)
            self._warn_if_stale("intent", model, fingerprint, exported.fingerprint)
            intent_model = IntentModel(model=model, fmt=fmt, labels=dict(exported.codec.labels))
            project = self._project()
        entities_choice = choose("entities") if config.reclassify and config.extract_entities else None
        if entities_choice is not None:
            model, fmt, base, fingerprint = entities_choice
            exported = self._export("entities", fmt, base)
            self._warn_if_stale("entities", model, fingerprint, exported.fingerprint)
            nlu = self._project().nlu
            entity_model = EntityModel(
                model=model, fmt=fmt, entity_types=frozenset(nlu.entities),
                roles=frozenset(nlu.entity_roles), groups=frozenset(nlu.entity_groups),
            )
            project = self._project()
        response_choice = choose("response") if config.generate else None
        if response_choice is not None:
            response = (response_choice[0], response_choice[1])
        if project is not None:
            synonyms = {str(text).lower(): str(value) for text, value in project.nlu.entity_synonyms.items()}
        if intent_model is None and response is None and (config.reclassify or config.generate):
            self._warn_once("no-models", "action_gpt3_fallback: the registry (%s) has no intent or response model for %s; "
                            "the action will send %s (run `rasa-gpt3 fine-tune --task intent` / `--task response`)",
                            settings.registry_path, backend, config.failure_response)
        self._prepare_sdk(settings)
        if settings.uses_local_backend:
            self._warm_up(caller, intent_model, response)
        return ServingModels(caller, intent_model, entity_model, response, synonyms, stamp)

    @staticmethod
    def _prepare_sdk(settings: Any) -> None:
        # the SDK imports its resource modules on first use; done here, not inside the first request's time budget
        from rasa_gpt3.client import make_async_client

        client = make_async_client(settings, max_retries=0)
        _ = (client.chat.completions.with_raw_response, client.completions.with_raw_response)

    def _warm_up(self, caller: Any, intent_model: Any, response: Optional[Tuple[str, str]]) -> None:
        # the embedded backend loads a model on its first request; do it now rather than during a conversation
        if intent_model is not None:
            caller.warm_up(intent_model.model, intent_model.request_body("hello"))
        if response is not None:
            caller.warm_up(response[0], dict(prompts.response_request([prompts.Turn("user", "hello")], response[1]),
                                             max_tokens=self.config.max_tokens))

    def _warn_if_stale(self, task: str, model: str, registered: Optional[str], current: str) -> None:
        if registered and registered != current:
            self._warn_once(f"stale-{task}-{model}", "action_gpt3_fallback: the %s model %s was trained on other data than "
                            "the bot's current data; run `rasa-gpt3 fine-tune --task %s`", task, model, task)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


# ---------------------------------------------------------------- pure parts (unit-tested without a server)


def should_reclassify(parse_data: Dict[str, Any]) -> bool:
    """Whether the intent model should be asked: the NLU pipeline did not ask it, or its call failed."""
    record = parse_data.get("gpt3")
    if not isinstance(record, dict) or not record.get("asked"):
        return True
    return record.get("outcome") not in ANSWERED_OUTCOMES


def conversation_turns(events: Sequence[Dict[str, Any]], history: int) -> List[prompts.Turn]:
    """The last `history` user and bot turns with text (the latest user message last) from applied tracker events."""
    turns: List[prompts.Turn] = []
    for event in events:
        kind = event.get("event")
        text = event.get("text")
        if kind in ("user", "bot") and isinstance(text, str) and text.strip():
            turns.append(prompts.Turn("user" if kind == "user" else "bot", text))
    return turns[-history:]


def response_body(turns: Sequence[prompts.Turn], fmt: str, config: FallbackConfig) -> Dict[str, Any]:
    """The generation request: the history rendered by `prompts`, max tokens, temperature, stop sequences."""
    body = dict(prompts.response_request(turns, fmt))
    body["max_tokens"] = config.max_tokens
    body["temperature"] = config.temperature
    stop = list(prompts.stop_sequences(fmt) or []) + list(config.stop)
    if stop:
        body["stop"] = stop
    return body


class Refused(Exception):
    """A generated answer the guardrails do not let through; the message says why (without the answer)."""


def guard_answer(raw: str, fmt: str, slots: Dict[str, Any], config: FallbackConfig) -> str:
    """The answer to send: cleaned, `{slot}` templates filled from `slots`; raises Refused."""
    answer = prompts.clean_completion(raw) if fmt == "completion" else (raw or "").strip()
    if not answer:
        raise Refused("empty answer")
    for pattern in config.forbidden:
        if pattern.search(answer):
            raise Refused(f"answer matches the forbidden pattern {pattern.pattern!r}")

    def fill(match: "re.Match[str]") -> str:
        value = slots.get(match.group(1))
        if value is None or value == "" or isinstance(value, (list, dict)):
            raise Refused(f"answer needs slot '{match.group(1)}', which is not set")
        return str(value)

    filled = SLOT_TEMPLATE.sub(fill, answer)
    # a filled-in slot value must not smuggle a forbidden text in either
    for pattern in config.forbidden:
        if pattern.search(filled):
            raise Refused(f"filled answer matches the forbidden pattern {pattern.pattern!r}")
    return filled


def domain_intents(domain: Dict[str, Any]) -> List[str]:
    """The intent names of a domain dict as rasa-sdk passes it (entries are names or {name: properties})."""
    names = []
    for item in domain.get("intents") or []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict):
            names.extend(str(key) for key in item)
    return names


def merge_entities(
    nlu_entities: Sequence[Dict[str, Any]], model_entities: Sequence[Dict[str, Any]], synonyms: Dict[str, str]
) -> List[Dict[str, Any]]:
    """NLU's entities plus the model's that do not overlap them, the latter mapped through the synonyms."""
    merged = [dict(entity) for entity in nlu_entities]
    taken = [(e.get("start"), e.get("end")) for e in merged if e.get("start") is not None and e.get("end") is not None]
    for entity in model_entities:
        start, end = entity.get("start"), entity.get("end")
        if any(start < other_end and other_start < end for other_start, other_end in taken):
            continue
        entity = dict(entity, extractor=ACTION_NAME)
        mapped = synonyms.get(str(entity.get("value")).lower())
        if mapped is not None and mapped != entity.get("value"):
            entity["value"] = mapped
            entity["processors"] = ["EntitySynonymMapper"]
        merged.append(entity)
        taken.append((start, end))
    return sorted(merged, key=lambda e: (e.get("start") or 0, e.get("end") or 0))


def reinjected_parse_data(
    latest: Dict[str, Any], prediction: Any, entities: List[Dict[str, Any]], domain: Dict[str, Any]
) -> Dict[str, Any]:
    """The parse data of the re-injected message: the model's intent and ranking, entities, the record of why."""
    parse_data = {key: copy.deepcopy(value) for key, value in latest.items() if key not in ("intent", "entities", "intent_ranking")}
    intent: Dict[str, Any] = {"name": prediction.intent, "confidence": float(prediction.confidence)}
    full = prediction.full_intent
    if full and "/" in full:
        intent["full_retrieval_intent_name"] = full
        _select_retrieval_response(parse_data, prediction.intent, full, domain)
    parse_data["intent"] = intent
    parse_data["intent_ranking"] = copy.deepcopy(prediction.ranking)
    parse_data["entities"] = entities
    parse_data["gpt3_fallback"] = {
        "reclassified": True,
        "model": prediction.model,
        "intent": prediction.intent,
        "confidence": float(prediction.confidence),
        "previous_intent": copy.deepcopy(latest.get("intent")),
        "cached": bool(prediction.cached),
    }
    return parse_data


def _select_retrieval_response(parse_data: Dict[str, Any], base: str, full: str, domain: Dict[str, Any]) -> None:
    """Points the response selector's choice for `base` at `full`, so `utter_<base>` answers the model's intent."""
    utter_action = f"utter_{full}"
    responses = (domain.get("responses") or {}).get(utter_action)
    if not responses:
        return
    selector = parse_data.setdefault("response_selector", {})
    entry = selector.setdefault(base, {})
    entry["response"] = {
        "id": None,
        "responses": copy.deepcopy(responses),
        "response_templates": copy.deepcopy(responses),
        "confidence": 1.0,
        "intent_response_key": full,
        "utter_action": utter_action,
        "template_name": utter_action,
    }
    entry["ranking"] = [{"id": None, "confidence": 1.0, "intent_response_key": full}]


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


# ---------------------------------------------------------------- the action


class ActionGPT3Fallback(Action):
    """Re-classifies the message NLU was unsure about (so the stories go on), or answers it with the response model."""

    def __init__(self) -> None:
        """Reads the configuration and starts loading the project's models in the background."""
        super().__init__()
        self.project = project_dir()
        self.config_error: Optional[str] = None
        try:
            self.config = load_fallback_config(self.project)
        except FallbackConfigError as error:
            # a broken config must not stop the action server: the action answers with utter_default and says why
            self.config_error = str(error)
            self.config = FallbackConfig()
            logger.error("action_gpt3_fallback is disabled: %s", error)
        self.loader = ModelLoader(self.project, self.config)
        if self.config_error is None:
            self.loader.start_background()

    def name(self) -> Text:
        """`action_gpt3_fallback`."""
        return ACTION_NAME

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]
    ) -> List[Dict[Text, Any]]:
        """Re-injects the re-classified message, or sends a generated answer, or the failure response."""
        try:
            return await self._run(dispatcher, tracker, domain)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the user always gets an answer, the action server never crashes
            logger.warning("action_gpt3_fallback failed (%s): %s", type(error).__name__, _one_line(error))
            return self._fail(dispatcher, domain, "error")

    async def _run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        if self.config_error is not None:
            return self._fail(dispatcher, domain, "config_error")
        latest = dict(tracker.latest_message or {})
        text = latest.get("text") or ""
        if not text.strip() or text.startswith("/"):
            return self._fail(dispatcher, domain, "no_text")
        loop = asyncio.get_running_loop()
        try:
            models = await asyncio.wait_for(loop.run_in_executor(None, self.loader.models), self.config.load_timeout)
        except asyncio.TimeoutError:
            logger.warning("action_gpt3_fallback: the models were not loaded within %g s", self.config.load_timeout)
            return self._fail(dispatcher, domain, "loading")

        if self.config.reclassify and models.intent is not None and should_reclassify(latest):
            events = await self._reclassify(text, latest, models, domain)
            if events:
                return events
        if self.config.generate and models.response is not None:
            return await self._generate(dispatcher, tracker, domain, models)
        return self._fail(dispatcher, domain, "no_model")

    async def _reclassify(
        self, text: str, latest: Dict[str, Any], models: ServingModels, domain: Dict[str, Any]
    ) -> Optional[List[Dict[str, Any]]]:
        from rasa_gpt3.inference import classify_async, extract_entities_async

        prediction = await classify_async(text, models.intent, models.caller)
        known = set(domain_intents(domain)) - set(self.config.ignore_intents)
        if not prediction.decided or prediction.intent not in known:
            return None
        if prediction.confidence < self.config.reclassify_threshold:
            return None
        model_entities: List[Dict[str, Any]] = []
        pipeline_asked = isinstance(latest.get("gpt3_entities"), dict) and latest["gpt3_entities"].get("asked")
        if models.entities is not None and not pipeline_asked:
            extraction = await extract_entities_async(text, models.entities, models.caller)
            model_entities = extraction.entities
        entities = merge_entities(latest.get("entities") or [], model_entities, models.synonyms)
        parse_data = reinjected_parse_data(latest, prediction, entities, domain)
        logger.info("action_gpt3_fallback: re-classified the message as %s (%.2f)", prediction.intent, prediction.confidence)
        return [
            UserUtteranceReverted(),
            ActionExecuted("action_listen"),
            UserUttered(text, parse_data=parse_data, input_channel=latest.get("input_channel")),
        ]

    async def _generate(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[str, Any], models: ServingModels
    ) -> List[Dict[str, Any]]:
        from rasa_gpt3.inference import CallFailed

        model, fmt = models.response
        turns = conversation_turns(tracker.applied_events(), self.config.history)
        try:
            completion = await models.caller.complete_async(model, response_body(turns, fmt, self.config))
        except CallFailed as failure:
            logger.warning("action_gpt3_fallback: response model %s failed (%s): %s", model, failure.kind, failure.reason)
            return self._fail(dispatcher, domain, failure.kind)
        try:
            answer = guard_answer(completion.text, fmt, dict(tracker.slots or {}), self.config)
        except Refused as refusal:
            logger.info("action_gpt3_fallback: answer of %s refused: %s", model, refusal)
            return self._fail(dispatcher, domain, "refused")
        dispatcher.utter_message(text=answer, rasa_gpt3={"source": "generated", "model": model, "cached": completion.cached})
        slot = self.config.answer_slot
        if slot and slot in (domain.get("slots") or {}):
            return [SlotSet(slot, answer)]
        return []

    def _fail(self, dispatcher: CollectingDispatcher, domain: Dict[str, Any], reason: str) -> List[Dict[str, Any]]:
        """Sends the failure response (or a fixed sentence when the domain lacks it)."""
        marker = {"source": "failure", "reason": reason}
        response = self.config.failure_response
        if response in (domain.get("responses") or {}):
            dispatcher.utter_message(response=response, rasa_gpt3=marker)
        else:
            dispatcher.utter_message(text=LAST_RESORT_TEXT, rasa_gpt3=marker)
        return []
