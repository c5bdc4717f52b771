"""`rasa-gpt3 models list|use|prune|export`: the project's model registry (gpt3_models.yml); `models` alone lists."""

from __future__ import annotations

import argparse
from typing import Optional

from rasa_gpt3.cli.arguments import Verbs, add_project, add_task, add_verb, project_settings
from rasa_gpt3.cli.output import format_columns
from rasa_gpt3.errors import RasaGPT3Error


def add_verbs(verbs: Verbs) -> None:
    """Adds `models` and its verbs `list`, `use` and `prune`."""
    parser = add_verb(
        verbs,
        "models",
        summary="the project's model registry: list, use, prune, export",
        description="gpt3_models.yml records, per task and backend, the active fine-tuned model and the earlier "
        "ones. `rasa-gpt3 fine-tune` and `follow` write it; the NLU components and the fallback action read it.",
        examples=[
            "rasa-gpt3 models  # what gpt3_models.yml says (same as `models list`)",
            "rasa-gpt3 models use ft:gpt-4o-mini-2024-07-18:acme:mybot:AbC123 --task intent  # the active intent model",
            "rasa-gpt3 models prune --keep 3  # keep the 3 latest earlier models per task",
        ],
    )
    add_project(parser)
    parser.set_defaults(run=_run_list)
    models_verbs = parser.add_subparsers(title="verbs", dest="models_verb", metavar="VERB")
    # Each verb takes --project too, after its name. Its default is SUPPRESS because argparse copies a verb's
    # defaults over what was parsed before the verb: `models --project DIR list` keeps DIR.

    parser = add_verb(
        models_verbs,
        "list",
        summary="list the registry's models, the active ones marked",
        description="One row per model: task, backend, whether it is active, its base model, the days until the "
        "provider shuts it down (the backend's shutdown_date, else the schedule in base_models.yml), when it was "
        "made, the fingerprint of its training data and its validation metrics. An active model shutting down within "
        "60 days, or shut down, gets one more line saying what to do.",
        examples=["rasa-gpt3 models list", "rasa-gpt3 models list --project path/to/bot"],
    )
    add_project(parser, default=argparse.SUPPRESS)
    parser.set_defaults(run=_run_list)

    parser = add_verb(
        models_verbs,
        "use",
        summary="make a fine-tuned model the active one for a task",
        description="The model must exist on the backend and have been trained for the task. A model the registry "
        "does not know yet is described from the job that made it. The model that was active stays in the history.",
        examples=["rasa-gpt3 models use ft:gpt-4o-mini-2024-07-18:acme:mybot:AbC123 --task intent"],
    )
    parser.usage = "rasa-gpt3 models use [-h] MODEL --task {intent,entities,response} [--project DIR]"
    # MODEL and --task are checked by the handler, so that leaving one out is one line, not argparse's usage dump
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the fine-tuned model's id (ft:...)")
    add_task(parser, default=None, help_text="the task the model serves")
    add_project(parser, default=argparse.SUPPRESS)
    parser.set_defaults(run=_run_use)

    parser = add_verb(
        models_verbs,
        "prune",
        summary="drop earlier models from the registry",
        description="Keeps the active model and the --keep latest earlier ones per task and backend, and drops "
        "models this backend no longer has. Models are never deleted on the backend.",
        examples=[
            "rasa-gpt3 models prune  # keep 5 earlier models per task",
            "rasa-gpt3 models prune --keep 0  # keep only the active models",
        ],
    )
    parser.add_argument(
        "--keep", type=int, default=5, metavar="N", help="earlier models kept per task and backend (default: 5)"
    )
    add_project(parser, default=argparse.SUPPRESS)
    parser.set_defaults(run=_run_prune)

    parser = add_verb(
        models_verbs,
        "export",
        summary="write a local LoRA model's adapter in PEFT format, to serve it with vLLM",
        description="Writes the adapter of a model the local backend fine-tuned on an open-weights base model "
        "(adapter_config.json and adapter_model.safetensors) into a new directory, and prints how to serve it with "
        "vLLM and how to point the bot at that server.",
        examples=["rasa-gpt3 models export ft:Qwen2.5-0.5B-Instruct:local:mybot:AbC12345 --out adapters/intent"],
    )
    parser.usage = "rasa-gpt3 models export [-h] MODEL --out DIR [--project DIR]"
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the fine-tuned model's id (ft:...)")
    parser.add_argument("--out", default=None, metavar="DIR", help="a new (or empty) directory for the files")
    add_project(parser, default=argparse.SUPPRESS)
    parser.set_defaults(run=_run_export)


