"""Rasa training data → fine-tune records per task, a stratified train/valid split, a manifest, and the files.

Both callers see the same data: the CLI passes `load_project(...).nlu` and the NLU component passes the
TrainingData `rasa train` hands it; both come from Rasa's importer, so the same bot gives the same records and
the same fingerprint. Only NLU examples with text count (`intent_examples`; core-only messages from stories and
domain actions are skipped), duplicates are dropped and the order is fixed (sorted, then a seeded shuffle).

Decisions (see also the README section "Export and validate"):
- intent: label source is the full retrieval intent (`faq/ask_x`) or the intent; each record's answer is the
  codec label (one token, see labels.py).
- entities: the value the model must produce is the text span `text[start:end]` (whitespace-normalised), so
  Rasa's EntitySynonymMapper maps it afterwards exactly as it does for DIET; role and group are kept. Examples
  without entities (answer `[]`) are included, at most as many as there are examples with entities, picked by a
  seeded hash of their text, so the model learns to answer `[]` without that answer dominating.
- response: per story/rule step, every bot utterance with a text (`utter_*` from the domain or response data,
  first variation, `{slot}` templates kept; or an end-to-end `bot:` text) becomes a record whose history is the
  last N turns before it. User turns use the story's text when present, else a fixed example of the intent (the
  one of median length). Retrieval intents add one record per example of `faq/ask_x` → text of `utter_faq/ask_x`.
- split: per label, a seeded shuffle holds out round(n × fraction) examples, at least 1 and at most n−1 when
  n ≥ 2 (so every label with ≥2 examples is in both files); labels with one example stay in train.
- the fingerprint is a SHA-256 over the prompt-format version, task, format and the exact JSONL lines of both
  files; no timestamps anywhere, so re-runs on unchanged data write byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import BaseModel, default_base_model, default_epochs, resolve_base_model
from rasa_gpt3.data.export_files import check_output_dir, write_export
from rasa_gpt3.data.exported_task import ExportedTask
from rasa_gpt3.data.gc_pause import paused_garbage_collection
from rasa_gpt3.data.intent_fast_path import in_background, intent_line_writer, intent_token_counter
from rasa_gpt3.data.labels import LabelCodec, one_token_of
from rasa_gpt3.data.tokens import count_record_tokens, count_text_tokens, get_encoding
from rasa_gpt3.errors import DataError

NO_ENTITIES = "(none)"
E2E_BOT_LABEL = "(end-to-end bot text)"


# ---------------------------------------------------------------- resolving format and base model


def resolve_format_and_model(fmt: Optional[str], base_model: Optional[str]) -> Tuple[str, BaseModel]:
    """The record format and base model from what the user gave: each defaults from the other."""
    if fmt is not None and fmt not in prompts.FORMATS:
        raise DataError(f"unknown format '{fmt}' (choose {' or '.join(prompts.FORMATS)})")
    try:
        model = resolve_base_model(base_model or default_base_model(fmt or "chat"), fmt)
    except ValueError as error:
        raise DataError(str(error)) from None
    if fmt is not None and model.format != fmt:
        raise DataError(
            f"base model '{model.name}' is fine-tuned in the {model.format} format, not {fmt} "
            f"(drop --format or pick a {fmt} model such as {default_base_model(fmt)})"
        )
    return model.format, model


# ---------------------------------------------------------------- examples per task


def text_examples(nlu: Any) -> List[Any]:
    """The NLU examples that have a text and an intent (examples from stories and the domain have no text)."""
    return [m for m in nlu.intent_examples if (m.get("text") or "").strip()]


def full_intent(message: Any) -> str:
    """The class an example belongs to: `faq/ask_x` for a retrieval intent, else its intent."""
    return message.get("intent_response_key") or message.get("intent")


def intent_examples(nlu: Any) -> List[Tuple[str, str]]:
    """(intent, normalised text) pairs of the NLU data, deduplicated and sorted."""
    normalize = prompts.normalize_text
    texts: Dict[str, set] = {}
    for message in nlu.intent_examples:
        data = message.data  # Message.get is a method call per key; this loop runs once per example
        text = data.get("text")
        if text and not text.isspace():
            intent = data.get("intent_response_key") or data.get("intent")
            found = texts.get(intent)
            if found is None:
                found = texts[intent] = set()
            found.add(normalize(text))
    # sorting plain strings per intent is several times faster than sorting (intent, text) tuples
    return [(intent, text) for intent in sorted(texts) for text in sorted(texts[intent])]


def _entity_items(message: Any, text: str) -> List[Dict[str, Any]]:
    items = []
    for entity in message.get("entities") or []:
        start, end = entity.get("start"), entity.get("end")
        if start is None or end is None or not entity.get("entity"):
            continue
        span = prompts.normalize_text(text[start:end])
        if not span:
            continue
        items.append((start, end, entity["entity"], span, entity.get("role"), entity.get("group")))
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    return [{"entity": e, "value": v, "role": r, "group": g} for _, _, e, v, r, g in items]


def _stable_rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\n{text}".encode()).hexdigest()


def _entity_examples(nlu: Any, fmt: str, seed: int) -> List[Tuple[str, str, Dict[str, Any]]]:
    with_entities: Dict[Tuple[str, str], Tuple[str, str, Dict[str, Any]]] = {}
    without: Dict[str, str] = {}
    for message in text_examples(nlu):
        text = message.get("text")
        normalized = prompts.normalize_text(text)
        items = _entity_items(message, text)
        if items:
            answer = prompts.render_entities(items)
            label = "+".join(sorted({item["entity"] for item in items}))
            key = (normalized, answer)
            if key not in with_entities:
                with_entities[key] = (label, normalized, prompts.entities_record(normalized, items, fmt))
        else:
            without[normalized] = normalized
    if not with_entities:
        raise DataError("the NLU data has no entity annotations, so there is nothing for the entities task to learn")
    annotated_texts = {normalized for normalized, _ in with_entities}
    candidates = sorted((t for t in without if t not in annotated_texts), key=lambda t: (_stable_rank(seed, t), t))
    examples = list(with_entities.values())
    for normalized in candidates[: len(with_entities)]:
        examples.append((NO_ENTITIES, normalized, prompts.entities_record(normalized, [], fmt)))
    examples.sort(key=lambda example: (example[0], example[1], json.dumps(example[2], ensure_ascii=False)))
    return examples


def _response_text(name: str, domain: Any, nlu: Any) -> Optional[str]:
    variations = None
    if domain is not None:
        variations = domain.responses.get(name)
    if not variations and nlu is not None:
        variations = (getattr(nlu, "responses", None) or {}).get(name)
    for variation in variations or []:
        text = variation.get("text") if isinstance(variation, dict) else None
        if text and str(text).strip():
            return str(text).strip()
    return None


def _typical_examples(nlu: Any) -> Dict[str, str]:
    """One fixed user text per intent (and per full retrieval intent): the example of median length."""
    texts: Dict[str, set] = {}
    for message in text_examples(nlu):
        normalized = prompts.normalize_text(message.get("text"))
        for name in {message.get("intent"), full_intent(message)}:
            if name:
                texts.setdefault(name, set()).add(normalized)
    typical = {}
    for name, options in texts.items():
        ordered = sorted(options, key=lambda t: (len(t), t))
        typical[name] = ordered[(len(ordered) - 1) // 2]
    return typical


def _response_examples(
    nlu: Any, domain: Any, stories: Any, fmt: str, history: int
) -> List[Tuple[str, str, Dict[str, Any]]]:
    from rasa.shared.core.events import ActionExecuted, UserUttered

    if history < 1:
        raise DataError("--history must be at least 1 turn")
    typical = _typical_examples(nlu)
    found: Dict[str, Tuple[str, str, Dict[str, Any]]] = {}

    def add(label: str, turns: Sequence[prompts.Turn], response: str) -> None:
        record = prompts.response_record(turns, response, fmt)
        key = json.dumps(record, ensure_ascii=False, sort_keys=True)
        found.setdefault(key, (label, key, record))

    for step in getattr(stories, "story_steps", None) or []:
        turns: List[prompts.Turn] = []
        for event in step.events:
            if isinstance(event, UserUttered):
                text = event.text
                if not text:
                    name = event.intent.get("name") if event.intent else None
                    full = event.intent.get("intent_response_key") if event.intent else None
                    text = typical.get(full) or typical.get(name)
                if text:
                    turns.append(prompts.Turn("user", text))
            elif isinstance(event, ActionExecuted):
                if event.action_text:
                    label, response = E2E_BOT_LABEL, event.action_text.strip()
                elif event.action_name and event.action_name.startswith("utter_"):
                    label, response = event.action_name, _response_text(event.action_name, domain, nlu)
                else:
                    continue
                if not response:
                    continue  # retrieval actions (utter_faq) and responses without text have no fixed answer
                window = turns[-history:]
                if window:
                    add(label, window, response)
                turns.append(prompts.Turn("bot", response))

    for message in text_examples(nlu):
        full = message.get("intent_response_key")
        if not full:
            continue
        name = f"utter_{full}"
        response = _response_text(name, domain, nlu)
        if response:
            add(name, [prompts.Turn("user", message.get("text"))], response)

    if not found:
        raise DataError(
            "no bot responses with text found in the stories, rules or retrieval intents (the response task needs "
            "utter_* responses in the domain or response data)"
        )
    return sorted(found.values(), key=lambda example: (example[0], example[1]))


# ---------------------------------------------------------------- split


def stratified_split(labels: Sequence[str], valid_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices of train and valid: per label a seeded shuffle holds out round(n × fraction), 1..n−1 when n ≥ 2."""
    if not 0 <= valid_fraction < 1:
        raise DataError(f"--valid-fraction must be at least 0 and below 1, not {valid_fraction}")
    groups: Dict[str, List[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    train: List[int] = []
    valid: List[int] = []
    for label in sorted(groups):
        members = groups[label]
        held = 0
        if valid_fraction > 0 and len(members) >= 2:
            held = min(len(members) - 1, max(1, round(len(members) * valid_fraction)))
        if held:
            # a per-label seed keeps one label's split unchanged when other labels change
            order = _permutation(f"{seed}/{label}", len(members))
            held_out = set(order[:held].tolist())
            valid.extend(i for k, i in enumerate(members) if k in held_out)
            train.extend(i for k, i in enumerate(members) if k not in held_out)
        else:
            train.extend(members)
    # fine-tuning sees the intents mixed, not in sorted blocks
    train = [train[k] for k in _permutation(str(seed), len(train)).tolist()]
    return train, valid


def _permutation(seed: str, n: int) -> Any:
    """A seeded permutation of range(n), the same on every platform and numpy version.

    numpy's legacy RandomState (Mersenne Twister) is frozen by numpy's compatibility policy; it is ~20x faster
    than random.shuffle, which matters at 100,000 examples.
    """
    import numpy

    state = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:4], "big")
    return numpy.random.RandomState(state).permutation(n)


