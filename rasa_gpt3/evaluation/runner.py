"""Runs `rasa-gpt3 evaluate`: the options, the plan of runs and what it would cost, both sides per run, the results."""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.data.base_models import check_epochs
from rasa_gpt3.data.export import full_intent, text_examples
from rasa_gpt3.errors import BudgetError, DataError
from rasa_gpt3.evaluation.baseline import FallbackRule, RasaBaseline, resolve_baseline
from rasa_gpt3.evaluation.finetuned import FineTunedModel, FineTunedSide
from rasa_gpt3.evaluation.metrics import few_shot_curve, summarize_predictions
from rasa_gpt3.evaluation.report import write_outputs
from rasa_gpt3.evaluation.results import ALL, BASELINE, FINE_TUNED, RESULTS_VERSION, Prediction, shots_name
from rasa_gpt3.evaluation.samples import find_out_of_scope_intent, nlu_subset, sample_shots, split_train_test
from rasa_gpt3.evaluation.threshold import recommend_from_predictions, recommendation_record

# ---------------------------------------------------------------------------------------------- options


def parse_shots(text: str) -> List[Optional[int]]:
    """Parses `--shots` ("1,2,5,all") into sorted distinct counts, None meaning all; raises DataError."""
    values: List[Optional[int]] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == ALL:
            value: Optional[int] = None
        else:
            try:
                value = int(part)
            except ValueError:
                raise DataError(f"--shots takes whole numbers and 'all' separated by commas, not '{part}'") from None
            if value < 1:
                raise DataError(f"--shots values must be at least 1, not {value}")
        if value not in values:
            values.append(value)
    if not values:
        raise DataError("--shots is empty; give e.g. 1,2,5,10,all")
    return sorted(values, key=lambda v: math.inf if v is None else v)


@dataclass
class EvaluationOptions:
    """What `rasa-gpt3 evaluate` was asked to do."""

    project: Path
    out: Path
    baseline: Optional[Path] = None
    shots: Sequence[Optional[int]] = (None,)
    repeats: int = 1
    test_file: Optional[Path] = None
    test_fraction: float = 0.2
    seed: int = 42
    base_model: Optional[str] = None
    fmt: Optional[str] = None
    out_of_scope_intent: Optional[str] = None
    epochs: Optional[int] = None
    progress: bool = True
    command: Optional[str] = None
    # `--models`: compare these existing models instead of fine-tuning (see comparison.py), with this tolerance
    models: Optional[str] = None
    tolerance: Optional[float] = None

    def as_command(self) -> str:
        """The `rasa-gpt3 evaluate` command line that runs this evaluation (what the report shows to reproduce it)."""
        parts = ["rasa-gpt3", "evaluate", "--project", str(self.project)]
        if self.baseline is not None:
            parts += ["--baseline", str(self.baseline)]
        if self.models is not None:
            parts += ["--models", self.models]
            if self.tolerance is not None:
                parts += ["--tolerance", f"{self.tolerance:g}"]
        else:
            parts += ["--shots", ",".join(shots_name(s) for s in self.shots), "--repeats", str(self.repeats)]
        if self.test_file is not None:
            parts += ["--test-file", str(self.test_file)]
        elif self.test_fraction != 0.2:
            parts += ["--test-fraction", f"{self.test_fraction:g}"]
        if self.seed != 42:
            parts += ["--seed", str(self.seed)]
        for flag, value in (
            ("--base-model", self.base_model),
            ("--format", self.fmt),
            ("--epochs", self.epochs),
            ("--out-of-scope-intent", self.out_of_scope_intent),
        ):
            if value is not None:
                parts += [flag, str(value)]
        parts += ["--out", str(self.out)]
        return " ".join(shlex.quote(part) for part in parts)

    def check(self) -> None:
        """Raises DataError (one line) for option values that cannot work."""
        if self.repeats < 1:
            raise DataError(f"--repeats must be at least 1, not {self.repeats}")
        if self.test_file is None and not 0 < self.test_fraction < 1:
            raise DataError(f"--test-fraction must be between 0 and 1, not {self.test_fraction}")
        if self.test_file is not None and not Path(self.test_file).is_file():
            raise DataError(f"test file '{self.test_file}' does not exist")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise DataError(f"baseline config '{self.baseline}' does not exist")
        check_epochs(self.epochs)
        if self.tolerance is not None and not 0 <= self.tolerance < 1:
            raise DataError(f"--tolerance must be between 0 and 1, not {self.tolerance}")


