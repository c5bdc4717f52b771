"""The models `rasa-gpt3 evaluate --models` compares: which model each reference means, on which backend, with which
label codec, and which of them is the model in use.

A reference is a fine-tuned model id, or `active` (the registry's active intent model), either optionally followed by
`@BACKEND` (`local`, `api.openai.com`, the host of OPENAI_BASE_URL). Without `@` a model id belongs to the backend
whose registry section records it (the current backend when several or none do). The model in use is the registry's
active intent model on the current backend; it is always compared, and every verdict is against it.

The label codec of a model that already exists: the one exporting this project's NLU data gives for the model's base
model and format (what the NLU component and the fallback action use). It is right when the model was trained on
data with the same intents. That is checked, in this order: the registry records the model with the fingerprint of
this project's current export (same data); or the backend lets us read the job's training file (the local backend
does; OpenAI does not serve fine-tune training files), and each of its records with a text of this project gives the
label this codec gives that text's intent. A model whose training file disagrees is refused with one line; a model
neither check can cover is compared, and the report says its labels are unverified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.errors import DataError
from rasa_gpt3.settings import LOCAL_BACKEND

ACTIVE = "active"
TASK = "intent"


@dataclass
class Candidate:
    """One model to compare: what the user wrote, the model, its backend and settings, and how it is read."""

    name: str  # A, B, C... in the tables
    reference: str
    model: str
    backend: str
    settings: Any  # rasa_gpt3.settings.Settings for the model's backend
    in_use: bool = False
    base_model: Any = None  # rasa_gpt3.data.base_models.BaseModel
    fmt: str = "chat"
    entry: Any = None  # the registry's RegistryEntry, when it records the model
    exported: Any = None  # this project's intent export for the model's base model and format (the codec)
    labels: str = "unverified"  # how the codec was checked

    def describe(self) -> str:
        """`ft:... on local (in use)`."""
        return f"{self.model} on {self.backend}" + (" (in use)" if self.in_use else "")


def parse_model_references(text: str) -> List[str]:
    """The references of `--models` ("A,B,C"), in order, without repeats; raises DataError when there are none."""
    references: List[str] = []
    for part in str(text or "").split(","):
        part = part.strip()
        if part and part not in references:
            references.append(part)
    if not references:
        raise DataError("--models needs model ids (or `active`) separated by commas, e.g. --models ft:...,ft:...")
    return references


def settings_for_backend(settings: Any, backend: str) -> Any:
    """Settings that reach `backend` from here; raises DataError when this environment cannot reach it."""
    if backend == LOCAL_BACKEND:
        return settings.with_(force_local=True)
    if settings.backend_name == backend:
        return settings
    if backend == "api.openai.com" and settings.api_key:
        return settings.with_(force_local=False, base_url=None)
    raise DataError(
        f"cannot reach the backend '{backend}' from here: set OPENAI_API_KEY (and OPENAI_BASE_URL for a host other "
        "than api.openai.com) for it, or compare models of the backends this environment reaches"
    )


def _backend_of(registry: Any, model: str, current: str) -> Tuple[str, Any]:
    """(backend, registry entry or None) of a model id given without `@BACKEND`."""
    found = [(backend, entry) for task, backend, entry in registry.locate(model) if task == TASK]
    if not found:
        return current, None
    for backend, entry in found:
        if backend == current:
            return backend, entry
    if len({backend for backend, _ in found}) > 1:
        backends = ", ".join(sorted({backend for backend, _ in found}))
        raise DataError(f"{model} is recorded on several backends ({backends}); write {model}@BACKEND")
    return found[0]


def resolve_candidates(settings: Any, references: Sequence[str]) -> List[Candidate]:
    """The models of `references`, the model in use first (added when not listed); raises DataError (one line)."""
    from rasa_gpt3.registry import Registry

    registry = Registry.load(settings.registry_path)
    current = settings.backend_name
    in_use = registry.active(TASK, current)
    candidates: List[Candidate] = []
    for reference in references:
        model, _, backend = reference.partition("@")
        model, backend = model.strip(), backend.strip()
        if model == ACTIVE:
            entry = registry.active(TASK, backend or current)
            if entry is None:
                raise DataError(f"no active {TASK} model on {backend or current} in {settings.registry_path.name}")
            model, backend = entry.model, entry.backend
        elif backend:
            entry = registry.find(TASK, backend, model=model)
        else:
            backend, entry = _backend_of(registry, model, current)
        if any(c.model == model and c.backend == backend for c in candidates):
            continue
        candidates.append(
            Candidate(
                name="",
                reference=reference,
                model=model,
                backend=backend,
                settings=settings_for_backend(settings, backend),
                entry=entry,
                in_use=bool(in_use and in_use.model == model and backend == current),
            )
        )
    if in_use is not None and not any(c.in_use for c in candidates):
        candidates.insert(
            0,
            Candidate(
                name="",
                reference=ACTIVE,
                model=in_use.model,
                backend=current,
                settings=settings,
                entry=in_use,
                in_use=True,
            ),
        )
    candidates.sort(key=lambda c: not c.in_use)
    for index, candidate in enumerate(candidates):
        candidate.name = chr(ord("A") + index) if index < 26 else f"M{index + 1}"
    return candidates


def prepare(candidate: Candidate, project: Any, client: Any) -> Candidate:
    """Checks that the backend has the model, and sets its base model, format, export (codec) and label check.

    Raises DataError with one line for a model the backend does not have, an unknown base model, or a model
    trained on labels that differ from this project's.
    """
    import openai

    from rasa_gpt3.data.base_models import base_model_name
    from rasa_gpt3.data.export import export_task

    try:
        client.models.retrieve(candidate.model)
    except openai.NotFoundError:
        raise DataError(f"{candidate.backend} has no model '{candidate.model}'; see `rasa-gpt3 models`") from None
    entry = candidate.entry
    base = (entry.base_model if entry else None) or base_model_name(candidate.model)
    # export resolves the base model and its format, as for fine-tuning (a DataError names an unknown one)
    exported = export_task(TASK, project.nlu, fmt=entry.format if entry else None, base_model=base, validate=False)
    candidate.base_model, candidate.fmt, candidate.exported = exported.base_model, exported.fmt, exported
    if entry is not None and entry.fingerprint == exported.fingerprint:
        candidate.labels = "verified: trained on this project's current data"
        return candidate
    records = _training_records(client, candidate.model, entry)
    if records is None:
        candidate.labels = "unverified: trained on other data, and the backend does not serve its training file"
        return candidate
    mismatch = _label_mismatch(records, project.nlu, exported.codec)
    if mismatch:
        raise DataError(
            f"{candidate.model} was trained on labels that differ from this project's ({mismatch}); evaluate it "
            "with the project whose data it was trained on"
        )
    candidate.labels = "verified: its training file's labels agree with this project's"
    return candidate


def _training_records(client: Any, model: str, entry: Any) -> Optional[List[Dict[str, Any]]]:
    """The records of the training file of the job that made `model`; None when the backend does not serve them."""
    import openai

    from rasa_gpt3.fine_tune_jobs import job_of_model

    try:
        if entry is not None and entry.job:
            job = client.fine_tuning.jobs.retrieve(entry.job)
        else:
            job = job_of_model(client, model)
        if job is None or not job.training_file:
            return None
        text = client.files.content(job.training_file).text
    except openai.OpenAIError:
        return None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _label_mismatch(records: Sequence[Dict[str, Any]], nlu: Any, codec: Any) -> Optional[str]:
    """The first disagreement between a model's training records and this project's codec, as words; None if none."""
    from rasa_gpt3.data.export import full_intent, text_examples
    from rasa_gpt3.prompts import normalize_text, record_answer, record_prompt_text

    intents_of: Dict[str, set] = {}
    for message in text_examples(nlu):
        intents_of.setdefault(normalize_text(message.get("text")), set()).add(full_intent(message))
    for record in records:
        try:
            text, answer = normalize_text(record_prompt_text(record)), record_answer(record).strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
        answered = codec.intent_of(answer)
        if answered is None:
            return f"its label '{answer[:40]}' is none of this project's"
        intents = intents_of.get(text, set())
        if len(intents) == 1 and answered not in intents:
            (intent,) = intents
            return (
                f"it learned '{answer[:40]}' for an example of {intent}, whose label here is '{codec.labels[intent]}'"
            )
    return None
