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
    p.set_defaults(run=_run_models)

    p = verbs.add_parser(
        "evaluate",
        help="compare the fine-tuned model with the bot's own pipeline (accuracy, F1, latency, cost, few-shot curve)",
    )
    _add_project(p)
    p.add_argument("--baseline", default=None, metavar="CONFIG.yml", help="baseline pipeline (default: the project's config.yml)")
    p.add_argument("--shots", default="all", metavar="LIST", help="examples per intent, e.g. 1,2,5,10,all (default: all)")
    p.add_argument("--repeats", type=int, default=1, metavar="N", help="seeds per shot count (default: 1)")
    p.add_argument("--test-file", default=None, metavar="FILE", help="use this NLU file as the test set")
    p.add_argument("--out", default="evaluation", metavar="DIR")
    p.add_argument("--yes", action="store_true", help="do not ask before spending money on a remote API")
    p.set_defaults(run=_run_evaluate)

    p = verbs.add_parser("local", help="the embedded OpenAI-compatible local backend")
    local_verbs = p.add_subparsers(dest="local_verb", metavar="VERB")
    local_verbs.required = True
    serve = local_verbs.add_parser("serve", help="run the local backend in the foreground")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--state", default=None, metavar="DIR", help="state directory (default: ./.rasa_gpt3/local)")
    serve.add_argument("--token", default=None, help="require this bearer token")
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
    return _not_yet("validate")


def _run_fine_tune(args: argparse.Namespace) -> int:
    return _not_yet("fine-tune")


def _run_follow(args: argparse.Namespace) -> int:
    return _not_yet("follow")


def _run_status(args: argparse.Namespace) -> int:
    return _not_yet("status")


def _run_cancel(args: argparse.Namespace) -> int:
    return _not_yet("cancel")


def _run_list(args: argparse.Namespace) -> int:
    return _not_yet("list")


def _run_results(args: argparse.Namespace) -> int:
    return _not_yet("results")


def _run_models(args: argparse.Namespace) -> int:
    return _not_yet("models")


def _run_evaluate(args: argparse.Namespace) -> int:
    return _not_yet("evaluate")


def _run_local_serve(args: argparse.Namespace) -> int:
    return _not_yet("local serve")


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
