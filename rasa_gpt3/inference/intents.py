"""What an intent model's answer means for Rasa: an intent ranking from the first generated token's logprobs.

`rank_intents` renormalises the probabilities of the alternatives that are known labels; retrieval intents
(`faq/ask_x`) are summed into their base intent (`faq`), as DIET ranks them. `classify` / `classify_async` build
the request, make one bounded call and read the answer; they never raise for an API problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.errors import CallFailed
from rasa_gpt3.inference.calls import DEFAULT_MAX_MESSAGE_CHARS, BoundedCaller, log_failure, message_request
from rasa_gpt3.inference.transport import Completion
from rasa_gpt3.intent_names import FALLBACK_INTENT, base_intent, is_retrieval_intent
from rasa_gpt3.outcomes import Outcome

# OpenAI's limits: chat top_logprobs <= 20, legacy completion logprobs <= 5
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


@dataclass(frozen=True)
class IntentModel:
    """A fine-tuned intent model: its id, record format and the label codec (intent → label)."""

    model: str
    fmt: str
    labels: Mapping[str, str]
    fallback_intent: str = FALLBACK_INTENT
    ranking_length: int = 10
    top_logprobs: int = MAX_CHAT_TOP_LOGPROBS
    # longer messages are never sent: they get the fallback intent with outcome too_long (None: no limit)
    max_message_chars: Optional[int] = DEFAULT_MAX_MESSAGE_CHARS
    _exact: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the codec makes every label one token, so a label is found by exact match of the first token
        object.__setattr__(self, "_exact", {str(label).strip(): intent for intent, label in self.labels.items()})

    @classmethod
    def from_task_model(cls, task_model: Any, **options: Any) -> IntentModel:
        """The intent model of a `rasa_gpt3.nlu.task_model.TaskModel`; `options` set the other fields."""
        return cls(model=task_model.model, fmt=task_model.fmt, labels=dict(task_model.codec["labels"]), **options)

    @property
    def intents(self) -> List[str]:
        """Every intent the model knows (full retrieval intents included), sorted."""
        return sorted(self.labels)

    def intents_for_token(self, token: str) -> Tuple[str, ...]:
        """The intent whose label a generated token is (surrounding whitespace ignored); empty when none."""
        intent = self._exact.get(token.strip())
        return (intent,) if intent is not None else ()

    def request_body(self, text: str) -> Dict[str, Any]:
        """The request body for `text`: the prompt from `prompts`, temperature 0, one token, its top logprobs."""
        body = dict(prompts.intent_request(text, self.fmt))
        body["temperature"] = 0
        body["max_tokens"] = 1
        if self.fmt == "chat":
            body["logprobs"] = True
            body["top_logprobs"] = max(1, min(self.top_logprobs, MAX_CHAT_TOP_LOGPROBS))
        else:
            body["logprobs"] = max(1, min(self.top_logprobs, MAX_COMPLETION_LOGPROBS))
        return body


@dataclass(frozen=True)
class IntentPrediction:
    """An intent decision in Rasa's terms, plus how it came about."""

    intent: str
    confidence: float
    # [{"name": base intent, "confidence": p}], best first, at most IntentModel.ranking_length
    ranking: List[Dict[str, Any]]
    # the full intent the model chose (`faq/ask_x` for a retrieval intent), None when it fell back
    full_intent: Optional[str] = None
    # the ranking over full intents (differs from `ranking` only with retrieval intents)
    full_ranking: List[Dict[str, Any]] = field(default_factory=list)
    # ok, unknown_label, no_logprobs, or why the call failed or was not made (timeout, circuit_open, too_long, ...)
    outcome: Outcome = Outcome.OK
    model: Optional[str] = None
    cached: bool = False
    backend_seconds: float = 0.0
    error: Optional[str] = None
    # tokens this call was billed for, as the API reported them (0 for a cache hit or a failed call)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def decided(self) -> bool:
        """True when the model's answer (fresh or cached) gave the intent, False when it fell back."""
        return self.full_intent is not None

    def metadata(self) -> Dict[str, Any]:
        """The JSON-safe record of what the model did, stored on the message under `gpt3`."""
        data: Dict[str, Any] = {
            "asked": True,
            "decided": self.decided,
            "outcome": str(self.outcome),
            "model": self.model,
            "cached": self.cached,
        }
        if self.backend_seconds:
            # the HTTP exchange (network + model); the component's own time is the rest
            data["backend_ms"] = round(self.backend_seconds * 1000, 3)
        if self.full_intent is not None:
            data["full_intent"] = self.full_intent
        if any(is_retrieval_intent(item["name"]) for item in self.full_ranking):
            data["full_ranking"] = self.full_ranking
        if self.error:
            data["error"] = self.error
        return data


