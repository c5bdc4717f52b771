"""What the GPT3 NLU components share: their common config, finding (or fine-tuning) the task's model during
`rasa train`, keeping it in the Rasa model archive, and the fingerprint addon.

Model choice in `train()`, in this order:
1. the explicit `model` in config.yml (with a warning when the registry knows it was trained on other data);
2. on the local backend: `ensure_fine_tuned` (it reuses the registry's model for this data when the backend
   still has it, and otherwise fine-tunes in seconds);
3. on a remote API: the registry's model trained on exactly this data (fingerprint), no network needed;
4. on a remote API with `fine_tune: true`: fine-tune now and wait, refused above `max_cost_usd`;
5. otherwise `rasa train` stops with one line saying what to run.
A registry model trained on other data is never used silently: it is named in the error, and setting it as
`model:` uses it anyway.

What is persisted: model id, backend, format, base model, prompt-format version, data fingerprint and, per task,
the label codec (intent) or the entity types, roles and groups (entities). Never the API key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rasa.shared.exceptions import InvalidConfigException, RasaException

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import check_epochs
from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.inference.calls import DEFAULT_MAX_MESSAGE_CHARS
from rasa_gpt3.settings import Settings

logger = logging.getLogger(__name__)

# bump when what the components persist or how they call the model changes, so `rasa train` retrains them
COMPONENT_VERSION = "1"

COMMON_DEFAULTS: Dict[str, Any] = {
    # an explicit fine-tuned model id; otherwise the project's registry (gpt3_models.yml)
    "model": None,
    # base model and record format for export / fine-tuning (default: gpt-4o-mini, chat)
    "base_model": None,
    "format": None,
    # the bot project: where gpt3_models.yml and .rasa_gpt3/ live (default: the working directory)
    "project": None,
    # fine-tune during `rasa train` on a remote API (the local backend always may), up to this estimated cost
    "fine_tune": False,
    "max_cost_usd": 1.0,
    "epochs": None,
    # serving budget: seconds per message (retry included), one quick retry, circuit breaker, LRU cache
    "timeout": 2.0,
    "retry": True,
    "breaker_failures": 3,
    "breaker_cooldown": 30.0,
    "cache_size": 1024,
    "extra_headers": {},
    # longer messages are never sent: fallback intent, outcome too_long (why 4,096: see DEFAULT_MAX_MESSAGE_CHARS)
    "max_message_chars": DEFAULT_MAX_MESSAGE_CHARS,
    # on the local backend, send one request when the model is loaded so the first user message is not the slow one
    "warm_up": True,
}

MODEL_FILE = "gpt3_task_model.json"


class GPT3ComponentError(RasaGPT3Error, RasaException):
    """A GPT3 component cannot be trained as configured; `rasa train` prints this one line and exits non-zero."""


@dataclass(frozen=True)
class TaskModel:
    """The fine-tuned model a component serves with, as stored in the Rasa model."""

    task: str
    model: str
    backend: str
    fmt: str
    base_model: Optional[str] = None
    prompt_format: str = prompts.PROMPT_FORMAT_VERSION
    fingerprint: Optional[str] = None
    # intent task: LabelCodec.to_json()
    codec: Optional[Dict[str, Any]] = None
    # entities task: what the training data knows
    entity_types: List[str] = field(default_factory=list)
    roles: List[str] = field(default_factory=list)
    groups: List[str] = field(default_factory=list)

    @classmethod
    def from_export(
        cls, exported: Any, model: str, backend: str, training_data: Any = None, *, base_known: bool = True
    ) -> TaskModel:
        """The model `model` on `backend` serving `exported` (an ExportedTask).

        For the entities task, `training_data` gives the entity types, roles and groups the model may name.
        `base_known=False`: `exported` was made for the default base model, a guess at a model neither the registry
        nor the config describes (one served by vLLM, say); the guess gives its labels, not a base model whose
        provider's shutdown date would apply to it.
        """
        known: Dict[str, Any] = {}
        if exported.task == "entities" and training_data is not None:
            known = {
                "entity_types": sorted(training_data.entities),
                "roles": sorted(training_data.entity_roles),
                "groups": sorted(training_data.entity_groups),
            }
        return cls(
            task=exported.task,
            model=model,
            backend=backend,
            fmt=exported.fmt,
            base_model=exported.base_model.name if base_known else None,
            fingerprint=exported.fingerprint,
            codec=exported.codec.to_json() if exported.codec is not None else None,
            **known,
        )

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> TaskModel:
        """Reads `to_json()` output back."""
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


def settings_from_config(config: Dict[str, Any]) -> Settings:
    """Settings for the component: the environment (API key, base URL, RASA_GPT3_*) and the `project` directory."""
    project = config.get("project")
    return Settings.from_env(Path(project) if project else None, timeout=float(config.get("timeout") or 2.0))


def fingerprint_addon(task: str, config: Dict[str, Any]) -> str:
    """What besides the training data decides the trained component: prompt format, backend, registry's model.

    So `rasa train` retrains the component after `rasa-gpt3 fine-tune` / `models use`, after switching between
    the local backend and an API, and after a prompt-format change.
    """
    from rasa_gpt3.model_lifecycle import schedule_state

    settings = settings_from_config(config)
    active = None
    entry = None
    try:
        from rasa_gpt3.registry import Registry

        entry = Registry.load(settings.registry_path).active(task, settings.backend_name)
        if entry is not None:
            active = [entry.model, entry.fingerprint]
    except RasaGPT3Error:
        active = "unreadable"  # train() reports the broken registry with its own message
    # entering the last 60 days or passing the shutdown date retrains the component, so `rasa train` says so
    # an explicit `model` without a known base (one served by vLLM, say) follows no provider's schedule
    base = (entry.base_model if entry is not None else None) or configured_base_model(config)
    if base is None and not config.get("model"):
        base = "gpt-4o-mini"  # what the registry's model will be fine-tuned from
    try:
        shutdown = schedule_state(base, settings.backend_name) if base else [None, None]
    except RasaGPT3Error:
        shutdown = "unreadable"  # train() reports the malformed RASA_GPT3_SHUTDOWN_DATES
    return json.dumps(
        {
            "component": COMPONENT_VERSION,
            "prompt_format": prompts.PROMPT_FORMAT_VERSION,
            "backend": settings.backend_name,
            "registry_active": active,
            "shutdown": shutdown,
        },
        sort_keys=True,
    )


def guessed_labels_warning(model: str, where: str) -> str:
    """The one line logged when an intent model's base model is unknown, so its labels are gpt-4o-mini's guess."""
    return (
        f"intent model {model} is not in the registry and {where} names no base_model: its answers are read with "
        "gpt-4o-mini's intent labels; if it was fine-tuned from another model (served by vLLM, say), set base_model "
        "to that model (hf:ORG/NAME or its directory)"
    )


def configured_base_model(config: Dict[str, Any]) -> Optional[str]:
    """The config's `base_model`, else the base of its `model` when that is a fine-tuned id (`ft:<base>:...`)."""
    if config.get("base_model"):
        return config["base_model"]
    model = config.get("model")
    if model and str(model).startswith("ft:"):
        from rasa_gpt3.data.base_models import resolve_base_model

        try:
            return resolve_base_model(str(model)).name
        except ValueError:
            return None
    return None


