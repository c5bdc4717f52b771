"""banking77 few-shot benchmark: `rasa-gpt3 evaluate` at 10 and 30 examples per intent, 3 repeats; prints the tables.

banking77 (77 fine-grained intents of a bank's customers) becomes a Rasa project in a temporary directory:
data/nlu.yml from the official train CSV, tests/test_nlu.yml from the official test CSV (3,080 messages, the test
set every banking77 paper uses), a domain listing the intents, and a config.yml with a typical Rasa bot pipeline.
The evaluation then runs exactly as `rasa-gpt3 evaluate --test-file tests/test_nlu.yml` would.

    .venv/bin/python benchmarks/evaluate_banking77.py                        # DIET baseline, 10,30 shots x 3
    .venv/bin/python benchmarks/evaluate_banking77.py --baseline light       # sklearn baseline, no TensorFlow

Baselines: `diet` is Rasa's default NLU pipeline without ResponseSelector (no retrieval intents here) and with the
DIET epochs of `--diet-epochs` (Rasa's default: 100); `light` swaps DIET for Rasa's LogisticRegressionClassifier on
the same features, for machines where DIET on 77 intents is too slow. Without an OPENAI_API_KEY the fine-tuned side
runs on the embedded local backend (free); with one it asks before spending (or pass --yes).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "banking77" / "banking_data"

FEATURES = [
    {"name": "WhitespaceTokenizer"},
    {"name": "RegexFeaturizer"},
    {"name": "LexicalSyntacticFeaturizer"},
    {"name": "CountVectorsFeaturizer"},
    {"name": "CountVectorsFeaturizer", "analyzer": "char_wb", "min_ngram": 1, "max_ngram": 4},
]
FALLBACK = {"name": "FallbackClassifier", "threshold": 0.3, "ambiguity_threshold": 0.1}


def read_csv(path: Path) -> List[Tuple[str, str]]:
    """(text, category) rows of a banking77 CSV file."""
    with path.open(newline="", encoding="utf-8") as stream:
        # a few texts start with line breaks; YAML examples are one line each
        return [(" ".join(row["text"].split()), row["category"]) for row in csv.DictReader(stream)]


def pipeline(baseline: str, diet_epochs: int) -> List[Dict]:
    """The baseline pipeline: typical Rasa features, then DIET or logistic regression, then FallbackClassifier."""
    if baseline == "diet":
        classifier = {"name": "DIETClassifier", "epochs": diet_epochs, "constrain_similarities": True}
    else:
        classifier = {"name": "LogisticRegressionClassifier"}
    return FEATURES + [classifier, FALLBACK]


def write_project(directory: Path, baseline: str, diet_epochs: int) -> Path:
    """Writes banking77 as a Rasa project into `directory`; returns the test file."""
    import contextlib
    import io
    import warnings

    import yaml

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # Rasa's imports warn about SQLAlchemy 2.0, jax and pyparsing names
        from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter
        from rasa.shared.nlu.training_data.message import Message
        from rasa.shared.nlu.training_data.training_data import TrainingData

    train, test = read_csv(CORPUS / "train.csv"), read_csv(CORPUS / "test.csv")

    def nlu(rows: List[Tuple[str, str]]) -> str:
        return RasaYAMLWriter().dumps(TrainingData([Message.build(text=text, intent=intent) for text, intent in rows]))

    (directory / "data").mkdir(parents=True)
    (directory / "tests").mkdir()
    (directory / "data" / "nlu.yml").write_text(nlu(train), encoding="utf-8")
    test_file = directory / "tests" / "test_nlu.yml"
    test_file.write_text(nlu(test), encoding="utf-8")
    intents = sorted({intent for _, intent in train})
    (directory / "domain.yml").write_text(yaml.safe_dump({"version": "3.1", "intents": intents}), encoding="utf-8")
    config = {
        "recipe": "default.v1",
        "language": "en",
        "assistant_id": "banking77",
        "pipeline": pipeline(baseline, diet_epochs),
    }
    (directory / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return test_file


def main(argv: List[str] = None) -> int:
    """Runs the benchmark and prints the few-shot table and the largest run side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", default="10,30", help="examples per intent (default: 10,30)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per shot count (default: 3)")
    parser.add_argument(
        "--baseline", choices=("diet", "light"), default="diet", help="baseline classifier (default: diet)"
    )
    parser.add_argument("--diet-epochs", type=int, default=100, help="DIET epochs (default: 100, Rasa's default)")
    parser.add_argument("--out", default=None, help="keep the results here (default: a temporary directory)")
    parser.add_argument("--yes", action="store_true", help="with an API key: spend without asking")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from rasa_gpt3.cli.evaluate import confirm_spending
    from rasa_gpt3.errors import RasaGPT3Error
    from rasa_gpt3.evaluation.report import curve_table, full_run_table
    from rasa_gpt3.evaluation.runner import EvaluationOptions, parse_shots, run_evaluation

    if not CORPUS.is_dir():
        print(f"error: banking77 not found at {CORPUS}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="banking77-") as scratch:
        project = Path(scratch) / "banking77"
        test_file = write_project(project, args.baseline, args.diet_epochs)
        out = Path(args.out) if args.out else Path(scratch) / "evaluation"
        command = "python benchmarks/evaluate_banking77.py " + " ".join(argv if argv is not None else sys.argv[1:])
        options = EvaluationOptions(
            project=project,
            out=out,
            shots=parse_shots(args.shots),
            repeats=args.repeats,
            test_file=test_file,
            progress=not args.no_progress,
            command=command.strip(),
        )
        started = time.perf_counter()
        try:
            evaluation = run_evaluation(options, confirm=lambda plan: confirm_spending(plan.describe(), args.yes))
        except RasaGPT3Error as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        minutes = (time.perf_counter() - started) / 60
        results = evaluation.results
        print(
            f"banking77: {results['data']['test']} test messages, {results['data']['intents']} intents; "
            f"baseline: {results['baseline']['source']} ({args.baseline}); fine-tuned: {results['base_model']} "
            f"on the {results['backend']} backend; {minutes:.1f} min"
        )
        print()
        print(curve_table(results))
        print()
        print(full_run_table(results))
        if args.out:
            print(f"\nresults in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