def training_and_test_data(project: Any, options: EvaluationOptions) -> Tuple[Any, List[Any], str]:
    """(training pool TrainingData, test examples, where the test set came from) for the loaded `project`."""
    from rasa_gpt3.data.project import load_project

    if options.test_file is not None:
        test_project = load_project(options.project, data=options.test_file)
        train_pool = nlu_subset(
            sorted(text_examples(project.nlu), key=lambda m: (full_intent(m), m.get("text"))), project.nlu
        )
        test_examples = text_examples(test_project.nlu)
        test_source = f"--test-file {options.test_file}"
    else:
        train_pool, test_data = split_train_test(project.nlu, options.test_fraction, options.seed)
        test_examples = text_examples(test_data)
        test_source = f"stratified split: {options.test_fraction:g} of each intent held out, seed {options.seed}"
    if not test_examples:
        raise DataError(f"the test set ({test_source}) has no examples with text and intent")
    trained = sorted({m.get("intent") for m in text_examples(train_pool)})
    if len(trained) < 2:
        raise DataError(
            f"evaluate compares intent classifiers, which needs at least two intents in the training data; "
            f"{options.project} has {len(trained)} ({', '.join(trained) or 'none'})"
        )
    return train_pool, test_examples, test_source


# ---------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunSpec:
    """One training of both sides: shots per intent (None = all), which repeat, and its seed."""

    shots: Optional[int]
    repeat: int
    seed: int

    @property
    def name(self) -> str:
        """A directory-safe name, e.g. `10-shot-r1` or `all-r0`."""
        return f"{shots_name(self.shots)}{'-shot' if self.shots else ''}-r{self.repeat}"


def plan_runs(shots: Sequence[Optional[int]], repeats: int, seed: int) -> List[RunSpec]:
    """Every (shots, repeat) to run, smallest shots first; `all` once."""
    runs = []
    for value in shots:
        for repeat in range(1 if value is None else repeats):
            runs.append(RunSpec(value, repeat, seed + repeat))
    return runs


@dataclass
class CostPlan:
    """What an evaluation would spend on a remote API before it starts."""

    backend: str
    base_model: str
    fine_tunes: int
    training_usd: float
    classifications: int
    serving_usd: float

    @property
    def total_usd(self) -> float:
        """Training plus serving."""
        return self.training_usd + self.serving_usd

    def describe(self) -> str:
        """One line for the confirmation prompt."""
        return (
            f"about ${self.total_usd:.2f} on {self.backend} ({self.fine_tunes} fine-tunes of {self.base_model}: "
            f"${self.training_usd:.2f}; {self.classifications:,} classification calls: ${self.serving_usd:.2f}; "
            "models already trained on identical data are reused for free)"
        )


@dataclass
class Evaluation:
    """The finished evaluation: the results document, every prediction, and the files written."""

    results: Dict[str, Any]
    predictions: Dict[Tuple[str, int, str], List[Prediction]]
    files: Dict[str, Path]


def evaluation_settings(out: Path) -> Any:
    """Settings that keep the registry and the local backend state in `out` (gpt3_models.yml, .rasa_gpt3/local)."""
    from rasa_gpt3.settings import Settings

    return Settings.from_env(out)


def progress_bar(enabled: bool, **options: Any) -> Any:
    """A tqdm progress bar, or a silent one when not `enabled`."""
    from tqdm import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **options)


def _messages_bar(enabled: bool, total: int, desc: str) -> Any:
    """The inner bar of one side asking about every test message of a run (under the bar of the runs)."""
    return progress_bar(enabled, total=total, desc=desc, unit="msg", leave=False, position=1)