def obtain_task_model(task: str, training_data: Any, config: Dict[str, Any], component: str) -> TaskModel:
    """Exports `training_data` for `task` and finds or fine-tunes its model (see the module docstring).

    `component` (the component's class name) starts every error line. The registry is read once.
    """
    try:
        return _obtain(task, training_data, config, component)
    except GPT3ComponentError:
        raise
    except RasaGPT3Error as error:
        raise GPT3ComponentError(f"{component}: {error}") from None


def _obtain(task: str, training_data: Any, config: Dict[str, Any], name: str) -> TaskModel:
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.registry import Registry

    settings = settings_from_config(config)
    backend = settings.backend_name
    explicit = config.get("model")
    registry = Registry.load(settings.registry_path)
    # an explicit model's base: the config's, else the registry's entry for it, else an `ft:` id's own; none known
    # (a model served by vLLM, say): the default base model's labels are a guess, see TaskModel.from_export
    base_model = configured_base_model(config)
    if base_model is None and explicit:
        known = registry.find(task, backend, model=str(explicit))
        base_model = known.base_model if known is not None else None
    exported = export_task(task, training_data, fmt=config.get("format"), base_model=base_model)
    base_known = not explicit or base_model is not None
    if not base_known and task == "intent":
        logger.warning("%s: %s", name, guessed_labels_warning(str(explicit), "the component's config"))

    if explicit:
        resolved = registry.resolve(task, backend, exported.fingerprint, explicit=str(explicit))
        if resolved.stale:
            logger.warning("%s: %s", name, resolved.warning(task))
        model = str(explicit)
    elif settings.uses_local_backend:
        outcome = _fine_tune(settings, exported, config, registry)
        verb = "reusing" if outcome.reused else "fine-tuned"
        logger.info("%s: %s %s on the local backend", name, verb, outcome.model)
        model = outcome.model
    else:
        resolved = registry.resolve(task, backend, exported.fingerprint)
        entry = None
        if resolved.model and not resolved.stale and _same_base(resolved.entry, exported):
            entry = resolved.entry
        if entry is None:
            entry = registry.find(task, backend, exported.fingerprint)
            if entry is not None and not _same_base(entry, exported):
                entry = None
        if entry is not None:
            model = entry.model
        elif config.get("fine_tune"):
            model = _fine_tune_now(task, exported, config, settings, registry, name)
        else:
            stale = (
                f" (the registry's {task} model {resolved.model} was trained on other data: {resolved.reason})"
                if resolved.model
                else ""
            )
            raise GPT3ComponentError(
                f"{name}: no fine-tuned {task} model on {backend} for the current training data{stale}; "
                f"run `rasa-gpt3 fine-tune --task {task}`, or set `fine_tune: true` (with `max_cost_usd`) on the "
                f"component to fine-tune during `rasa train`, or set `model:` to use a model anyway"
            )
    if not model:
        raise GPT3ComponentError(f"{name}: the fine-tune finished without a model id; see `rasa-gpt3 list`")
    return TaskModel.from_export(exported, model, backend, training_data, base_known=base_known)


