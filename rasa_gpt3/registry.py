"""The project's model registry (`gpt3_models.yml`): which fine-tuned model serves each task, per backend.

The file lives in the bot project and is meant to be committed, so a team shares its models through git. Its
layout is fixed and ordered (tasks in TASKS order, backends sorted, fields in a fixed order, history newest first),
so saving an unchanged registry rewrites the same bytes and a change shows up as a small, readable diff:

    version: 1
    tasks:
      intent:
        api.openai.com:
          active:
            model: ft:gpt-4o-mini-2024-07-18:acme:mybot:AbC123
            base_model: gpt-4o-mini-2024-07-18
            ...
          history:
          - model: ft:gpt-4o-mini-2024-07-18:acme:mybot:XyZ789
            ...

Backends are kept apart ("local", "api.openai.com", an Azure host...) because a model id only means something on
the backend that trained it.

The verbs at the end (`register_job`, `use_model`, `prune_registry`) are what `rasa-gpt3` and the fine-tune
lifecycle do to the file. Each operation reads the file once, and once more under the lock when it writes;
`Registry.resolve` answers from a registry already loaded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import yaml
from filelock import FileLock

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.data.base_models import is_base_model_id, resolve_base_model
from rasa_gpt3.errors import DataError, ProjectError
from rasa_gpt3.fine_tune_jobs import (
    META_FINGERPRINT,
    META_FORMAT,
    META_KEY,
    META_PROMPT_FORMAT,
    META_TASK,
    job_epochs,
    job_metrics,
    job_of_model,
    model_exists,
)
from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION, TASKS
from rasa_gpt3.settings import Settings

REGISTRY_VERSION = 1

_HEADER = (
    "# rasa_gpt3 model registry: the fine-tuned model each task uses, per backend. Commit this file to share\n"
    "# models with your team. Written by `rasa-gpt3 fine-tune`; change the active model with\n"
    "# `rasa-gpt3 models use MODEL --task TASK`, tidy history with `rasa-gpt3 models prune`.\n"
)


@dataclass(frozen=True)
class RegistryEntry:
    """One fine-tuned model: where it came from (base, job, data fingerprint, prompt format) and how it scored."""

    model: str
    # where the model lives ("local", "api.openai.com", ...); the YAML keeps it as the section name, not a field
    backend: str = "local"
    base_model: Optional[str] = None
    format: Optional[str] = None
    job: Optional[str] = None
    fingerprint: Optional[str] = None
    prompt_format: Optional[str] = None
    created: Optional[str] = None
    epochs: Optional[int] = None
    # sha256 over fingerprint, task, base model and hyperparameters: the fine-tune's idempotency key
    key: Optional[str] = None
    trained_tokens: Optional[int] = None
    metrics: Dict[str, float] = field(default_factory=dict)

    def to_yaml(self) -> Dict[str, Any]:
        """The entry as an ordered mapping, leaving out empty fields."""
        data: Dict[str, Any] = {}
        for item in fields(self):
            if item.name == "backend":
                continue
            value = getattr(self, item.name)
            if value is None or value == {}:
                continue
            data[item.name] = dict(sorted(value.items())) if isinstance(value, dict) else value
        return data

    @classmethod
    def from_yaml(cls, data: Any, backend: str, where: str) -> RegistryEntry:
        """An entry of `backend` from its YAML mapping; raises ProjectError naming `where` when it is malformed."""
        if not isinstance(data, dict) or not data.get("model"):
            raise ProjectError(f"{where}: each model entry needs at least `model: <id>`")
        known = {item.name for item in fields(cls)} - {"backend"}
        values = {key: value for key, value in data.items() if key in known}
        values["backend"] = backend
        if isinstance(values.get("created"), (_dt.datetime, _dt.date)):
            values["created"] = values["created"].isoformat()
        for key in ("model", "base_model", "format", "job", "fingerprint", "prompt_format", "created", "key"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        if not isinstance(values.get("metrics") or {}, dict):
            raise ProjectError(f"{where}: `metrics` of {values['model']} must be a mapping")
        values["metrics"] = dict(values.get("metrics") or {})
        return cls(**values)


@dataclass(frozen=True)
class ResolvedModel:
    """The model a task should use, the registry entry behind it (if known), and whether the data moved on."""

    model: Optional[str]
    entry: Optional[RegistryEntry]
    stale: bool
    reason: str = ""

    def warning(self, task: str) -> str:
        """The one warning line callers log when `stale` is true."""
        return (
            f"the {task} model {self.model} is stale: {self.reason}; "
            f"run `rasa-gpt3 fine-tune --task {task}` to train one on the current data"
        )


def staleness(entry: RegistryEntry, fingerprint: Optional[str]) -> str:
    """Why `entry` no longer matches the current data ('' when it does)."""
    if entry.prompt_format and entry.prompt_format != PROMPT_FORMAT_VERSION:
        return f"trained with prompt format {entry.prompt_format}, this rasa_gpt3 uses {PROMPT_FORMAT_VERSION}"
    if fingerprint and entry.fingerprint and entry.fingerprint != fingerprint:
        return (
            f"the bot's data changed since it was trained (fingerprint {entry.fingerprint[:12]} -> {fingerprint[:12]})"
        )
    return ""


@dataclass
class TaskModels:
    """The models of one task on one backend: the active one and the earlier ones, newest first."""

    active: Optional[RegistryEntry] = None
    history: List[RegistryEntry] = field(default_factory=list)

    def all(self) -> List[RegistryEntry]:
        """The active entry (if any) followed by the history."""
        return ([self.active] if self.active else []) + list(self.history)


class Registry:
    """The registry file of one project, loaded into memory; `save()` writes it back atomically."""

    def __init__(self, path: Path, tasks: Optional[Dict[str, Dict[str, TaskModels]]] = None) -> None:
        self.path = Path(path)
        self._tasks: Dict[str, Dict[str, TaskModels]] = tasks or {}

    # ------------------------------------------------------------------ load / save

    @classmethod
    def load(cls, path: Path) -> Registry:
        """The registry at `path`; an empty one when the file does not exist. Raises ProjectError when malformed."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ProjectError(f"{path}{line}: not valid YAML; fix it or restore it from git") from None
        if not isinstance(data, dict) or not isinstance(data.get("tasks") or {}, dict):
            raise ProjectError(f"{path}: expected a mapping with `tasks:`; fix it or restore it from git")
        version = data.get("version", REGISTRY_VERSION)
        if version != REGISTRY_VERSION:
            raise ProjectError(f"{path}: registry version {version} is not supported (this rasa_gpt3 reads 1)")
        tasks: Dict[str, Dict[str, TaskModels]] = {}
        for task, backends in (data.get("tasks") or {}).items():
            if not isinstance(backends, dict):
                raise ProjectError(f"{path}: task `{task}` must map backends to models")
            for backend, models in backends.items():
                where = f"{path} ({task} / {backend})"
                if not isinstance(models, dict):
                    raise ProjectError(f"{where}: expected `active:` and `history:`")
                active = models.get("active")
                history = models.get("history") or []
                if not isinstance(history, list):
                    raise ProjectError(f"{where}: `history` must be a list")
                tasks.setdefault(str(task), {})[str(backend)] = TaskModels(
                    active=RegistryEntry.from_yaml(active, str(backend), where) if active else None,
                    history=[RegistryEntry.from_yaml(item, str(backend), where) for item in history],
                )
        return cls(path, tasks)

    def to_yaml(self) -> str:
        """The registry file's text: header comment, then tasks and backends in a stable order."""
        tasks: Dict[str, Any] = {}
        for task in self._task_order():
            backends: Dict[str, Any] = {}
            for backend in sorted(self._tasks[task]):
                models = self._tasks[task][backend]
                if not models.active and not models.history:
                    continue
                section: Dict[str, Any] = {}
                if models.active:
                    section["active"] = models.active.to_yaml()
                if models.history:
                    section["history"] = [entry.to_yaml() for entry in models.history]
                backends[backend] = section
            if backends:
                tasks[task] = backends
        body = yaml.safe_dump(
            {"version": REGISTRY_VERSION, "tasks": tasks},
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=120,
        )
        return _HEADER + body

    def save(self) -> Path:
        """Writes the registry atomically (readers see the old file or the new one)."""
        return write_atomic(self.path, self.to_yaml())

    @classmethod
    @contextlib.contextmanager
    def editing(cls, path: Path) -> Iterator[Registry]:
        """Loads the registry under a lock and saves it on exit, so concurrent writers (two `rasa train`s) lose
        nothing."""
        path = Path(path)
        # the lock lives beside the project's other untracked state, not next to the committed file
        lock_dir = path.parent / ".rasa_gpt3"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{path.name}.lock"), timeout=60):
            registry = cls.load(path)
            yield registry
            registry.save()

    def _task_order(self) -> List[str]:
        known = [task for task in TASKS if task in self._tasks]
        return known + sorted(task for task in self._tasks if task not in TASKS)

    # ------------------------------------------------------------------ queries

    def active(self, task: str, backend: str) -> Optional[RegistryEntry]:
        """The model that serves `task` on `backend`, or None."""
        models = self._tasks.get(task, {}).get(backend)
        return models.active if models else None

    def history(self, task: str, backend: str) -> List[RegistryEntry]:
        """Earlier models of `task` on `backend`, newest first."""
        models = self._tasks.get(task, {}).get(backend)
        return list(models.history) if models else []

    def find(
        self,
        task: str,
        backend: str,
        fingerprint: Optional[str] = None,
        *,
        key: Optional[str] = None,
        model: Optional[str] = None,
    ) -> Optional[RegistryEntry]:
        """The newest entry of `task` on `backend` matching every criterion given (the active one first)."""
        models = self._tasks.get(task, {}).get(backend)
        for entry in models.all() if models else []:
            if fingerprint is not None and entry.fingerprint != fingerprint:
                continue
            if key is not None and entry.key != key:
                continue
            if model is not None and entry.model != model:
                continue
            return entry
        return None

    def resolve(
        self, task: str, backend: str, fingerprint: Optional[str], explicit: Optional[str] = None
    ) -> ResolvedModel:
        """The model `task` should use: `explicit` when given, else the active one on `backend`.

        `stale` is true when the registry entry was trained on other data (fingerprint) or another prompt format;
        callers then log `resolved.warning(task)` once. `model` is None when the registry has no model for the task.
        """
        if explicit:
            entry = self.find(task, backend, model=explicit)
            reason = staleness(entry, fingerprint) if entry is not None else ""
            return ResolvedModel(model=explicit, entry=entry, stale=bool(reason), reason=reason)
        entry = self.active(task, backend)
        if entry is None:
            return ResolvedModel(model=None, entry=None, stale=False)
        reason = staleness(entry, fingerprint)
        return ResolvedModel(model=entry.model, entry=entry, stale=bool(reason), reason=reason)

    def locate(self, model: str) -> List[Tuple[str, str, RegistryEntry]]:
        """Every (task, backend, entry) that records `model`."""
        return [(task, backend, entry) for task, backend, entry, _ in self.entries() if entry.model == model]

    def entries(self) -> Iterator[Tuple[str, str, RegistryEntry, bool]]:
        """Every entry as (task, backend, entry, is_active), in file order."""
        for task in self._task_order():
            for backend in sorted(self._tasks[task]):
                models = self._tasks[task][backend]
                if models.active:
                    yield task, backend, models.active, True
                for entry in models.history:
                    yield task, backend, entry, False

    # ------------------------------------------------------------------ changes

    def record(self, task: str, entry: RegistryEntry, activate: bool = True) -> RegistryEntry:
        """Adds `entry` for `task` on `entry.backend`; with `activate` it becomes active, the previous one history.

        Recording a model already present replaces its old entry, so re-recording never duplicates it.
        """
        models = self._tasks.setdefault(task, {}).setdefault(entry.backend, TaskModels())
        previous = models.active
        models.history = [item for item in models.history if item.model != entry.model]
        if activate:
            if previous and previous.model != entry.model:
                models.history.insert(0, previous)
            models.active = entry
        elif previous and previous.model == entry.model:
            models.active = entry
        else:
            models.history.insert(0, entry)
            models.history.sort(key=lambda item: item.created or "", reverse=True)
        return entry

    def use(self, task: str, backend: str, model: str, entry: Optional[RegistryEntry] = None) -> RegistryEntry:
        """Makes `model` the active one for `task` on `backend` (from history, or `entry` when it is new)."""
        known = self.find(task, backend, model=model)
        chosen = known or entry or RegistryEntry(model=model, backend=backend)
        return self.record(task, replace(chosen, backend=backend), activate=True)

    def prune(
        self, keep: int, backend: Optional[str] = None, drop: Optional[set] = None
    ) -> List[Tuple[str, str, RegistryEntry]]:
        """Removes history entries listed in `drop` and all but the `keep` newest; active models always stay.

        Only `backend`'s entries are touched when it is given. Returns what was removed.
        """
        removed: List[Tuple[str, str, RegistryEntry]] = []
        drop = drop or set()
        for task, backends in self._tasks.items():
            for name, models in backends.items():
                if backend is not None and name != backend:
                    continue
                kept: List[RegistryEntry] = []
                for entry in models.history:
                    if entry.model in drop or len(kept) >= keep:
                        removed.append((task, name, entry))
                    else:
                        kept.append(entry)
                models.history = kept
        return removed


