"""The vocabulary every part of `rasa-gpt3 evaluate` shares: the two sides, `all`, the file names, a `Prediction`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BASELINE = "baseline"
FINE_TUNED = "fine-tuned"
SYSTEMS = (BASELINE, FINE_TUNED)
ALL = "all"
RESULTS_VERSION = 1

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.md"
CURVE_PNG = "few_shot_curve.png"
CONFUSION_PNG = "confusion_matrix.png"


def shots_name(shots: Optional[int]) -> str:
    """'all' or the number of examples per intent."""
    return ALL if shots is None else str(shots)


@dataclass
class Prediction:
    """One test message as one side saw it."""

    text: str
    intent: str
    predicted: str
    confidence: float
    latency_ms: float
    fallback: bool
    outcome: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def correct(self) -> bool:
        """Whether the top intent is the true one (fallback aside, as `rasa test nlu` counts)."""
        return self.predicted == self.intent


def intent_report_file(system: str) -> str:
    """The file of one side's intent report (Rasa's intent_report.json shape), e.g. `fine_tuned_intent_report.json`."""
    return f"{system.replace('-', '_')}_intent_report.json"
