"""`rasa-gpt3 evaluate`: the fine-tuned model against the bot's own NLU pipeline on the same messages."""

from __future__ import annotations

import argparse
import sys

from rasa_gpt3.cli.arguments import Verbs, add_base_model, add_epochs, add_format, add_project, add_verb
from rasa_gpt3.errors import RasaGPT3Error


def add_verbs(verbs: Verbs) -> None:
    """Adds `evaluate`."""
    parser = add_verb(
        verbs,
        "evaluate",
        summary="compare the fine-tuned model with the bot's own pipeline (accuracy, F1, latency, cost, "
        "few-shot curve)",
        description="Trains the bot's own NLU pipeline and a fine-tuned model on the same examples (all of them, or "
        "k per intent), asks both about the same held-out messages, and reports accuracy, macro-F1, per-intent "
        "scores, out-of-scope handling, latency, API calls, tokens and cost. Results go to --out as JSON, Markdown "
        "and PNG. On a remote API it says what it will spend and asks first.",
        examples=[
            "rasa-gpt3 evaluate --project path/to/bot  # all examples, 20% of each intent held out",
            "rasa-gpt3 evaluate --shots 1,2,5,10,all --repeats 3  # the few-shot curve",
            "rasa-gpt3 evaluate --test-file tests/test_nlu.yml --out results  # a fixed test set",
            "rasa-gpt3 evaluate --models ft:gpt-4o-mini-2024-07-18:acme:bot:AbC,ft:gpt-4.1-mini-2025-04-14:acme:bot:XyZ"
            "  # existing models vs. the model in use, before `rasa-gpt3 models use`",
        ],
    )
    add_project(parser)
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="CONFIG.yml",
        help="baseline pipeline (default: the project's config.yml; Rasa's default pipeline when that needs what "
        "is not installed here)",
    )
    parser.add_argument(
        "--shots", default="all", metavar="LIST", help="examples per intent, e.g. 1,2,5,10,all (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="seeds per shot count (default: 1)")
    parser.add_argument("--test-file", default=None, metavar="FILE", help="use this NLU file as the test set")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="without --test-file: share of each intent held out for testing (default: 0.2)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, metavar="N", help="seed of the split and the samples (default: 42)"
    )
    add_base_model(parser, purpose="to fine-tune")
    add_format(parser)
    add_epochs(parser)
    parser.add_argument(
        "--out-of-scope-intent",
        default=None,
        metavar="INTENT",
        help="the intent for messages the bot cannot handle (default: one named out_of_scope or oos)",
    )
    parser.add_argument(
        "--models",
        default=None,
        metavar="A,B[,C]",
        help="compare these existing intent models (ids, or `active`; MODEL@BACKEND for another backend) and the "
        "model in use with the baseline, and say of each whether it is at least as good; nothing is fine-tuned",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help="with --models: how much lower accuracy and macro-F1 (and higher fallback rate) may be and still count "
        "as at least as good (default: 0.01)",
    )
    parser.add_argument("--out", default="evaluation", metavar="DIR", help="where the results go (default: evaluation)")
    parser.add_argument("--yes", action="store_true", help="do not ask before spending money on a remote API")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    """Runs the evaluation, asking before a remote API spends money, and prints the tables and where the files are."""
    from pathlib import Path

    from rasa_gpt3.evaluation.report import curve_table, full_run_table, threshold_line
    from rasa_gpt3.evaluation.runner import EvaluationOptions, parse_shots, run_evaluation

    if args.models is not None:
        return _run_comparison(args)
    if args.tolerance is not None:
        raise RasaGPT3Error("--tolerance goes with --models")
    options = EvaluationOptions(
        project=Path(args.project),
        out=Path(args.out),
        baseline=Path(args.baseline) if args.baseline else None,
        shots=parse_shots(args.shots),
        repeats=args.repeats,
        test_file=Path(args.test_file) if args.test_file else None,
        test_fraction=args.test_fraction,
        seed=args.seed,
        base_model=args.base_model,
        fmt=args.format,
        out_of_scope_intent=args.out_of_scope_intent,
        epochs=args.epochs,
        progress=not args.no_progress,
    )
    evaluation = run_evaluation(options, confirm=lambda plan: confirm_spending(plan.describe(), args.yes))
    results = evaluation.results
    print(full_run_table(results))
    print()
    print(threshold_line(results))
    print()
    print(curve_table(results))
    print()
    print(f"results in {args.out}/: " + ", ".join(sorted(path.name for path in evaluation.files.values())))
    return 0


def _run_comparison(args: argparse.Namespace) -> int:
    """`evaluate --models`: the side-by-side table, one verdict line per model, and where the files are."""
    from pathlib import Path

    from rasa_gpt3.evaluation.candidates import parse_model_references
    from rasa_gpt3.evaluation.comparison import DEFAULT_TOLERANCE, run_comparison
    from rasa_gpt3.evaluation.report import comparison_legend, comparison_table
    from rasa_gpt3.evaluation.runner import EvaluationOptions

    fine_tune_only = [
        flag
        for flag, given in (
            ("--shots", args.shots != "all"),
            ("--repeats", args.repeats != 1),
            ("--base-model", args.base_model is not None),
            ("--format", args.format is not None),
            ("--epochs", args.epochs is not None),
        )
        if given
    ]
    if fine_tune_only:
        raise RasaGPT3Error(f"--models compares existing models; {', '.join(fine_tune_only)} only apply to fine-tuning")
    options = EvaluationOptions(
        project=Path(args.project),
        out=Path(args.out),
        baseline=Path(args.baseline) if args.baseline else None,
        test_file=Path(args.test_file) if args.test_file else None,
        test_fraction=args.test_fraction,
        seed=args.seed,
        out_of_scope_intent=args.out_of_scope_intent,
        progress=not args.no_progress,
        models=args.models,
        tolerance=args.tolerance,
    )
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    comparison = run_comparison(
        options,
        parse_model_references(args.models),
        tolerance,
        confirm=lambda plan: confirm_spending(plan.describe(), args.yes),
    )
    results = comparison.results
    print(comparison_table(results))
    print()
    for line in comparison_legend(results):
        print(line)
    print()
    for model in results["models"]:
        print(model["verdict"])
    print()
    print(f"results in {args.out}/: " + ", ".join(sorted(path.name for path in comparison.files.values())))
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
