"""`rasa-gpt3 fine-tune` and the verbs that watch its jobs: follow, status, cancel, list, results."""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

from rasa_gpt3.cli.arguments import (
    Verbs,
    add_base_model,
    add_epochs,
    add_format,
    add_job,
    add_project,
    add_task,
    add_verb,
    project_settings,
)
from rasa_gpt3.cli.output import format_columns
from rasa_gpt3.entry_point import INTERRUPTED_EXIT_CODE


def add_verbs(verbs: Verbs) -> None:
    """Adds `fine-tune`, `follow`, `status`, `cancel`, `list` and `results`."""
    parser = add_verb(
        verbs,
        "fine-tune",
        summary="export, validate, upload and fine-tune one task, then record the model in the registry",
        description="Exports the task exactly as `rasa-gpt3 export` does and stops on validation errors, estimates "
        "the cost and refuses above --max-cost before anything is uploaded, uploads, starts the job, follows it "
        "with a progress bar and makes the new model the project's active one in gpt3_models.yml. Idempotent: the "
        "same data, task, base model, hyperparameters and LoRA settings reuse the existing model or job.",
        examples=[
            "rasa-gpt3 fine-tune --task intent --max-cost 2.00  # export, check, estimate, upload, train, register",
            "rasa-gpt3 fine-tune --task intent  # again: same data -> reuses the model, no new job",
            "rasa-gpt3 fine-tune --project path/to/bot --task entities --no-wait  # start, print the job id, return",
            "rasa-gpt3 fine-tune --base-model hf:Qwen/Qwen2.5-0.5B-Instruct --task intent  # LoRA on this machine",
            "rasa-gpt3 fine-tune --base-model ./my-model --lora rank=32 --lora alpha=64  # LoRA's shape",
        ],
    )
    add_project(parser)
    add_task(parser)
    add_base_model(parser, purpose="to fine-tune")
    add_format(parser)
    add_epochs(parser)
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="examples per step (default: auto)")
    parser.add_argument(
        "--learning-rate-multiplier",
        type=float,
        default=None,
        metavar="X",
        help="scales the base learning rate (default: auto)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a LoRA setting for an open-weights base model, repeatable: rank (default 16), alpha (32), dropout "
        "(0.05), target_modules (all-linear, or names separated by commas), max_length (1024 tokens)",
    )
    parser.add_argument("--suffix", default=None, metavar="S", help="model name suffix (default: the project's name)")
    parser.add_argument(
        "--max-cost", type=float, default=None, metavar="USD", help="refuse when the estimate is above this"
    )
    parser.add_argument("--no-wait", action="store_true", help="start the job and return")
    parser.add_argument("--force", action="store_true", help="start a new job even when an identical one exists")
    parser.set_defaults(run=_run_fine_tune)

    parser = add_verb(
        verbs,
        "follow",
        summary="follow a fine-tuning job with a progress bar (Ctrl-C leaves it running)",
        description="Shows the job's progress until it ends; a succeeded rasa_gpt3 job becomes the project's active "
        "model for its task. Exit status 1 when the job failed, 130 on Ctrl-C (the job goes on; follow it again).",
        examples=["rasa-gpt3 follow ftjob-abc123", "rasa-gpt3 follow ftjob-abc123 --project path/to/bot"],
    )
    add_project(parser)
    add_job(parser)
    parser.set_defaults(run=_run_follow)

    parser = add_verb(
        verbs,
        "status",
        summary="show a fine-tuning job",
        description="Prints the job's state, what it trains, its progress, its error if it failed, and its latest "
        "events.",
        examples=["rasa-gpt3 status ftjob-abc123"],
    )
    add_project(parser)
    add_job(parser)
    parser.set_defaults(run=_run_status)

    parser = add_verb(
        verbs,
        "cancel",
        summary="cancel a fine-tuning job",
        description="Asks the backend to cancel the job and prints its new state.",
        examples=["rasa-gpt3 cancel ftjob-abc123"],
    )
    add_project(parser)
    add_job(parser)
    parser.set_defaults(run=_run_cancel)

    parser = add_verb(
        verbs,
        "list",
        summary="list this project's fine-tuning jobs",
        description="Lists the fine-tuning jobs rasa_gpt3 started for this project (found through their metadata), "
        "newest first.",
        examples=["rasa-gpt3 list  # the jobs of the bot in this directory", "rasa-gpt3 list --all  # every job"],
    )
    add_project(parser)
    parser.add_argument("--all", action="store_true", help="every job, not only this project's")
    parser.set_defaults(run=_run_list)

    parser = add_verb(
        verbs,
        "results",
        summary="a job's training metrics as a table, optionally a PNG plot",
        description="Prints the job's per-step metrics (training and validation loss and accuracy) from its result "
        "file; with --plot also writes the loss and accuracy curves.",
        examples=["rasa-gpt3 results ftjob-abc123", "rasa-gpt3 results ftjob-abc123 --plot curves.png"],
    )
    add_project(parser)
    add_job(parser)
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="write loss and accuracy curves")
    parser.set_defaults(run=_run_results)