def _fine_tune_now(
    task: str, exported: Any, config: Dict[str, Any], settings: Settings, registry: Any, name: str
) -> Optional[str]:
    """Fine-tunes on a remote API during `rasa train`, refused above `max_cost_usd` before anything is uploaded."""
    from rasa_gpt3.finetune import estimate_cost

    max_cost = float(config.get("max_cost_usd") or 0.0)
    estimate = estimate_cost(exported.train, exported.base_model, config.get("epochs"))
    if estimate.usd > max_cost:
        raise GPT3ComponentError(
            f"{name}: fine-tuning during `rasa train` would cost {estimate.describe()}, above "
            f"max_cost_usd ${max_cost:.4f}; nothing was uploaded. Raise max_cost_usd, or run "
            f"`rasa-gpt3 fine-tune --task {task} --max-cost USD` yourself"
        )
    return _fine_tune(settings, exported, config, registry, max_cost).model


def _fine_tune(
    settings: Settings, exported: Any, config: Dict[str, Any], registry: Any, max_cost: Optional[float] = None
) -> Any:
    """`ensure_fine_tuned` as `rasa train` runs it: the component's epochs, quiet, waiting for the model."""
    from rasa_gpt3.finetune import ensure_fine_tuned

    return ensure_fine_tuned(
        settings,
        exported,
        project_name=_project_name(settings),
        epochs=config.get("epochs"),
        max_cost=max_cost,
        wait=True,
        registry=registry,
    )


def _same_base(entry: Any, exported: Any) -> bool:
    return entry is not None and (entry.base_model is None or entry.base_model == exported.base_model.name)


def _project_name(settings: Settings) -> str:
    return Path(settings.project_dir).resolve().name or "rasa-bot"


def persist_task_model(task_model: TaskModel, model_storage: Any, resource: Any) -> None:
    """Writes the task model into the component's directory of the Rasa model."""
    from rasa_gpt3.atomic_files import write_atomic

    with model_storage.write_to(resource) as directory:
        write_atomic(Path(directory) / MODEL_FILE, json.dumps(task_model.to_json(), indent=2, sort_keys=True))


def load_task_model(model_storage: Any, resource: Any, component: str) -> Optional[TaskModel]:
    """Reads the task model back; None (with a warning) when the component was not trained into this model."""
    try:
        with model_storage.read_from(resource) as directory:
            data = json.loads((Path(directory) / MODEL_FILE).read_text(encoding="utf-8"))
    except (ValueError, OSError):
        logger.warning("%s has no trained model in this Rasa model; it will predict nothing until retrained", component)
        return None
    task_model = TaskModel.from_json(data)
    if task_model.prompt_format != prompts.PROMPT_FORMAT_VERSION:
        logger.warning(
            "%s: model %s was trained with prompt format %s, this rasa_gpt3 uses %s; run `rasa train`",
            component,
            task_model.model,
            task_model.prompt_format,
            prompts.PROMPT_FORMAT_VERSION,
        )
    return task_model


def validate_common_config(component: str, config: Dict[str, Any]) -> None:
    """Raises InvalidConfigException (one line) for a bad value of a common config key."""
    timeout = config.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidConfigException(f"{component}: timeout must be a positive number of seconds, not {timeout!r}")
    if config.get("format") not in (None, *prompts.FORMATS):
        raise InvalidConfigException(f"{component}: format must be chat or completion, not {config.get('format')!r}")
    if not isinstance(config.get("extra_headers") or {}, dict):
        raise InvalidConfigException(f"{component}: extra_headers must be a mapping of header names to values")
    limit = config.get("max_message_chars")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidConfigException(
            f"{component}: max_message_chars must be a whole number of characters, at least 1, not {limit!r}"
        )
    try:
        check_epochs(config.get("epochs"))
    except RasaGPT3Error as error:
        raise InvalidConfigException(f"{component}: {error}") from None