def _run_list(args: argparse.Namespace) -> int:
    """Lists the registry's models with base model, days until shutdown, data fingerprint and validation metrics.

    The active ones are marked; for each active model shutting down within 60 days, or shut down, one line follows.
    """
    from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION
    from rasa_gpt3.registry import Registry

    settings = project_settings(args)
    registry = Registry.load(settings.registry_path)
    rows = [("TASK", "BACKEND", "", "MODEL", "BASE", "DAYS LEFT", "CREATED", "DATA", "VALID LOSS", "VALID ACC")]
    notices = []
    for task, backend, entry, active in registry.entries():
        note = "active" if active else ""
        if active and entry.prompt_format and entry.prompt_format != PROMPT_FORMAT_VERSION:
            note = "active (old prompt format)"
        lifecycle = _lifecycle(settings, entry, ask_backend=active and backend == settings.backend_name)
        if active and lifecycle.retired:
            notices.append(f"error: {lifecycle.error(task)}")
        elif active and lifecycle.due_soon:
            notices.append(f"warning: {lifecycle.warning(task)}")
        metrics = entry.metrics
        rows.append(
            (
                task,
                backend,
                note,
                entry.model,
                lifecycle.base_model,
                lifecycle.days_text(),
                entry.created or "-",
                (entry.fingerprint or "-")[:12],
                _metric(metrics.get("valid_loss")),
                _metric(metrics.get("valid_accuracy")),
            )
        )
    if len(rows) == 1:
        print(f"no models in {settings.registry_path} yet; run `rasa-gpt3 fine-tune --task intent`")
        return 0
    print(format_columns(rows))
    for line in notices:
        print(line)
    return 0


def _lifecycle(settings, entry, ask_backend: bool):
    """The entry's shutdown date: the backend's answer for an active model of the backend in use, else the schedule."""
    from rasa_gpt3.model_lifecycle import lifecycle_on, model_lifecycle

    if ask_backend:
        return lifecycle_on(settings, entry.model, entry.base_model)
    return model_lifecycle(entry.model, entry.backend, base_model=entry.base_model)


def _run_use(args: argparse.Namespace) -> int:
    """Makes a model the active one for a task."""
    from rasa_gpt3.registry import use_model

    if not args.model or not args.task:
        raise RasaGPT3Error("`rasa-gpt3 models use` needs a MODEL and --task (e.g. models use ft:... --task intent)")
    settings = project_settings(args)
    entry = use_model(settings, args.model, args.task)
    print(
        f"{entry.model} is now the active {args.task} model on {settings.backend_name} in {settings.registry_path.name}"
    )
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    """Drops earlier models beyond --keep, and models the backend no longer has, from the registry."""
    from rasa_gpt3.registry import prune_registry

    settings = project_settings(args)
    removed = prune_registry(settings, args.keep)
    for task, backend, entry in removed:
        print(f"removed {task} / {backend}: {entry.model}")
    print(f"pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {settings.registry_path.name}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    """Writes a local LoRA model's adapter in PEFT format and prints how to serve it with vLLM."""
    from rasa_gpt3.registry import export_local_model

    if not args.model or not args.out:
        raise RasaGPT3Error("`rasa-gpt3 models export` needs a MODEL and --out DIR (models export ft:... --out DIR)")
    exported = export_local_model(project_settings(args), args.model, args.out)
    for path in exported.files:
        print(f"wrote {path}")
    print(exported.instructions)
    return 0


def _metric(value: Optional[float]) -> str:
    """A metric to four decimals, `-` when the job did not report it."""
    return "-" if value is None else f"{value:.4f}"