def _run_fine_tune(args: argparse.Namespace) -> int:
    """Exports one task, then fine-tunes it (or reuses an identical model) and records it in the registry."""
    from rasa_gpt3.data.base_models import check_epochs
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.finetune import FollowInterrupted, ensure_fine_tuned
    from rasa_gpt3.progress import TqdmProgressBar

    check_epochs(args.epochs)  # before the project is even loaded (ensure_fine_tuned checks again)
    lora = _lora_metadata(args.lora)
    _show_fine_tune_log()
    project = load_project(args.project)
    for line in project.warnings:
        print(f"warning: {line}", file=sys.stderr)
    exported = export_task(
        args.task, project.nlu, project.domain, project.stories, fmt=args.format, base_model=args.base_model
    )
    settings = project_settings(args)
    try:
        outcome = ensure_fine_tuned(
            settings,
            exported,
            project_name=project.name,
            epochs=args.epochs,
            suffix=args.suffix,
            max_cost=args.max_cost,
            wait=not args.no_wait,
            force=args.force,
            progress=TqdmProgressBar(),
            batch_size=args.batch_size,
            learning_rate_multiplier=args.learning_rate_multiplier,
            lora=lora,
        )
    except FollowInterrupted as stop:
        print(stop.resume_hint(args.project), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if outcome.model is None:
        print(
            f"job {outcome.job_id} is {outcome.status}; follow it with: rasa-gpt3 follow {outcome.job_id}"
            + _project_option(args)
        )
        return 0
    how = "reused" if outcome.reused and not outcome.attached else "trained"
    print(f"{outcome.task}: {outcome.model} ({how}, job {outcome.job_id})")
    if outcome.entry is not None or outcome.reused:
        print(f"active {outcome.task} model on {settings.backend_name} in {settings.registry_path.name}")
    return 0


def _lora_metadata(options: List[str]) -> Dict[str, str]:
    """`--lora NAME=VALUE` options as job metadata (checked before the project is loaded)."""
    if not options:
        return {}
    from rasa_gpt3.local.lora.training import LoraSettings

    return LoraSettings.metadata_from_options(options)


def _run_follow(args: argparse.Namespace) -> int:
    """Follows a job with a progress bar; a succeeded rasa_gpt3 job is recorded in the registry."""
    from rasa_gpt3.fine_tune_jobs import META_TASK
    from rasa_gpt3.finetune import FollowInterrupted, follow
    from rasa_gpt3.progress import TqdmProgressBar

    _show_fine_tune_log()
    settings = project_settings(args)
    try:
        job, entry = follow(settings, args.job, TqdmProgressBar())
    except FollowInterrupted as stop:
        print(stop.resume_hint(args.project), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    print(f"{job.id} succeeded: {job.fine_tuned_model}")
    if entry is not None:
        task = (job.metadata or {}).get(META_TASK)
        print(f"active {task} model on {settings.backend_name} in {settings.registry_path.name}")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    """Prints a job's state, what it trains, its error if it failed, and its latest events."""
    from rasa_gpt3.fine_tune_jobs import META_PROJECT, META_TASK, job_epochs
    from rasa_gpt3.finetune import get_job
    from rasa_gpt3.progress import describe
    from rasa_gpt3.registry import timestamp_iso

    job, progress, events = get_job(project_settings(args), args.job)
    meta = job.metadata or {}
    rows = [
        ("job", job.id),
        ("status", job.status),
        ("base model", job.model),
        ("fine-tuned model", job.fine_tuned_model or "-"),
        ("task / project", f"{meta.get(META_TASK, '-')} / {meta.get(META_PROJECT, '-')}"),
        ("epochs", job_epochs(job) or "auto"),
        ("created", timestamp_iso(job.created_at)),
        ("finished", timestamp_iso(job.finished_at) if job.finished_at else "-"),
        ("trained tokens", f"{job.trained_tokens:,}" if job.trained_tokens else "-"),
    ]
    if progress.total_steps:
        rows.append(("progress", f"step {progress.step}/{progress.total_steps}, {describe(progress)}".rstrip(", ")))
    if job.error is not None and job.error.message:
        rows.append(("error", f"{job.error.message} [{job.error.code}]"))
    for name, value in rows:
        print(f"{name:>17}: {value}")
    if events:
        print("events:")
        for event in events:
            print(f"  {timestamp_iso(event.created_at)} {event.level:5} {event.message}")
    return 0


def _run_cancel(args: argparse.Namespace) -> int:
    """Cancels a running job."""
    from rasa_gpt3.finetune import cancel_job

    job = cancel_job(project_settings(args), args.job)
    print(f"{job.id}: {job.status}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    """Lists the project's fine-tuning jobs (found through their metadata), newest first."""
    from rasa_gpt3.fine_tune_jobs import META_TASK
    from rasa_gpt3.finetune import list_jobs
    from rasa_gpt3.registry import timestamp_iso

    settings = project_settings(args)
    name = None if args.all else _project_name(args)
    jobs = list_jobs(settings, name)
    if not jobs:
        which = "" if args.all else f" of project '{name}' (--all shows every job)"
        print(f"no fine-tuning jobs{which} on {settings.backend_name}")
        return 0
    rows = [("JOB", "STATUS", "TASK", "CREATED", "BASE MODEL", "FINE-TUNED MODEL")]
    for job in jobs:
        rows.append(
            (
                job.id,
                job.status,
                (job.metadata or {}).get(META_TASK, "-"),
                timestamp_iso(job.created_at),
                job.model,
                job.fine_tuned_model or "-",
            )
        )
    print(format_columns(rows))
    return 0


def _run_results(args: argparse.Namespace) -> int:
    """Prints a job's result file as a table and, with --plot, writes its loss and accuracy curves as a PNG."""
    from rasa_gpt3.finetune import job_results
    from rasa_gpt3.training_results import format_table, plot_results

    job, table = job_results(project_settings(args), args.job)
    print(format_table(table))
    if args.plot:
        path = plot_results(table, args.plot, title=f"{job.id}  {job.fine_tuned_model or job.model}")
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _project_name(args: argparse.Namespace) -> str:
    """The project's name as jobs record it: its directory's name, as data.project.load_project names it."""
    from pathlib import Path

    return Path(args.project).resolve().name


def _project_option(args: argparse.Namespace) -> str:
    """` --project DIR` when the command ran on another directory than `.`, for the commands it suggests."""
    return "" if args.project in (".", None) else f" --project {args.project}"


def _show_fine_tune_log() -> None:
    """Shows the fine-tune lifecycle's info lines (cost estimate, reuse, upload, job id) on stderr."""
    import logging

    class CurrentStderrHandler(logging.StreamHandler):
        """Writes to sys.stderr as it is when a line is logged (an in-process run, as in tests, may replace it)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    log = logging.getLogger("rasa_gpt3.finetune")
    if not log.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