# ---------------------------------------------------------------- the export


def export_task(
    task: str,
    nlu: Any,
    domain: Any = None,
    stories: Any = None,
    *,
    fmt: Optional[str] = None,
    base_model: Optional[str] = None,
    valid_fraction: float = 0.2,
    seed: int = 42,
    history: int = 3,
    validate: bool = True,
) -> ExportedTask:
    """Turns Rasa training data into the split fine-tune records of `task` (intent, entities or response)."""
    with paused_garbage_collection():
        return _export_task(
            task,
            nlu,
            domain,
            stories,
            fmt=fmt,
            base_model=base_model,
            valid_fraction=valid_fraction,
            seed=seed,
            history=history,
            validate=validate,
        )


def _export_task(
    task: str,
    nlu: Any,
    domain: Any,
    stories: Any,
    *,
    fmt: Optional[str],
    base_model: Optional[str],
    valid_fraction: float,
    seed: int,
    history: int,
    validate: bool,
) -> ExportedTask:
    if task not in prompts.TASKS:
        raise DataError(f"unknown task '{task}' (choose {', '.join(prompts.TASKS)})")
    fmt, model = resolve_format_and_model(fmt, base_model)
    encoding = get_encoding(model.encoding)
    codec = None

    if task == "intent":
        pairs = intent_examples(nlu)
        if not pairs:
            raise DataError("the NLU data has no examples with text and intent")
        intents = {intent for intent, _ in pairs}
        codec = LabelCodec.build(intents, encoding.name, fmt, is_one_token=one_token_of(encoding, fmt))
        labels_of = codec.labels
        make = prompts.intent_record
        labels = [intent for intent, _ in pairs]
        texts_and_labels = [(text, labels_of[intent]) for intent, text in pairs]
        text_counts = None
        if fmt == "chat":  # start counting now; the records are built meanwhile
            text_counts = in_background(count_text_tokens, [text for _, text in pairs], encoding)
        records = prompts.intent_records(texts_and_labels, fmt)
        step = max(1, len(records) // 50)
        if any(records[i] != make(*texts_and_labels[i], fmt) for i in range(0, len(records), step)):
            records = [make(text, label, fmt) for text, label in texts_and_labels]  # the batch builder drifted
        serialize = intent_line_writer(fmt, records, texts_and_labels)
        token_counter = None
        if serialize is not None:  # records are exactly the template with text and label put in
            token_counter = intent_token_counter(fmt, encoding, records, texts_and_labels, text_counts)
    elif task == "entities":
        examples = _entity_examples(nlu, fmt, seed)
        labels = [label for label, _, _ in examples]
        records = [record for _, _, record in examples]
        serialize = token_counter = None
    else:
        if domain is None or stories is None:
            raise DataError("the response task needs the project's domain and stories")
        examples = _response_examples(nlu, domain, stories, fmt, history)
        labels = [label for label, _, _ in examples]
        records = [record for _, _, record in examples]
        serialize = token_counter = None

    train_idx, valid_idx = stratified_split(labels, valid_fraction, seed)
    train = [records[i] for i in train_idx]
    valid = [records[i] for i in valid_idx]
    train_labels = [labels[i] for i in train_idx]
    valid_labels = [labels[i] for i in valid_idx]
    if serialize is None:
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        serialize = lambda i: dumps(records[i])  # noqa: E731
    train_lines = [serialize(i) for i in train_idx]
    valid_lines = [serialize(i) for i in valid_idx]
    fingerprint = _fingerprint(task, fmt, train_lines, valid_lines)

    if token_counter is None:
        token_counts = count_record_tokens(train + valid, encoding)
    else:
        token_counts = token_counter(train_idx + valid_idx)
    train_tokens = sum(token_counts[: len(train)])
    valid_tokens = sum(token_counts[len(train) :])
    epochs = default_epochs(len(train))

    exported = ExportedTask(
        task=task,
        fmt=fmt,
        base_model=model,
        train=train,
        valid=valid,
        codec=codec,
        fingerprint=fingerprint,
        manifest={},
        train_labels=train_labels,
        valid_labels=valid_labels,
        train_lines=train_lines,
        valid_lines=valid_lines,
    )
    if validate:
        from rasa_gpt3.data.validation import validate_records

        exported.report = validate_records(
            train + valid,
            fmt=fmt,
            base_model=model,
            keys=train_lines + valid_lines,
            token_counts=token_counts,
            classification=task == "intent",
            training_count=len(train),
            codec=codec,
            source=f"{task} export",
        )

    per_label: Dict[str, Dict[str, Any]] = {}
    for label in sorted(set(labels)):
        per_label[label] = {"train": 0, "valid": 0}
        if codec is not None:
            per_label[label] = {"label": codec.label_of(label), "train": 0, "valid": 0}
    for label in train_labels:
        per_label[label]["train"] += 1
    for label in valid_labels:
        per_label[label]["valid"] += 1

    exported.manifest = {
        "task": task,
        "format": fmt,
        "prompt_format_version": prompts.PROMPT_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "base_model": model.name,
        "encoding": model.encoding,
        "seed": seed,
        "valid_fraction": valid_fraction,
        **({"history": history} if task == "response" else {}),
        "records": {"train": len(train), "valid": len(valid)},
        "labels": per_label,
        "tokens": {
            "train": train_tokens,
            "valid": valid_tokens,
            "max_per_record": max(token_counts) if token_counts else 0,
            "context_limit": model.context,
        },
        "estimate": {
            "epochs": epochs,
            "trained_tokens": train_tokens * epochs,
            "training_cost_usd": round(model.training_cost(train_tokens * epochs), 6),
            "training_price_per_1m_tokens": model.training_price,
        },
    }
    if exported.report is not None:
        exported.manifest["validation"] = exported.report.summary()
    return exported


def _fingerprint(task: str, fmt: str, train_lines: Iterable[str], valid_lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"rasa_gpt3 prompt format {prompts.PROMPT_FORMAT_VERSION}\n{task}\n{fmt}\n".encode())
    for part, lines in (("train", train_lines), ("valid", valid_lines)):
        digest.update(f"--- {part}\n".encode())
        digest.update("".join(line + "\n" for line in lines).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------- a whole project (what `rasa-gpt3 export` runs)


@dataclass
class ProjectExport:
    """What `export_project` did: the exported tasks, where they were written, tasks skipped and why."""

    project_name: str
    tasks: List[ExportedTask]
    written: List[Path]
    skipped: Dict[str, str]
    project_warnings: List[str]

    @property
    def errors(self) -> int:
        """Validation errors over all written tasks."""
        return sum(len(t.report.errors) for t in self.tasks if t.report is not None)


def export_project(
    project_dir: Union[str, Path],
    out_dir: Union[str, Path],
    task: str = "intent",
    *,
    fmt: Optional[str] = None,
    base_model: Optional[str] = None,
    valid_fraction: float = 0.2,
    seed: int = 42,
    history: int = 3,
    command: Optional[str] = None,
) -> ProjectExport:
    """Loads the project, exports `task` (or every task with `all`), then writes the files of each task.

    Every task is computed and checked before the first file is written, so bad input leaves no partial
    output; each task's directory is then replaced as a whole (see export_files). With `all`, a task the bot has
    no data for (no entity annotations, no bot texts) is skipped.
    """
    from rasa_gpt3.data.project import load_project

    fmt, model = resolve_format_and_model(fmt, base_model)
    tasks = list(prompts.TASKS) if task == "all" else [task]
    check_output_dir(out_dir, tasks)
    project = load_project(project_dir)
    exported: List[ExportedTask] = []
    skipped: Dict[str, str] = {}
    for name in tasks:
        try:
            exported.append(
                export_task(
                    name,
                    project.nlu,
                    project.domain,
                    project.stories,
                    fmt=fmt,
                    base_model=model.name,
                    valid_fraction=valid_fraction,
                    seed=seed,
                    history=history,
                )
            )
        except DataError as error:
            if task != "all" or name == "intent":
                raise
            skipped[name] = str(error)
    written = [write_export(item, out_dir, command) for item in exported]
    return ProjectExport(project.name, exported, written, skipped, project.warnings)


def format_export_summary(result: ProjectExport) -> str:
    """A short human summary of an export: records, tokens, cost estimate and the validation findings."""
    lines = []
    for item, path in zip(result.tasks, result.written):
        manifest = item.manifest
        tokens, estimate = manifest["tokens"], manifest["estimate"]
        lines.append(
            f"{item.task}: {len(item.train)} train / {len(item.valid)} valid records, "
            f"{len(manifest['labels'])} labels, {item.fmt} format -> {path}"
        )
        lines.append(
            f"  tokens: {tokens['train']:,} train + {tokens['valid']:,} valid "
            f"(max {tokens['max_per_record']:,} per record); "
            f"{item.base_model.name}: {estimate['epochs']} epochs, {estimate['trained_tokens']:,} trained tokens, "
            + item.base_model.training_cost_text(estimate["trained_tokens"])
        )
        if item.report is not None:
            lines.extend("  " + line for line in item.report.summary_lines())
    for name, reason in result.skipped.items():
        lines.append(f"{name}: skipped ({reason})")
    return "\n".join(lines)