def fallback_prediction(intent_model: IntentModel, outcome: Outcome, error: Optional[str] = None) -> IntentPrediction:
    """The prediction when the model could not decide: the fallback intent at confidence 0, no ranking."""
    return IntentPrediction(
        intent=intent_model.fallback_intent,
        confidence=0.0,
        ranking=[],
        outcome=outcome,
        model=intent_model.model,
        error=error,
    )


def rank_intents(completion: Completion, intent_model: IntentModel) -> IntentPrediction:
    """Reads an intent prediction from a one-token completion.

    The probabilities of the first token's alternatives that are known labels are renormalised to sum to 1.
    Retrieval intents are summed into their base intent, which is what INTENT and the ranking carry; the full
    intent is the most likely one within the winning base intent. A generated token that is no known label gives
    the fallback intent.
    """
    generated = intent_model.intents_for_token(prompts.clean_completion(completion.text) or completion.text)
    if not generated:
        return replace(
            fallback_prediction(intent_model, Outcome.UNKNOWN_LABEL),
            cached=completion.cached,
            backend_seconds=completion.backend_seconds,
            **_billed_tokens(completion),
        )
    scores: Dict[str, float] = {}
    for token, logprob in completion.first_token_alternatives:
        for intent in intent_model.intents_for_token(token):
            scores[intent] = scores.get(intent, 0.0) + math.exp(logprob)
    outcome = Outcome.OK
    if not scores:
        # no logprobs sent back: the answer is all there is to go on
        outcome = Outcome.NO_LOGPROBS
        scores = {intent: 1.0 / len(generated) for intent in generated}
    total = sum(scores.values())
    full = {intent: score / total for intent, score in scores.items()}
    bases: Dict[str, float] = {}
    for intent, probability in full.items():
        bases[base_intent(intent)] = bases.get(base_intent(intent), 0.0) + probability
    ranked_bases = sorted(bases.items(), key=lambda pair: (-pair[1], pair[0]))
    ranked_full = sorted(full.items(), key=lambda pair: (-pair[1], pair[0]))
    top_base, top_confidence = ranked_bases[0]
    full_intent = next(intent for intent, _ in ranked_full if base_intent(intent) == top_base)
    length = max(1, intent_model.ranking_length)
    return IntentPrediction(
        intent=top_base,
        confidence=top_confidence,
        ranking=[{"name": name, "confidence": value} for name, value in ranked_bases[:length]],
        full_intent=full_intent,
        full_ranking=[{"name": name, "confidence": value} for name, value in ranked_full[:length]],
        outcome=outcome,
        model=intent_model.model,
        cached=completion.cached,
        backend_seconds=completion.backend_seconds,
        **_billed_tokens(completion),
    )


def _billed_tokens(completion: Completion) -> Dict[str, int]:
    if completion.cached:
        return {}
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}


def classify(text: str, intent_model: IntentModel, caller: BoundedCaller) -> IntentPrediction:
    """Classifies `text` with the fine-tuned model within the caller's budget; never raises for API failures."""
    try:
        completion = caller.complete(intent_model.model, message_request(intent_model, text))
    except CallFailed as failure:
        return _failed(intent_model, failure)
    return rank_intents(completion, intent_model)


async def classify_async(text: str, intent_model: IntentModel, caller: BoundedCaller) -> IntentPrediction:
    """`classify` for event loops (the fallback action's re-classification)."""
    try:
        completion = await caller.complete_async(intent_model.model, message_request(intent_model, text))
    except CallFailed as failure:
        return _failed(intent_model, failure)
    return rank_intents(completion, intent_model)


def _failed(intent_model: IntentModel, failure: CallFailed) -> IntentPrediction:
    log_failure("intent", intent_model.model, failure)
    return fallback_prediction(intent_model, failure.kind, failure.reason)
