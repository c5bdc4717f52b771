"""The `rasa-gpt3` command: parses arguments and calls the modules that do the work.

Heavy imports (Rasa, numpy, the SDK) happen inside each verb, so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.prompts import FORMATS, TASKS

EPILOG = (
    "With no OPENAI_API_KEY set, every verb uses the embedded local backend (offline, state in "
    "<project>/.rasa_gpt3/local). With a key, OpenAI (or OPENAI_BASE_URL) is used."
)


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=".", metavar="DIR", help="the Rasa bot project (default: .)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(
        prog="rasa-gpt3",
        description="Fine-tuned GPT models for a Rasa bot: export its data, fine-tune, and keep a model registry.",
        epilog=EPILOG,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser(
        "export",
        help="write the bot's training data as fine-tune JSONL (train/valid split, labels, manifest)",
        description="Load the bot with Rasa's own importer and write fine-tune JSONL per task into --out/<task>/.",
    )
    _add_project(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (one folder per task)")
    p.add_argument("--task", choices=TASKS + ("all",), default="intent", help="what the model learns (default: intent)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="chat (gpt-4o-mini, gpt-4.1-nano) or completion (babbage-002, davinci-002); default: the base model's")
    p.add_argument("--valid-fraction", type=float, default=0.2, metavar="F", help="share held out for validation (default: 0.2)")
    p.add_argument("--seed", type=int, default=42, metavar="N", help="seed of the stratified split (default: 42)")
    p.add_argument("--base-model", default=None, metavar="NAME", help="base model to size tokens and cost for")
    p.add_argument("--history", type=int, default=3, metavar="N", help="response task: turns of history per record (default: 3)")
    p.set_defaults(run=_run_export)

    p = verbs.add_parser(
        "validate",
        help="check a fine-tune JSONL file (format, duplicates, tokens, labels, cost)",
        description="Run every check of OpenAI's legacy prepare_data tool and the chat data guide, plus Rasa-aware ones.",
    )
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument("--format", choices=FORMATS, default=None, help="expected format (default: detected)")
    p.add_argument("--base-model", default=None, metavar="NAME", help="base model for token limits and cost")
    p.add_argument("--fix", default=None, metavar="OUT", help="write a repaired copy to OUT and say what changed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run_validate)

    p = verbs.add_parser(
        "fine-tune",
        help="export, validate, upload and fine-tune one task, then record the model in the registry",
        description="Idempotent: the same data, task, base model and hyperparameters reuse the existing model or job.",
    )
    _add_project(p)
    p.add_argument("--task", choices=TASKS, default="intent")
    p.add_argument("--base-model", default=None, metavar="NAME")
    p.add_argument("--format", choices=FORMATS, default=None)
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="default: chosen from the data size, as OpenAI does")
    p.add_argument("--suffix", default=None, metavar="S", help="model name suffix (default: the project's name)")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD", help="refuse when the estimate is above this")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.add_argument("--force", action="store_true", help="start a new job even when an identical one exists")
    p.set_defaults(run=_run_fine_tune)

    p = verbs.add_parser("follow", help="follow a fine-tuning job with a progress bar (Ctrl-C leaves it running)")
    _add_project(p)
    p.add_argument("job", metavar="JOB")
    p.set_defaults(run=_run_follow)

    p = verbs.add_parser("status", help="show a fine-tuning job")
    _add_project(p)
    p.add_argument("job", metavar="JOB")
    p.set_defaults(run=_run_status)

    p = verbs.add_parser("cancel", help="cancel a fine-tuning job")
    _add_project(p)
    p.add_argument("job", metavar="JOB")
    p.set_defaults(run=_run_cancel)

    p = verbs.add_parser("list", help="list this project's fine-tuning jobs")
    _add_project(p)
    p.add_argument("--all", action="store_true", help="every job, not only this project's")
    p.set_defaults(run=_run_list)

    p = verbs.add_parser("results", help="a job's training metrics as a table, optionally a PNG plot")
    _add_project(p)
    p.add_argument("job", metavar="JOB")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write loss and accuracy curves")
    p.set_defaults(run=_run_results)

    p = verbs.add_parser("models", help="the project's model registry: list, use, prune")
    _add_project(p)
    p.add_argument("action", nargs="?", choices=("list", "use", "prune"), default="list")
    p.add_argument("model", nargs="?", metavar="MODEL", help="with `use`: the model id to make active")
    p.add_argument("--task", choices=TASKS, default=None, help="with `use`: the task the model serves")
    p.add_argument("--keep", type=int, default=5, metavar="N",
                   help="with `prune`: earlier models kept per task and backend (default: 5); models this backend "
                        "no longer has are dropped too. Models are never deleted on the backend.")
    p.set_defaults(run=_run_models)

    p = verbs.add_parser(
        "evaluate",
        help="compare the fine-tuned model with the bot's own pipeline (accuracy, F1, latency, cost, few-shot curve)",
        description="Train the bot's own NLU pipeline and a fine-tuned model on the same examples (all of them, or k "
                    "per intent), ask both about the same held-out messages, and report accuracy, macro-F1, per-intent "
                    "scores, out-of-scope handling, latency, API calls, tokens and cost. Results go to --out as JSON, "
                    "Markdown and PNG.",
    )
    _add_project(p)
    p.add_argument("--baseline", default=None, metavar="CONFIG.yml",
                   help="baseline pipeline (default: the project's config.yml; Rasa's default pipeline when that "
                        "needs what is not installed here)")
    p.add_argument("--shots", default="all", metavar="LIST", help="examples per intent, e.g. 1,2,5,10,all (default: all)")
    p.add_argument("--repeats", type=int, default=1, metavar="N", help="seeds per shot count (default: 1)")
    p.add_argument("--test-file", default=None, metavar="FILE", help="use this NLU file as the test set")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="without --test-file: share of each intent held out for testing (default: 0.2)")
    p.add_argument("--seed", type=int, default=42, metavar="N", help="seed of the split and the samples (default: 42)")
    p.add_argument("--base-model", default=None, metavar="NAME", help="base model to fine-tune (default: gpt-4o-mini)")
    p.add_argument("--format", choices=FORMATS, default=None, help="record format (default: the base model's)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="fine-tune epochs (default: chosen from the data size)")
    p.add_argument("--out-of-scope-intent", default=None, metavar="INTENT",
                   help="the intent for messages the bot cannot handle (default: one named out_of_scope or oos)")
    p.add_argument("--out", default="evaluation", metavar="DIR")
    p.add_argument("--yes", action="store_true", help="do not ask before spending money on a remote API")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_evaluate)

    p = verbs.add_parser("local", help="the embedded OpenAI-compatible local backend")
    local_verbs = p.add_subparsers(dest="local_verb", metavar="VERB")
    local_verbs.required = True
    serve = local_verbs.add_parser("serve", help="run the local backend in the foreground")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--state", default=None, metavar="DIR", help="state directory (default: ./.rasa_gpt3/local)")
    serve.add_argument("--token", default=None, help="require this bearer token")
    serve.add_argument("--faults", default=None, metavar="SPEC",
                       help="inject faults into every request, e.g. 'status=429,first=3' or 'latency=0.2;drop,p=0.1'")
    serve.add_argument("--max-upload-mb", type=float, default=100.0, metavar="MB", help="upload size limit (default: 100)")
    serve.set_defaults(run=_run_local_serve)
    return parser


def _not_yet(verb: str) -> int:
    raise RasaGPT3Error(f"`rasa-gpt3 {verb}` is not available in this version yet")


def _run_export(args: argparse.Namespace) -> int:
    """Exports the project's data for one task or all, writes the files, prints the validation summary."""
    from rasa_gpt3.data.export import export_project, format_export_summary

    result = export_project(
        args.project,
        args.out,
        task=args.task,
        fmt=args.format,
        base_model=args.base_model,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        history=args.history,
        command=_export_command(args),
    )
    for line in result.project_warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(format_export_summary(result))
    return 1 if result.errors else 0