def now_iso() -> str:
    """The current UTC time as the registry writes it (seconds precision, `Z`)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def timestamp_iso(seconds: Optional[int]) -> str:
    """A Unix timestamp (as the API reports) in the registry's format; now when it is missing."""
    if not seconds:
        return now_iso()
    moment = _dt.datetime.fromtimestamp(int(seconds), _dt.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def with_metrics(entry: RegistryEntry, metrics: Dict[str, float]) -> RegistryEntry:
    """A copy of `entry` carrying `metrics` (rounded to 4 decimals, so re-saving is stable and readable)."""
    return replace(entry, metrics={name: round(float(value), 4) for name, value in metrics.items()})


# ---------------------------------------------------------------------------------------------- verbs


def entry_from_job(job: Any, backend: str, metrics: Optional[Dict[str, float]] = None) -> RegistryEntry:
    """The registry entry for a succeeded job, from the job itself and the metadata rasa_gpt3 stored with it."""
    meta = dict(getattr(job, "metadata", None) or {})
    base_model = job.model
    fmt = meta.get(META_FORMAT)
    if not fmt:
        try:
            fmt = resolve_base_model(base_model).format
        except ValueError:
            fmt = None
    entry = RegistryEntry(
        model=job.fine_tuned_model,
        backend=backend,
        base_model=base_model,
        format=fmt,
        job=job.id,
        fingerprint=meta.get(META_FINGERPRINT),
        prompt_format=meta.get(META_PROMPT_FORMAT),
        created=timestamp_iso(getattr(job, "finished_at", None) or job.created_at),
        epochs=job_epochs(job),
        key=meta.get(META_KEY),
        trained_tokens=getattr(job, "trained_tokens", None),
    )
    return with_metrics(entry, metrics or {})


def register_job(
    settings: Settings, job: Any, metrics: Dict[str, float], activate: bool = True
) -> Optional[RegistryEntry]:
    """Records a succeeded job's model in the project's registry; None when the job was not made by rasa_gpt3."""
    meta = getattr(job, "metadata", None) or {}
    task = meta.get(META_TASK)
    if job.status != "succeeded" or not job.fine_tuned_model or not task or META_KEY not in meta:
        return None
    entry = entry_from_job(job, settings.backend_name, metrics)
    with Registry.editing(settings.registry_path) as registry:
        known = registry.find(task, entry.backend, model=entry.model)
        if known is not None and not entry.metrics:
            entry = replace(entry, metrics=known.metrics)
        registry.record(task, entry, activate=activate)
    return entry


def use_model(settings: Settings, model: str, task: str) -> RegistryEntry:
    """Makes `model` the active one for `task` on this backend (`rasa-gpt3 models use`).

    A model the registry does not know yet is checked on the backend and described from the job that made it. A base
    model's id is refused: the components, the action and the local backend need a model fine-tuned for the task.
    """
    if is_base_model_id(model):
        raise DataError(
            f"{model} is a base model, not a fine-tuned one; `models use` takes the id of a model fine-tuned for the "
            f"{task} task (ft:..., see `rasa-gpt3 list`), or make one with `rasa-gpt3 fine-tune --task {task}`"
        )
    registry = Registry.load(settings.registry_path)
    backend = settings.backend_name
    known = registry.find(task, backend, model=model)
    if known is None:
        for other_task, other_backend, _ in registry.locate(model):
            if other_backend == backend and other_task != task:
                raise DataError(f"{model} was trained for the {other_task} task, not {task}")
        known = _describe_remote_model(settings, model, task)
    with Registry.editing(settings.registry_path) as registry:
        return registry.use(task, backend, model, known)


def _describe_remote_model(settings: Settings, model: str, task: str) -> RegistryEntry:
    # the SDK is imported only by the verbs that ask the backend: it takes seconds to import
    from rasa_gpt3.client import api_errors, make_client

    client = make_client(settings)
    backend = settings.backend_name
    with api_errors(f"looking up {model} on {backend}"):
        if not model_exists(client, model):
            raise DataError(f"{backend} has no model '{model}'; see `rasa-gpt3 models list` and `rasa-gpt3 list`")
        job = job_of_model(client, model)
        if job is not None:
            made_for = (job.metadata or {}).get(META_TASK)
            if made_for and made_for != task:
                raise DataError(f"{model} was trained for the {made_for} task, not {task}")
            return entry_from_job(job, backend, job_metrics(client, job))
    base = None
    try:
        base = resolve_base_model(model).name
    except ValueError:
        pass
    return RegistryEntry(model=model, backend=backend, base_model=base, created=timestamp_iso(None))


def prune_registry(settings: Settings, keep: int) -> List[Tuple[str, str, RegistryEntry]]:
    """Drops history entries this backend no longer serves, and all but the `keep` newest per task and backend.

    Active models always stay, and models are never deleted on the backend. Returns what was removed.
    """
    registry = Registry.load(settings.registry_path)
    backend = settings.backend_name
    history = [entry for task, name, entry, active in registry.entries() if name == backend and not active]
    gone: set = set()
    if history:
        from rasa_gpt3.client import api_errors, make_client

        client = make_client(settings)
        with api_errors(f"checking models on {backend}"):
            gone = {entry.model for entry in history if not model_exists(client, entry.model)}
    with Registry.editing(settings.registry_path) as registry:
        return registry.prune(keep, drop=gone)


def export_local_model(settings: Settings, model: str, out_dir: Union[str, Path]) -> Any:
    """Writes the LoRA adapter of the local backend's model `model` into `out_dir` in PEFT format (see
    rasa_gpt3.local.lora.engine.export_adapter); DataError in one line for a model it does not have."""
    from rasa_gpt3.local.lora.engine import export_adapter
    from rasa_gpt3.local.store import NotFound, Store

    if not settings.uses_local_backend:
        raise DataError(
            f"models export writes out models of the local backend, not of {settings.backend_name} "
            "(set RASA_GPT3_LOCAL=1 to use the local backend)"
        )
    store = Store(settings.local_state_dir)
    try:
        meta, arrays = store.get_model(model), store.model_arrays(model)
    except NotFound:
        raise DataError(
            f"the local backend ({settings.local_state_dir}) has no model '{model}'; see `rasa-gpt3 models list`"
        ) from None
    return export_adapter(meta, arrays, Path(out_dir))
