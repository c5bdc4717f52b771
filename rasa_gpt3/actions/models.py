"""The models the fallback action serves with: chosen from its config, the environment or the project's registry.

Model ids: the config's `intent_model` / `entities_model` / `response_model`, else `RASA_GPT3_INTENT_MODEL` /
`RASA_GPT3_ENTITIES_MODEL` / `RASA_GPT3_RESPONSE_MODEL`, else the registry's active model for the backend
(`gpt3_models.yml`, re-read when it changes). A model within 60 days of its shutdown date gets one warning line at
start-up; a model past it one error line, and the action does without it (`rasa_gpt3.model_lifecycle`). The
intent model's label codec and the known entity types come from the bot's own training data, exported as for
fine-tuning for the model's base model: the registry's, else the config's `base_model` (a model the registry does
not know, one served by vLLM say, needs it when its base model is not gpt-4o-mini), else that of an `ft:` id.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.actions.fallback_config import FallbackConfig
from rasa_gpt3.errors import first_line
from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy, caller_for
from rasa_gpt3.inference.entities import EntityModel
from rasa_gpt3.inference.intents import IntentModel
from rasa_gpt3.nlu.task_model import TaskModel, configured_base_model, guessed_labels_warning
from rasa_gpt3.settings import Settings

logger = logging.getLogger(__name__)

ENV_MODELS = {
    "intent": "RASA_GPT3_INTENT_MODEL",
    "entities": "RASA_GPT3_ENTITIES_MODEL",
    "response": "RASA_GPT3_RESPONSE_MODEL",
}


class ModelChoice(NamedTuple):
    """A model chosen for one task, with the format, base model and data fingerprint the registry knows of it."""

    model: str
    fmt: str
    base_model: Optional[str]
    fingerprint: Optional[str]
    registered: bool = True  # False: named in the config or environment, unknown to the registry


@dataclass(frozen=True)
class ServingModels:
    """What the action serves with: the caller and whichever of the three models the project has."""

    caller: BoundedCaller
    intent: Optional[IntentModel] = None
    entities: Optional[EntityModel] = None
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
        # models whose shutdown date has passed (the action does without them)
        self._shut_down: set = set()

    def start_background(self) -> None:
        """Starts loading in a daemon thread (errors are logged and retried on the first request)."""
        threading.Thread(target=self._load_quietly, name="rasa-gpt3-fallback-load", daemon=True).start()

    def _load_quietly(self) -> None:
        try:
            self.models()
        except Exception as error:  # the first request tries again and reports it
            logger.warning("action_gpt3_fallback: loading the models failed: %s", first_line(error)[:200])

    def _settings(self) -> Settings:
        return Settings.from_env(self.project)

    def _registry_stamp(self, settings: Settings) -> Any:
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

    def _resolve(self, settings: Settings, stamp: Any) -> ServingModels:
        from rasa_gpt3.registry import Registry

        config = self.config
        policy = CallPolicy(
            timeout=config.timeout, breaker_failures=config.breaker_failures, breaker_cooldown=config.breaker_cooldown
        )
        caller = caller_for(settings, policy)
        registry = Registry.load(settings.registry_path)
        backend = settings.backend_name
        intent = self._task_model("intent", registry, backend) if config.reclassify else None
        entities = None
        if config.reclassify and config.extract_entities:
            entities = self._task_model("entities", registry, backend)
        if intent is not None and not self._in_service(settings, "intent", intent.model, intent.base_model):
            intent = None
        if entities is not None and not self._in_service(settings, "entities", entities.model, entities.base_model):
            entities = None
        limit = config.max_message_chars
        intent_model = IntentModel.from_task_model(intent, max_message_chars=limit) if intent is not None else None
        entity_model = EntityModel.from_task_model(entities, max_message_chars=limit) if entities is not None else None
        response_choice = self._choose("response", registry, backend) if config.generate else None
        if response_choice is not None and not self._in_service(
            settings, "response", response_choice.model, response_choice.base_model
        ):
            response_choice = None
        response = (response_choice.model, response_choice.fmt) if response_choice is not None else None
        synonyms: Dict[str, str] = {}
        if intent is not None or entities is not None:
            synonyms = {str(text).lower(): str(value) for text, value in self._project().nlu.entity_synonyms.items()}
        if intent_model is None and response is None and (config.reclassify or config.generate) and not self._shut_down:
            self._warn_once(
                "no-models",
                "action_gpt3_fallback: the registry (%s) has no intent or response model for %s; the action will "
                "send %s (run `rasa-gpt3 fine-tune --task intent` / `--task response`)",
                settings.registry_path,
                backend,
                config.failure_response,
            )
        self._prepare_sdk(settings)
        if settings.uses_local_backend:
            self._warm_up(caller, intent_model, response)
        return ServingModels(caller, intent_model, entity_model, response, synonyms, stamp)

    def _choose(self, task: str, registry: Any, backend: str) -> Optional[ModelChoice]:
        """The model for `task`: the config's, else the environment's, else the registry's active one; or None."""
        explicit = getattr(self.config, f"{task}_model") or os.environ.get(ENV_MODELS[task]) or None
        entry = registry.find(task, backend, model=explicit) if explicit else registry.active(task, backend)
        if entry is None and not explicit:
            return None
        if entry is None:
            from rasa_gpt3.data.export import resolve_format_and_model

            # a model the registry does not know (one served by vLLM, say): its base model's tokenizer decides the
            # intent labels and its format the records, as for the NLU components' `model` and `base_model`
            base_model = configured_base_model({"base_model": self.config.base_model, "model": explicit})
            fmt, _ = resolve_format_and_model(self.config.format, base_model)
            if base_model is None and task == "intent":
                warning = guessed_labels_warning(str(explicit), "gpt3_fallback.yml")
                self._warn_once(f"guessed-labels-{explicit}", "action_gpt3_fallback: %s", warning)
            return ModelChoice(str(explicit), fmt, base_model, None, registered=False)
        fmt = entry.format or self.config.format or prompts.FORMATS[0]
        return ModelChoice(entry.model, fmt, entry.base_model, entry.fingerprint)

    def _task_model(self, task: str, registry: Any, backend: str) -> Optional[TaskModel]:
        """The chosen model for `task` with what serving it needs from the bot's data (warns when that moved on)."""
        choice = self._choose(task, registry, backend)
        if choice is None:
            return None
        exported = self._export(task, choice.fmt, choice.base_model)
        if choice.fingerprint and choice.fingerprint != exported.fingerprint:
            self._warn_once(
                f"stale-{task}-{choice.model}",
                "action_gpt3_fallback: the %s model %s was trained on other data than the bot's current data; "
                "run `rasa-gpt3 fine-tune --task %s`",
                task,
                choice.model,
                task,
            )
        base_known = choice.registered or bool(choice.base_model)
        return TaskModel.from_export(exported, choice.model, backend, self._project().nlu, base_known=base_known)

    @staticmethod
    def _prepare_sdk(settings: Settings) -> None:
        # the SDK imports its resource modules on first use; done here, not inside the first request's time budget
        from rasa_gpt3.client import make_async_client

        client = make_async_client(settings, max_retries=0)
        _ = (client.chat.completions.with_raw_response, client.completions.with_raw_response)

    def _warm_up(
        self, caller: BoundedCaller, intent_model: Optional[IntentModel], response: Optional[Tuple[str, str]]
    ) -> None:
        # the embedded backend loads a model on its first request; do it now rather than during a conversation
        if intent_model is not None:
            caller.warm_up(intent_model.model, intent_model.request_body("hello"))
        if response is not None:
            body = prompts.response_request([prompts.Turn("user", "hello")], response[1])
            caller.warm_up(response[0], dict(body, max_tokens=self.config.max_tokens))

    def _in_service(self, settings: Settings, task: str, model: str, base_model: Optional[str]) -> bool:
        """False once `model` has shut down (one error line); one warning line within 60 days of it."""
        from rasa_gpt3.errors import RasaGPT3Error
        from rasa_gpt3.model_lifecycle import lifecycle_on

        try:
            lifecycle = lifecycle_on(settings, model, base_model)
        except RasaGPT3Error as error:
            self._warn_once("shutdown-dates", "action_gpt3_fallback: %s", error)
            return True
        if lifecycle.retired:
            self._shut_down.add(model)
            without = "the action does without it" + (
                f" (it answers with {self.config.failure_response} when nothing else helps)"
                if task != "entities"
                else ""
            )
            self._warn_once(
                f"shut-down-{model}", "action_gpt3_fallback: %s", lifecycle.error(task, without), level=logging.ERROR
            )
        elif lifecycle.due_soon:
            self._warn_once(f"shuts-down-{model}", "action_gpt3_fallback: %s", lifecycle.warning(task))
        return not lifecycle.retired

    def _warn_once(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, message, *args)