def _export_command(args: argparse.Namespace) -> str:
    """The export command with every option spelled out, so the manifest says exactly how to re-create it."""
    import shlex

    parts = ["rasa-gpt3", "export", "--project", args.project, "--out", args.out, "--task", args.task]
    if args.format:
        parts += ["--format", args.format]
    if args.base_model:
        parts += ["--base-model", args.base_model]
    parts += ["--valid-fraction", repr(args.valid_fraction), "--seed", str(args.seed), "--history", str(args.history)]
    return " ".join(shlex.quote(part) for part in parts)


def _run_validate(args: argparse.Namespace) -> int:
    """Checks a JSONL file and prints the report; with --fix also writes a repaired copy and checks that.

    Exit status: 1 when the file has errors, or with --fix when the repaired copy still has errors; else 0.
    """
    import json

    from rasa_gpt3.atomic_files import write_atomic
    from rasa_gpt3.data.validation import jsonl_text, read_jsonl, repair_records, validate_records

    parsed = read_jsonl(args.file)
    report = validate_records(parsed.records, fmt=args.format, base_model=args.base_model, lines=parsed.lines,
                              keys=parsed.texts, source=args.file)
    result = report.to_json()
    failed = not report.ok
    fixed_report = None
    if args.fix:
        repaired, actions = repair_records(parsed.records, fmt=args.format or report.stats["format"],
                                           base_model=args.base_model, lines=parsed.lines)
        write_atomic(args.fix, jsonl_text(repaired))
        fixed_report = validate_records(repaired, fmt=args.format or report.stats["format"],
                                        base_model=args.base_model, source=args.fix)
        result["fix"] = {"file": args.fix, "records": len(repaired), "actions": actions,
                         "errors": len(fixed_report.errors), "warnings": len(fixed_report.warnings)}
        failed = not fixed_report.ok
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(report.render())
        if fixed_report is not None:
            print(f"wrote {args.fix}: {len(repaired)} records" + ("" if actions else " (nothing to repair)"))
            for action in actions:
                print(f"  {action}")
            print(f"{args.fix}: errors: {len(fixed_report.errors)}, warnings: {len(fixed_report.warnings)}")
    return 1 if failed else 0