def import_rasa_quietly() -> None:
    """Imports the parts of Rasa an evaluation uses, without the warnings their imports print."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Rasa's imports warn about SQLAlchemy 2.0, jax and pyparsing names, and some of them reset the warning
    # filters while they load; nothing a user can act on, so their stderr is dropped (exceptions still propagate)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import rasa.core.agent  # noqa: F401
        import rasa.model_training  # noqa: F401
        import rasa.nlu.test  # noqa: F401


def run_evaluation(options: EvaluationOptions, confirm: Optional[Callable[[CostPlan], bool]] = None) -> Evaluation:
    """Runs the whole evaluation and writes results.json, predictions.jsonl, summary.md and plots into `options.out`.

    `confirm` is asked before anything is spent on a remote API; without it (or when it says no) a remote run is
    refused with BudgetError. Raises ProjectError, DataError, BackendError or BudgetError with one line.
    """
    options.check()
    import_rasa_quietly()
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.prompts import normalize_text

    project = load_project(options.project)
    out = Path(options.out)
    settings = evaluation_settings(out)

    train_pool, test_examples, test_source = training_and_test_data(project, options)
    intents = sorted({m.get("intent") for m in text_examples(train_pool)} | {m.get("intent") for m in test_examples})
    training_texts = {normalize_text(m.get("text")) for m in text_examples(train_pool)}
    test_in_training = sum(1 for m in test_examples if normalize_text(m.get("text")) in training_texts)
    oos_intent = find_out_of_scope_intent(intents, options.out_of_scope_intent)

    baseline = resolve_baseline(project.config if options.baseline is None else None, options.baseline)
    fallback = FallbackRule.from_pipeline(baseline.config.get("pipeline")) or FallbackRule.from_pipeline(
        (project.config or {}).get("pipeline")
    )

    runs = plan_runs(options.shots, options.repeats, options.seed)
    fine_tuned = FineTunedSide(settings, project.name, options.base_model, options.fmt, options.epochs, fallback)
    samples = {run: sample_shots(train_pool, run.shots, run.seed) for run in runs}
    exports = {run: fine_tuned.export(samples[run], run.seed) for run in runs}
    plan = _cost_plan(settings, fine_tuned, exports, [m.get("text") for m in test_examples])
    if not settings.uses_local_backend:
        if confirm is None or not confirm(plan):
            raise BudgetError(f"evaluate would spend {plan.describe()}; not confirmed, nothing was spent")

    work_dir = Path(tempfile.mkdtemp(prefix="rasa-gpt3-evaluate-"))
    results_runs: List[Dict[str, Any]] = []
    predictions: Dict[Tuple[str, int, str], List[Prediction]] = {}
    rasa_side = RasaBaseline(baseline, project.domain, work_dir, fallback)
    try:
        overall = progress_bar(options.progress, total=len(runs), desc="evaluate", unit="run", position=0)
        with overall:
            for run in runs:
                sample = samples[run]
                n_train = len(text_examples(sample))
                overall.set_description(f"{run.name}: training the baseline")
                started = time.perf_counter()
                model_path = rasa_side.train(sample, run.name)
                baseline_seconds = time.perf_counter() - started
                with _messages_bar(options.progress, len(test_examples), f"{run.name} {BASELINE}") as bar:
                    baseline_predictions = rasa_side.predict(model_path, test_examples, bar)
                shutil.rmtree(work_dir / run.name, ignore_errors=True)

                overall.set_description(f"{run.name}: fine-tuning")
                model = fine_tuned.train(exports[run], run.seed)
                calls_before = fine_tuned.caller.calls_sent
                with _messages_bar(options.progress, len(test_examples), f"{run.name} {FINE_TUNED}") as bar:
                    tuned_predictions = fine_tuned.predict(model, exports[run], test_examples, bar)
                api_calls = fine_tuned.caller.calls_sent - calls_before

                predictions[(shots_name(run.shots), run.repeat, BASELINE)] = baseline_predictions
                predictions[(shots_name(run.shots), run.repeat, FINE_TUNED)] = tuned_predictions
                results_runs.append(
                    _run_result(
                        run,
                        n_train,
                        baseline_predictions,
                        baseline_seconds,
                        tuned_predictions,
                        model,
                        api_calls,
                        exports[run],
                        oos_intent,
                    )
                )
                overall.update(1)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    results = {
        "version": RESULTS_VERSION,
        "command": options.command or options.as_command(),
        "project": {"name": project.name, "path": str(options.project)},
        "backend": settings.backend_name,
        "base_model": next(iter(exports.values())).base_model.name,
        "format": next(iter(exports.values())).fmt,
        "baseline": {"source": baseline.source, "dropped": baseline.dropped, "config": baseline.config},
        "data": {
            "test_source": test_source,
            "train_pool": len(text_examples(train_pool)),
            "test": len(test_examples),
            # test messages whose text is also a training example (only possible with --test-file)
            "test_in_training": test_in_training,
            "intents": len(intents),
            "out_of_scope_intent": oos_intent,
            "fallback_rule": asdict(fallback) if fallback else None,
        },
        "shots": [shots_name(s) for s in options.shots],
        "repeats": options.repeats,
        "seed": options.seed,
        "cost_plan": asdict(plan),
        "runs": results_runs,
        "curve": few_shot_curve(results_runs),
        "full_run": _full_run_index(results_runs),
        "totals": _totals(results_runs),
    }
    full = results_runs[results["full_run"]]
    # the fine-tuned side's confidences in the run with the most data: what the bot's GPT3IntentClassifier would give
    recommendation = recommend_from_predictions(predictions[(full["shots"], full["repeat"], FINE_TUNED)], oos_intent)
    results["recommended_threshold"] = recommendation_record(recommendation, FINE_TUNED)
    files = write_outputs(out, results, predictions)
    return Evaluation(results=results, predictions=predictions, files=files)


def _cost_plan(settings: Any, side: FineTunedSide, exports: Dict[RunSpec, Any], test_texts: Sequence[str]) -> CostPlan:
    training = serving = 0.0
    for exported in exports.values():
        cost = side.estimate(exported, test_texts)
        training += cost[0]
        serving += cost[1]
    first = next(iter(exports.values()))
    return CostPlan(
        backend=settings.backend_name,
        base_model=first.base_model.name,
        fine_tunes=len(exports),
        training_usd=round(training, 6),
        classifications=len(test_texts) * len(exports),
        serving_usd=round(serving, 6),
    )


def _run_result(
    run: RunSpec,
    n_train: int,
    baseline_predictions: List[Prediction],
    baseline_seconds: float,
    tuned_predictions: List[Prediction],
    model: FineTunedModel,
    api_calls: int,
    exported: Any,
    oos_intent: Optional[str],
) -> Dict[str, Any]:
    from rasa_gpt3.inference.calls import CallPolicy

    base = summarize_predictions(baseline_predictions, oos_intent)
    base.update(
        {
            "train_seconds": round(baseline_seconds, 3),
            "api_calls": 0,
            "cost_usd": {"training": 0.0, "serving": 0.0, "per_1000_messages": 0.0},
        }
    )
    tuned = summarize_predictions(tuned_predictions, oos_intent)
    # calls slower than the NLU component's default budget would have fallen back inside the bot
    budget_ms = CallPolicy().timeout * 1000
    tuned["latency_ms"]["over_nlu_budget"] = sum(1 for p in tuned_predictions if p.latency_ms > budget_ms)
    serving = exported.base_model.usage_cost(tuned["prompt_tokens"], tuned["completion_tokens"])
    tuned.update(
        {
            "train_seconds": round(model.seconds, 3),
            "model": model.model,
            "job": model.job_id,
            "reused": model.reused,
            "api_calls": api_calls,
            "trained_tokens": model.trained_tokens,
            "cost_usd": {
                "training": round(model.training_usd, 6),
                "serving": round(serving, 6),
                "per_1000_messages": round(serving / len(tuned_predictions) * 1000, 6) if tuned_predictions else 0.0,
            },
        }
    )
    return {
        "shots": shots_name(run.shots),
        "repeat": run.repeat,
        "seed": run.seed,
        "n_train": n_train,
        "systems": {BASELINE: base, FINE_TUNED: tuned},
    }


def _full_run_index(runs: Sequence[Dict[str, Any]]) -> int:
    """The run with the most training data (the first repeat of the largest shot count)."""

    def size(item: Tuple[int, Dict[str, Any]]) -> Tuple[float, int]:
        index, run = item
        return (math.inf if run["shots"] == ALL else float(run["shots"]), -run["repeat"])

    return max(enumerate(runs), key=size)[0]


def _totals(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    tuned = [run["systems"][FINE_TUNED] for run in runs]
    return {
        "fine_tunes": len(tuned),
        "reused_models": sum(1 for t in tuned if t.get("reused")),
        "api_calls": sum(t["api_calls"] for t in tuned),
        "prompt_tokens": sum(t["prompt_tokens"] for t in tuned),
        "completion_tokens": sum(t["completion_tokens"] for t in tuned),
        "trained_tokens": sum(t["trained_tokens"] for t in tuned),
        "training_usd": round(sum(t["cost_usd"]["training"] for t in tuned), 6),
        "serving_usd": round(sum(t["cost_usd"]["serving"] for t in tuned), 6),
    }
