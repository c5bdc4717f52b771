"""The numbers of an evaluation: Rasa's intent report, latency percentiles, out-of-scope handling, few-shot curve."""

from __future__ import annotations

import statistics
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.evaluation.results import SYSTEMS, Prediction


def intent_report(targets: Sequence[str], predicted: Sequence[str]) -> Dict[str, Any]:
    """Per-intent precision/recall/F1/support with `confused_with`, accuracy and averages: Rasa's intent_report.json."""
    # Rasa's own report code (sklearn's classification_report, completed and annotated the way `rasa test nlu` does)
    from rasa.nlu.test import _calculate_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report, _, _, _, _, _ = _calculate_report(None, list(targets), list(predicted), report_as_dict=True)
    return report


AVERAGES = ("macro avg", "weighted avg", "micro avg", "accuracy")


def per_intent_f1(report: Dict[str, Any]) -> Dict[str, float]:
    """Each intent's F1 in a Rasa intent report (averages left out)."""
    return {
        name: float(row.get("f1-score", 0.0))
        for name, row in report.items()
        if isinstance(row, dict) and "support" in row and name not in AVERAGES
    }


def latency_summary(latencies_ms: Sequence[float]) -> Dict[str, float]:
    """p50, p95 and mean of per-message latencies in milliseconds."""
    import numpy as np

    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    values = np.asarray(latencies_ms, dtype=float)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "mean": round(float(values.mean()), 3),
    }


def out_of_scope_summary(predictions: Sequence[Prediction], oos_intent: str) -> Dict[str, Any]:
    """How well out-of-scope messages are rejected (predicted as `oos_intent` or fallen back) and in-scope ones kept."""

    def rejected(p: Prediction) -> bool:
        return p.predicted == oos_intent or p.fallback

    oos = [p for p in predictions if p.intent == oos_intent]
    in_scope = [p for p in predictions if p.intent != oos_intent]
    flagged = [p for p in predictions if rejected(p)]
    caught = sum(1 for p in oos if rejected(p))

    def share(part: int, whole: int) -> Optional[float]:
        return round(part / whole, 6) if whole else None

    return {
        "intent": oos_intent,
        "out_of_scope_messages": len(oos),
        "in_scope_messages": len(in_scope),
        "rejected": len(flagged),
        "recall": share(caught, len(oos)),
        "precision": share(caught, len(flagged)),
        "in_scope_rejected": share(sum(1 for p in in_scope if rejected(p)), len(in_scope)),
        "in_scope_accuracy": share(sum(1 for p in in_scope if p.correct and not p.fallback), len(in_scope)),
    }


def summarize_predictions(predictions: Sequence[Prediction], oos_intent: Optional[str]) -> Dict[str, Any]:
    """Accuracy, macro/weighted F1, the intent report, latency, fallback rate, usage and outcome counts of one run."""
    targets = [p.intent for p in predictions]
    predicted = [p.predicted for p in predictions]
    report = intent_report(targets, predicted)
    correct = sum(1 for p in predictions if p.correct)
    outcomes: Dict[str, int] = {}
    for p in predictions:
        outcomes[p.outcome] = outcomes.get(p.outcome, 0) + 1
    return {
        "n_test": len(predictions),
        "correct": correct,
        "accuracy": round(correct / len(predictions), 6) if predictions else 0.0,
        "macro_f1": round(float(report.get("macro avg", {}).get("f1-score", 0.0)), 6),
        "weighted_f1": round(float(report.get("weighted avg", {}).get("f1-score", 0.0)), 6),
        "fallback_rate": round(sum(1 for p in predictions if p.fallback) / len(predictions), 6) if predictions else 0.0,
        "latency_ms": latency_summary([p.latency_ms for p in predictions]),
        "outcomes": dict(sorted(outcomes.items())),
        "prompt_tokens": sum(p.prompt_tokens for p in predictions),
        "completion_tokens": sum(p.completion_tokens for p in predictions),
        "out_of_scope": out_of_scope_summary(predictions, oos_intent) if oos_intent else None,
        "report": report,
    }


def mean_and_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def few_shot_curve(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per shot count and side: mean and spread over repeats of accuracy and macro-F1, and the training size."""
    rows = []
    shot_values: List[str] = []
    for run in runs:
        if run["shots"] not in shot_values:
            shot_values.append(run["shots"])
    for shots in shot_values:
        chosen = [run for run in runs if run["shots"] == shots]
        n_train, _ = mean_and_std([run["n_train"] for run in chosen])
        for system in SYSTEMS:
            metrics = [run["systems"][system] for run in chosen if system in run["systems"]]
            if not metrics:
                continue
            accuracy = mean_and_std([m["accuracy"] for m in metrics])
            macro_f1 = mean_and_std([m["macro_f1"] for m in metrics])
            rows.append(
                {
                    "shots": shots,
                    "system": system,
                    "repeats": len(metrics),
                    "n_train": round(n_train, 1),
                    "accuracy_mean": round(accuracy[0], 6),
                    "accuracy_std": round(accuracy[1], 6),
                    "macro_f1_mean": round(macro_f1[0], 6),
                    "macro_f1_std": round(macro_f1[1], 6),
                }
            )
    return rows