def _run_fine_tune(args: argparse.Namespace) -> int:
    """Exports one task, then fine-tunes it (or reuses an identical model) and records it in the registry."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.finetune import FollowInterrupted, ensure_fine_tuned
    from rasa_gpt3.progress import TqdmProgressBar

    _show_fine_tune_log()
    project = load_project(args.project)
    for line in project.warnings:
        print(f"warning: {line}", file=sys.stderr)
    exported = export_task(
        args.task, project.nlu, project.domain, project.stories, fmt=args.format, base_model=args.base_model
    )
    settings = _settings(args)
    try:
        outcome = ensure_fine_tuned(
            settings, exported, project_name=project.name, epochs=args.epochs, suffix=args.suffix,
            max_cost=args.max_cost, wait=not args.no_wait, force=args.force, progress=TqdmProgressBar(),
        )
    except FollowInterrupted as stop:
        print(stop.resume_hint(args.project), file=sys.stderr)
        return 130
    if outcome.model is None:
        print(f"job {outcome.job_id} is {outcome.status}; follow it with: rasa-gpt3 follow {outcome.job_id}"
              + _project_option(args))
        return 0
    how = "reused" if outcome.reused and not outcome.attached else "trained"
    print(f"{outcome.task}: {outcome.model} ({how}, job {outcome.job_id})")
    if outcome.entry is not None or outcome.reused:
        print(f"active {outcome.task} model on {settings.backend_name} in {settings.registry_path.name}")
    return 0


def _run_follow(args: argparse.Namespace) -> int:
    """Follows a job with a progress bar; a succeeded rasa_gpt3 job is recorded in the registry."""
    from rasa_gpt3.finetune import META_TASK, FollowInterrupted, follow
    from rasa_gpt3.progress import TqdmProgressBar

    _show_fine_tune_log()
    settings = _settings(args)
    try:
        job, entry = follow(settings, args.job, TqdmProgressBar())
    except FollowInterrupted as stop:
        print(stop.resume_hint(args.project), file=sys.stderr)
        return 130
    print(f"{job.id} succeeded: {job.fine_tuned_model}")
    if entry is not None:
        task = (job.metadata or {}).get(META_TASK)
        print(f"active {task} model on {settings.backend_name} in {settings.registry_path.name}")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    """Prints a job's state, what it trains, its error if it failed, and its latest events."""
    from rasa_gpt3.finetune import META_PROJECT, META_TASK, get_job, job_epochs
    from rasa_gpt3.progress import describe
    from rasa_gpt3.registry import timestamp_iso

    job, progress, events = get_job(_settings(args), args.job)
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

    job = cancel_job(_settings(args), args.job)
    print(f"{job.id}: {job.status}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    """Lists the project's fine-tuning jobs (found through their metadata), newest first."""
    from rasa_gpt3.finetune import META_TASK, list_jobs
    from rasa_gpt3.registry import timestamp_iso

    settings = _settings(args)
    name = None if args.all else _project_name(args)
    jobs = list_jobs(settings, name)
    if not jobs:
        which = "" if args.all else f" of project '{name}' (--all shows every job)"
        print(f"no fine-tuning jobs{which} on {settings.backend_name}")
        return 0
    rows = [("JOB", "STATUS", "TASK", "CREATED", "BASE MODEL", "FINE-TUNED MODEL")]
    for job in jobs:
        rows.append((job.id, job.status, (job.metadata or {}).get(META_TASK, "-"),
                     timestamp_iso(job.created_at), job.model, job.fine_tuned_model or "-"))
    print(_table(rows))
    return 0


def _run_results(args: argparse.Namespace) -> int:
    """Prints a job's result file as a table and, with --plot, writes its loss and accuracy curves as a PNG."""
    from rasa_gpt3.finetune import job_results
    from rasa_gpt3.training_results import format_table, plot_results

    job, table = job_results(_settings(args), args.job)
    print(format_table(table))
    if args.plot:
        path = plot_results(table, args.plot, title=f"{job.id}  {job.fine_tuned_model or job.model}")
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_models(args: argparse.Namespace) -> int:
    """The registry verbs: list the models, make one active for a task, prune the history."""
    from rasa_gpt3.finetune import prune_registry, use_model
    from rasa_gpt3.prompts import PROMPT_FORMAT_VERSION
    from rasa_gpt3.registry import Registry

    settings = _settings(args)
    if args.action == "use":
        if not args.model or not args.task:
            raise RasaGPT3Error("`rasa-gpt3 models use` needs a MODEL and --task (e.g. models use ft:... --task intent)")
        entry = use_model(settings, args.model, args.task)
        print(f"{entry.model} is now the active {args.task} model on {settings.backend_name} "
              f"in {settings.registry_path.name}")
        return 0
    if args.model or args.task:
        raise RasaGPT3Error(f"`rasa-gpt3 models {args.action}` takes no MODEL or --task (only `use` does)")
    if args.action == "prune":
        removed = prune_registry(settings, args.keep)
        for task, backend, entry in removed:
            print(f"removed {task} / {backend}: {entry.model}")
        print(f"pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {settings.registry_path.name}")
        return 0
    registry = Registry.load(settings.registry_path)
    rows = [("TASK", "BACKEND", "", "MODEL", "CREATED", "DATA", "VALID LOSS", "VALID ACC")]
    for task, backend, entry, active in registry.entries():
        note = "active" if active else ""
        if active and entry.prompt_format and entry.prompt_format != PROMPT_FORMAT_VERSION:
            note = "active (old prompt format)"
        metrics = entry.metrics
        rows.append((task, backend, note, entry.model, entry.created or "-", (entry.fingerprint or "-")[:12],
                     _metric(metrics.get("valid_loss")), _metric(metrics.get("valid_accuracy"))))
    if len(rows) == 1:
        print(f"no models in {settings.registry_path} yet; run `rasa-gpt3 fine-tune --task intent`")
        return 0
    print(_table(rows))
    return 0


def _metric(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _settings(args: argparse.Namespace):
    """Settings for the project of `args` (environment first: OPENAI_API_KEY, OPENAI_BASE_URL, RASA_GPT3_*)."""
    from rasa_gpt3.settings import Settings

    return Settings.from_env(args.project)


def _project_name(args: argparse.Namespace) -> str:
    """The project's name as jobs record it: its directory's name, as data.project.load_project names it."""
    from pathlib import Path

    return Path(args.project).resolve().name


def _project_option(args: argparse.Namespace) -> str:
    return "" if args.project in (".", None) else f" --project {args.project}"


def _show_fine_tune_log() -> None:
    """Shows the fine-tune lifecycle's info lines (cost estimate, reuse, upload, job id) on stderr."""
    import logging

    log = logging.getLogger("rasa_gpt3.finetune")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _table(rows: List[tuple]) -> str:
    """Rows of cells as left-aligned columns (the first row is the header)."""
    widths = [max(len(str(row[index])) for row in rows) for index in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _run_evaluate(args: argparse.Namespace) -> int:
    """Runs the evaluation, asking before a remote API spends money, and prints the tables and where the files are."""
    from pathlib import Path

    from rasa_gpt3.evaluate import EvaluationOptions, parse_shots, run_evaluation
    from rasa_gpt3.evaluation_report import curve_table, full_run_table

    options = EvaluationOptions(
        project=Path(args.project), out=Path(args.out), baseline=Path(args.baseline) if args.baseline else None,
        shots=parse_shots(args.shots), repeats=args.repeats, test_file=Path(args.test_file) if args.test_file else None,
        test_fraction=args.test_fraction, seed=args.seed, base_model=args.base_model, fmt=args.format,
        out_of_scope_intent=args.out_of_scope_intent, epochs=args.epochs, progress=not args.no_progress,
    )
    evaluation = run_evaluation(options, confirm=lambda plan: confirm_spending(plan.describe(), args.yes))
    results = evaluation.results
    print(full_run_table(results))
    print()
    print(curve_table(results))
    print()
    print(f"results in {args.out}/: " + ", ".join(sorted(path.name for path in evaluation.files.values())))
    return 0


def confirm_spending(what: str, yes: bool) -> bool:
    """Says what a run will spend and asks; with `yes` goes ahead; with no terminal to ask on, refuses in one line."""
    if yes:
        print(f"evaluate will spend {what}", file=sys.stderr)
        return True
    if not sys.stdin or not sys.stdin.isatty():
        raise RasaGPT3Error(f"evaluate would spend {what}; there is no terminal to ask, so pass --yes to go ahead")
    print(f"evaluate will spend {what}", file=sys.stderr)
    answer = input("go ahead? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _run_local_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rasa_gpt3.local.embedded import BackendStartError, serve_forever
    from rasa_gpt3.local.faults import FaultSpecError, parse_faults
    from rasa_gpt3.settings import Settings

    state = Path(args.state) if args.state else Settings.from_env(Path.cwd()).local_state_dir
    try:
        parse_faults(args.faults or "")
    except FaultSpecError as error:
        raise RasaGPT3Error(f"--faults: {error}") from None
    if args.max_upload_mb <= 0:
        raise RasaGPT3Error("--max-upload-mb must be positive")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can use it", file=sys.stderr)

    def ready(port: int) -> None:
        print(f"local backend on http://{args.host}:{port}/v1 (state: {state}); Ctrl-C stops it", flush=True)
        print(f"use it with: OPENAI_BASE_URL=http://{args.host}:{port}/v1 OPENAI_API_KEY={args.token or 'local'}",
              flush=True)

    try:
        serve_forever(state, host=args.host, port=args.port, token=args.token, faults=args.faults,
                      max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), on_ready=ready)
    except BackendStartError as error:
        raise RasaGPT3Error(str(error)) from None
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `rasa-gpt3` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except RasaGPT3Error as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
