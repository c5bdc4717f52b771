"""The FallbackClassifier threshold to recommend from a test run's intent confidences.

A threshold trades in-scope answers for out-of-scope refusals: every message whose top confidence is below it goes
to the fallback. With out-of-scope test messages (labelled with an intent the model was not trained on, such as
`out_of_scope` or `nlu_fallback`) the recommendation is the threshold that maximises the mean of the in-scope
accuracy (a fallback on an in-scope message counts as an error) and the out-of-scope recall (the share of
out-of-scope messages sent to the fallback). Without them, nothing says how confident out-of-scope messages are, so
the recommendation is the highest threshold that still keeps `keep` (95%) of the correctly classified in-scope
messages: it rejects what the model is least sure of at a known, small cost. benchmarks/local_backend.py measures
both rules on banking77 with held-out intents as the out-of-scope set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from rasa_gpt3.evaluation.results import Prediction

# share of the correctly classified in-scope messages that the threshold must keep when there is no OOS data
DEFAULT_KEEP = 0.95


@dataclass(frozen=True)
class ThresholdRecommendation:
    """A recommended threshold and what it does on the messages it was chosen on."""

    threshold: float
    # correct and above the threshold, over all in-scope messages
    in_scope_accuracy: float
    # in-scope messages sent to the fallback
    in_scope_fallback_rate: float
    # out-of-scope messages sent to the fallback; None without out-of-scope messages
    out_of_scope_recall: Optional[float]
    rule: str

    def describe(self) -> str:
        """One line for a report."""
        line = (
            f"recommended FallbackClassifier threshold {self.threshold:.2f} ({self.rule}): in-scope accuracy "
            f"{self.in_scope_accuracy:.3f}, {self.in_scope_fallback_rate:.1%} of in-scope messages to the fallback"
        )
        if self.out_of_scope_recall is not None:
            line += f", out-of-scope recall {self.out_of_scope_recall:.3f}"
        return line


def apply_threshold(
    threshold: float, in_scope: Sequence[Tuple[float, bool]], out_of_scope: Sequence[float] = ()
) -> Tuple[float, float, Optional[float]]:
    """(in-scope accuracy, in-scope fallback rate, out-of-scope recall or None) of `threshold`.

    `in_scope` holds (top confidence, whether the top intent was right) per in-scope message; `out_of_scope` the
    top confidences of out-of-scope messages. A confidence below the threshold goes to the fallback.
    """
    if not in_scope:
        raise ValueError("no in-scope predictions to choose a threshold from")
    kept_correct = sum(1 for confidence, correct in in_scope if correct and confidence >= threshold)
    fallback = sum(1 for confidence, _ in in_scope if confidence < threshold)
    recall = (
        sum(1 for confidence in out_of_scope if confidence < threshold) / len(out_of_scope) if out_of_scope else None
    )
    return kept_correct / len(in_scope), fallback / len(in_scope), recall


def recommend_threshold(
    in_scope: Sequence[Tuple[float, bool]], out_of_scope: Sequence[float] = (), keep: float = DEFAULT_KEEP
) -> ThresholdRecommendation:
    """The threshold for `in_scope` (confidence, correct) pairs and optional `out_of_scope` confidences.

    Thresholds are rounded down to two decimals (what a config.yml holds), so the rule's promise still holds.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not in_scope:
        raise ValueError("no in-scope predictions to choose a threshold from")
    if out_of_scope:
        candidates = sorted({_floor2(c) for c, _ in in_scope} | {_floor2(c) + 0.01 for c in out_of_scope} | {0.0})
        best, best_score = 0.0, -1.0
        for candidate in candidates:
            accuracy, _, recall = apply_threshold(candidate, in_scope, out_of_scope)
            score = (accuracy + (recall or 0.0)) / 2
            if score > best_score + 1e-12:
                best, best_score = candidate, score
        threshold, rule = best, "best mean of in-scope accuracy and out-of-scope recall"
    else:
        correct = sorted(confidence for confidence, right in in_scope if right)
        if not correct:
            threshold = 0.0
        else:
            # the lowest confidence among the best `keep` share of correct answers, rounded down
            threshold = _floor2(correct[min(len(correct) - 1, int(math.floor(len(correct) * (1 - keep))))])
        rule = f"keeps {keep:.0%} of the correct in-scope answers"
    accuracy, fallback_rate, recall = apply_threshold(threshold, in_scope, out_of_scope)
    return ThresholdRecommendation(
        threshold=threshold,
        in_scope_accuracy=accuracy,
        in_scope_fallback_rate=fallback_rate,
        out_of_scope_recall=recall,
        rule=rule,
    )


def recommend_from_predictions(
    predictions: Sequence[Prediction], oos_intent: Optional[str], keep: float = DEFAULT_KEEP
) -> Optional[ThresholdRecommendation]:
    """The recommendation for one side's predictions, with the messages of `oos_intent` as the out-of-scope set.

    An out-of-scope message predicted as `oos_intent` counts as rejected whatever the threshold (confidence 0), as
    `metrics.out_of_scope_summary` counts it: the bot answers it with its out-of-scope response, not the fallback.
    None when every message is out of scope: there is nothing in scope to keep.
    """
    in_scope = [(p.confidence, p.correct) for p in predictions if not oos_intent or p.intent != oos_intent]
    out_of_scope = [
        0.0 if p.predicted == oos_intent else p.confidence for p in predictions if oos_intent and p.intent == oos_intent
    ]
    return recommend_threshold(in_scope, out_of_scope, keep) if in_scope else None


def recommendation_record(recommendation: Optional[ThresholdRecommendation], system: str) -> Optional[Dict[str, Any]]:
    """What results.json holds of `system`'s recommendation: its figures, rounded, and its `describe()` line."""
    if recommendation is None:
        return None
    return {
        "system": system,
        "threshold": recommendation.threshold,
        "in_scope_accuracy": round(recommendation.in_scope_accuracy, 6),
        "in_scope_fallback_rate": round(recommendation.in_scope_fallback_rate, 6),
        "out_of_scope_recall": None
        if recommendation.out_of_scope_recall is None
        else round(recommendation.out_of_scope_recall, 6),
        "rule": recommendation.rule,
        "description": recommendation.describe(),
    }


def _floor2(value: float) -> float:
    return math.floor(max(0.0, min(1.0, value)) * 100 + 1e-9) / 100
