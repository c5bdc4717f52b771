"""`rasa-gpt3 export` and `rasa-gpt3 validate`: the bot's data as fine-tune JSONL, and checks of any such file."""

from __future__ import annotations

import argparse
import sys

from rasa_gpt3.cli.arguments import Verbs, add_base_model, add_format, add_project, add_task, add_verb


def add_verbs(verbs: Verbs) -> None:
    """Adds `export` and `validate`."""
    parser = add_verb(
        verbs,
        "export",
        summary="write the bot's training data as fine-tune JSONL (train/valid split, labels, manifest)",
        description="Loads the bot with Rasa's own importer, exactly as `rasa train` reads it, and writes "
        "train.jsonl, valid.jsonl, labels and a manifest per task into --out/<task>/, then prints the validation "
        "summary. Exit status 1 when the data has errors.",
        examples=[
            "rasa-gpt3 export --project path/to/bot --out gpt3_data  # the intent task",
            "rasa-gpt3 export --project . --out gpt3_data --task all  # intent, entities and response",
            "rasa-gpt3 export --out gpt3_data --format completion --base-model babbage-002  # prompt/completion",
        ],
    )
    add_project(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (one folder per task)")
    add_task(parser, allow_all=True)
    add_format(parser)
    parser.add_argument(
        "--valid-fraction", type=float, default=0.2, metavar="F", help="share held out for validation (default: 0.2)"
    )
    parser.add_argument("--seed", type=int, default=42, metavar="N", help="seed of the stratified split (default: 42)")
    add_base_model(parser, purpose="to size tokens and cost for")
    parser.add_argument(
        "--history", type=int, default=3, metavar="N", help="response task: turns of history per record (default: 3)"
    )
    parser.set_defaults(run=_run_export)

    parser = add_verb(
        verbs,
        "validate",
        summary="check a fine-tune JSONL file (format, duplicates, tokens, labels, cost)",
        description="Runs every check of OpenAI's legacy prepare_data tool and of its chat data guide, plus "
        "Rasa-aware ones, and estimates the cost. With --fix it also writes a repaired copy, says what changed and "
        "checks the copy. Exit status 1 when the file (or, with --fix, the repaired copy) has errors.",
        examples=[
            "rasa-gpt3 validate gpt3_data/intent/train.jsonl  # human report",
            "rasa-gpt3 validate train.jsonl --json  # the report as JSON, for machines",
            "rasa-gpt3 validate someone_elses.jsonl --fix repaired.jsonl  # drop or repair what can be",
        ],
    )
    parser.add_argument("file", metavar="FILE.jsonl", help="the JSONL file to check")
    add_format(parser, default_text="detected from the file")
    add_base_model(parser, purpose="for token limits and cost")
    parser.add_argument("--fix", default=None, metavar="OUT", help="write a repaired copy to OUT and say what changed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=_run_validate)


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

    from rasa_gpt3.data.validation import read_jsonl, repair_records, unreadable_report, validate_records, write_jsonl
    from rasa_gpt3.errors import DataError

    try:
        parsed = read_jsonl(args.file)
    except DataError as error:
        if args.json:
            # a machine reading stdout gets a report too; the one line still goes to stderr
            print(json.dumps(unreadable_report(args.file, error).to_json(), ensure_ascii=False, indent=2))
        raise
    report = validate_records(
        parsed.records,
        fmt=args.format,
        base_model=args.base_model,
        lines=parsed.lines,
        keys=parsed.texts,
        source=args.file,
    )
    result = report.to_json()
    failed = not report.ok
    fixed_report = None
    if args.fix:
        fmt = args.format or report.stats["format"]
        repaired, actions = repair_records(parsed.records, fmt=fmt, base_model=args.base_model, lines=parsed.lines)
        write_jsonl(args.fix, repaired)
        fixed_report = validate_records(repaired, fmt=fmt, base_model=args.base_model, source=args.fix)
        result["fix"] = {
            "file": args.fix,
            "records": len(repaired),
            "actions": actions,
            "errors": len(fixed_report.errors),
            "warnings": len(fixed_report.warnings),
        }
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
