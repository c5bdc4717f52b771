"""`rasa-gpt3 evaluate --models A,B[,C]`: existing fine-tuned intent models and the bot's own pipeline, side by side.

Every model and the baseline are asked about the same held-out messages (the split or `--test-file` of any
evaluation); nothing is fine-tuned. Each model is read with the label codec candidates.py chooses and checks, asked
through the NLU component's bounded call as in `rasa-gpt3 evaluate`, and judged with the bot's fallback rule.

"At least as good as the model in use" (the registry's active intent model on the current backend) means, on this
test set: accuracy and macro-F1 each at most `tolerance` lower, and the share of messages that would fall back at the
bot's threshold at most `tolerance` higher. Accuracy and macro-F1 because a replacement must be right as often overall
and on rare intents too; the fallback rate because a model that is right but unsure sends more users to the fallback.
The default tolerance, 0.01, is about one message of a test set of a hundred: smaller differences are noise, not
evidence either way. It is a check on this test set, not a significance test; a larger test set makes it sharper.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.data.export import text_examples
from rasa_gpt3.errors import BudgetError
from rasa_gpt3.evaluation.baseline import FallbackRule, RasaBaseline, resolve_baseline
from rasa_gpt3.evaluation.candidates import Candidate, prepare, resolve_candidates
from rasa_gpt3.evaluation.finetuned import FineTunedSide
from rasa_gpt3.evaluation.metrics import per_intent_f1, summarize_predictions
from rasa_gpt3.evaluation.report import comparison_markdown
from rasa_gpt3.evaluation.results import (
    BASELINE,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    RESULTS_VERSION,
    SUMMARY_FILE,
    Prediction,
)
from rasa_gpt3.evaluation.runner import EvaluationOptions, import_rasa_quietly, progress_bar, training_and_test_data
from rasa_gpt3.evaluation.samples import find_out_of_scope_intent

DEFAULT_TOLERANCE = 0.01
# (metric, +1 when higher is better, -1 when lower is better)
CRITERIA = (("accuracy", 1), ("macro_f1", 1), ("fallback_rate", -1))


@dataclass
class ServingPlan:
    """What asking the models on remote APIs would spend, for the confirmation prompt."""

    calls: int
    usd: float
    backends: Tuple[str, ...]

    def describe(self) -> str:
        """One line for the confirmation prompt."""
        return f"about ${self.usd:.2f} on {', '.join(self.backends)} ({self.calls:,} classification calls)"


@dataclass
class Comparison:
    """The finished comparison: the results document, every prediction, and the files written."""

    results: Dict[str, Any]
    predictions: Dict[str, List[Prediction]]
    files: Dict[str, Path]


def run_comparison(
    options: EvaluationOptions,
    references: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    confirm: Optional[Callable[[ServingPlan], bool]] = None,
) -> Comparison:
    """Compares the models of `references` (and the model in use) with the baseline; writes results into options.out.

    Raises ProjectError, DataError, BackendError or BudgetError with one line.
    """
    from rasa_gpt3.client import make_client
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.model_lifecycle import model_lifecycle
    from rasa_gpt3.settings import Settings

    options.check()
    import_rasa_quietly()
    project = load_project(options.project)
    settings = Settings.from_env(options.project)
    candidates = resolve_candidates(settings, references)
    train_pool, test_examples, test_source = training_and_test_data(project, options)
    texts = [m.get("text") for m in test_examples]
    intents = sorted({m.get("intent") for m in test_examples} | {m.get("intent") for m in text_examples(train_pool)})
    oos_intent = find_out_of_scope_intent(intents, options.out_of_scope_intent)

    baseline = resolve_baseline(project.config if options.baseline is None else None, options.baseline)
    fallback = FallbackRule.from_pipeline(baseline.config.get("pipeline")) or FallbackRule.from_pipeline(
        (project.config or {}).get("pipeline")
    )
    sides: Dict[str, FineTunedSide] = {}
    lifecycles: Dict[str, Any] = {}
    for candidate in candidates:
        client = make_client(candidate.settings, max_retries=0)
        try:
            prepare(candidate, project, client)
            lifecycles[candidate.name] = model_lifecycle(
                candidate.model, candidate.backend, client=client, base_model=candidate.base_model.name
            )
        finally:
            client.close()
        if candidate.backend not in sides:
            sides[candidate.backend] = FineTunedSide(candidate.settings, project.name, None, None, None, fallback)
    _confirm_spending(candidates, sides, texts, confirm)

    predictions: Dict[str, List[Prediction]] = {}
    systems: Dict[str, Dict[str, Any]] = {}
    work_dir = Path(tempfile.mkdtemp(prefix="rasa-gpt3-compare-"))
    try:
        with progress_bar(options.progress, total=len(candidates) + 1, desc="compare", unit="model") as overall:
            overall.set_description("training the baseline")
            started = time.perf_counter()
            rasa_side = RasaBaseline(baseline, project.domain, work_dir, fallback)
            model_path = rasa_side.train(train_pool, "baseline")
            seconds = time.perf_counter() - started
            with progress_bar(options.progress, total=len(texts), desc=BASELINE, unit="msg", leave=False) as bar:
                predictions[BASELINE] = rasa_side.predict(model_path, test_examples, bar)
            systems[BASELINE] = summarize_predictions(predictions[BASELINE], oos_intent)
            systems[BASELINE]["train_seconds"] = round(seconds, 3)
            overall.update(1)
            for candidate in candidates:
                overall.set_description(f"asking {candidate.name}")
                side = sides[candidate.backend]
                model = side.existing(candidate.model, candidate.exported)
                calls_before = side.caller.calls_sent
                with progress_bar(
                    options.progress, total=len(texts), desc=candidate.name, unit="msg", leave=False
                ) as bar:
                    predictions[candidate.name] = side.predict(model, candidate.exported, test_examples, bar)
                systems[candidate.name] = _model_metrics(
                    candidate, predictions[candidate.name], side.caller.calls_sent - calls_before, oos_intent
                )
                overall.update(1)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    reference = candidates[0]
    models = [
        _model_result(candidate, systems, reference, tolerance, lifecycles[candidate.name]) for candidate in candidates
    ]
    results = {
        "version": RESULTS_VERSION,
        "kind": "models",
        "command": options.command or options.as_command(),
        "project": {"name": project.name, "path": str(options.project)},
        "backend": settings.backend_name,
        "baseline": {
            "source": baseline.source,
            "dropped": baseline.dropped,
            "config": baseline.config,
            "metrics": systems[BASELINE],
        },
        "data": {
            "test_source": test_source,
            "train_pool": len(text_examples(train_pool)),
            "test": len(test_examples),
            "intents": len(
                {m.get("intent") for m in test_examples} | {m.get("intent") for m in text_examples(train_pool)}
            ),
            "fallback_rule": asdict(fallback) if fallback else None,
        },
        "reference": {"name": reference.name, "model": reference.model, "in_use": reference.in_use},
        "tolerance": tolerance,
        "rule": "at least as good: accuracy and macro-F1 at most `tolerance` lower than the reference's, fallback rate "
        "at most `tolerance` higher, on this test set",
        "models": models,
    }
    out = Path(options.out)
    files = {
        "predictions": write_atomic(out / PREDICTIONS_FILE, _prediction_lines(predictions)),
        "summary": write_atomic(out / SUMMARY_FILE, comparison_markdown(results)),
        "results": write_atomic(out / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n"),
    }
    return Comparison(results=results, predictions=predictions, files=files)


def _confirm_spending(
    candidates: Sequence[Candidate],
    sides: Dict[str, FineTunedSide],
    texts: Sequence[str],
    confirm: Optional[Callable[[ServingPlan], bool]],
) -> None:
    remote = [c for c in candidates if not c.settings.uses_local_backend]
    if not remote:
        return
    usd = sum(sides[c.backend].estimate(c.exported, texts)[1] for c in remote)
    plan = ServingPlan(calls=len(texts) * len(remote), usd=usd, backends=tuple(sorted({c.backend for c in remote})))
    if confirm is None or not confirm(plan):
        raise BudgetError(f"evaluate would spend {plan.describe()}; not confirmed, nothing was spent")


def _model_metrics(
    candidate: Candidate, predictions: List[Prediction], api_calls: int, oos_intent: Optional[str]
) -> Dict[str, Any]:
    from rasa_gpt3.inference.calls import CallPolicy

    metrics = summarize_predictions(predictions, oos_intent)
    budget_ms = CallPolicy().timeout * 1000
    metrics["latency_ms"]["over_nlu_budget"] = sum(1 for p in predictions if p.latency_ms > budget_ms)
    serving = candidate.base_model.usage_cost(metrics["prompt_tokens"], metrics["completion_tokens"])
    metrics["api_calls"] = api_calls
    metrics["cost_usd"] = {
        "serving": round(serving, 6),
        "per_1000_messages": round(serving / len(predictions) * 1000, 6) if predictions else 0.0,
    }
    return metrics


def judge(metrics: Dict[str, Any], reference: Dict[str, Any], tolerance: float) -> Tuple[bool, Dict[str, float]]:
    """(at least as good as `reference`, each criterion's difference) by the rule of this module's docstring."""
    differences = {name: round(metrics[name] - reference[name], 6) for name, _ in CRITERIA}
    # a hair of rounding slack, so a difference of exactly the tolerance passes
    good = all(sign * differences[name] >= -tolerance - 1e-9 for name, sign in CRITERIA)
    return good, differences


def verdict_line(
    name: str,
    model: str,
    good: bool,
    metrics: Dict[str, Any],
    reference: Dict[str, Any],
    reference_label: str,
    differences: Dict[str, float],
    tolerance: float,
) -> str:
    """One line: whether the model is at least as good as the reference, with the numbers that decide it."""
    parts = [
        f"accuracy {metrics['accuracy']:.3f} vs {reference['accuracy']:.3f} ({differences['accuracy']:+.3f})",
        f"macro-F1 {metrics['macro_f1']:.3f} vs {reference['macro_f1']:.3f} ({differences['macro_f1']:+.3f})",
        f"fallback {metrics['fallback_rate']:.1%} vs {reference['fallback_rate']:.1%}",
    ]
    head = "at least as good as" if good else "NOT as good as"
    return f"{name} {model}: {head} {reference_label} ({'; '.join(parts)}; tolerance {tolerance:g})"


def _model_result(
    candidate: Candidate, systems: Dict[str, Dict[str, Any]], reference: Candidate, tolerance: float, lifecycle: Any
) -> Dict[str, Any]:
    metrics = systems[candidate.name]
    base = systems[reference.name]
    reference_label = f"{reference.name}, the model in use" if reference.in_use else f"{reference.name} (reference)"
    if candidate is reference:
        good, differences = True, {name: 0.0 for name, _ in CRITERIA}
        verdict = f"{candidate.name} {candidate.model}: " + (
            "the model in use (the reference)" if candidate.in_use else "the reference (no model in use is recorded)"
        )
    else:
        good, differences = judge(metrics, base, tolerance)
        verdict = verdict_line(
            candidate.name, candidate.model, good, metrics, base, reference_label, differences, tolerance
        )
    mine, theirs = per_intent_f1(metrics["report"]), per_intent_f1(base["report"])
    return {
        "name": candidate.name,
        "model": candidate.model,
        "reference": candidate.reference,
        "backend": candidate.backend,
        "in_use": candidate.in_use,
        "base_model": candidate.base_model.name,
        "format": candidate.fmt,
        "labels": candidate.labels,
        "shutdown_date": lifecycle.shutdown.isoformat() if lifecycle.shutdown else None,
        "days_left": lifecycle.days_left,
        "metrics": metrics,
        "vs_reference": {
            **differences,
            "per_intent_f1": {name: round(mine.get(name, 0.0) - theirs.get(name, 0.0), 6) for name in sorted(theirs)},
        },
        "at_least_as_good": good,
        "verdict": verdict,
    }


def _prediction_lines(predictions: Dict[str, List[Prediction]]) -> str:
    lines = []
    for system, items in predictions.items():
        for p in items:
            row = {"system": system, **asdict(p)}
            row["latency_ms"] = round(p.latency_ms, 3)
            lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"
