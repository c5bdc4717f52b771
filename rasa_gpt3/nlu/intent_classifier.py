"""`rasa_gpt3.GPT3IntentClassifier`: intents from a fine-tuned GPT model, confidences from its logprobs.

```yaml
pipeline:
  - name: WhitespaceTokenizer
  - name: rasa_gpt3.GPT3IntentClassifier
    # model: ft:...                  # optional; otherwise the project's registry (gpt3_models.yml)
    # only_below_confidence: 0.7     # routing mode, placed after another classifier such as DIET
  - name: FallbackClassifier
    threshold: 0.5
```

Per message: one request (temperature 0, max_tokens 1, top logprobs) built by `rasa_gpt3.prompts`, bounded by
`rasa_gpt3.inference` (timeout, one retry, circuit breaker, cache). INTENT is always set, so FallbackClassifier's
threshold and ambiguity checks work: the model's intent with its renormalised probability, or `fallback_intent`
at confidence 0 when the model answered something else or the API failed.

Decisions:
- Retrieval intents: INTENT and `intent_ranking` carry base intents (`faq`, probability summed over `faq/*`), as
  DIET does, so ResponseSelector and `rasa test nlu` work unchanged; INTENT also carries
  `full_retrieval_intent_name` and the `gpt3` record the full ranking.
- Routing mode (`only_below_confidence: T`): when an earlier classifier's confidence is at least T, the model is not
  asked and the earlier result stays as it is.
- Messages starting with `/` (Rasa's intent shortcut) and empty messages are never sent; an earlier result stays,
  else INTENT is `fallback_intent` at confidence 0 (Rasa's RegexMessageHandler then applies the shortcut).
- A message longer than `max_message_chars` (default 4,096) is never sent either: INTENT is `fallback_intent` at
  confidence 0 with outcome `too_long`, and the circuit breaker does not count it as a failure of the API.
- Every message gets a `gpt3` entry in the parse data: `asked` (the component consulted the model: a request, a
  cache hit, or a call that failed or was skipped by the open breaker or the length limit), `decided` (the model's
  answer gave the intent), `outcome` ("ok", "unknown_label", "timeout", "circuit_open", "too_long", ...), `model`,
  `cached`, `backend_ms`, and `reason` when it was not asked, `previous_intent` when an earlier classifier had
  predicted one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.shared.exceptions import InvalidConfigException
from rasa.shared.nlu.constants import (
    FULL_RETRIEVAL_INTENT_NAME_KEY,
    INTENT,
    INTENT_NAME_KEY,
    INTENT_RANKING_KEY,
    PREDICTED_CONFIDENCE_KEY,
    TEXT,
)
from rasa.shared.nlu.training_data.message import Message

from rasa_gpt3.inference.intents import MAX_CHAT_TOP_LOGPROBS, IntentModel, classify
from rasa_gpt3.intent_names import FALLBACK_INTENT, is_retrieval_intent
from rasa_gpt3.nlu.component import GPT3Component
from rasa_gpt3.nlu.task_model import TaskModel

GPT3_KEY = "gpt3"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True)
class GPT3IntentClassifier(GPT3Component, IntentClassifier):
    """Classifies intents with the project's fine-tuned GPT intent model."""

    TASK = "intent"

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        """The component's default config (see the module docstring and the README's `NLU components`)."""
        return {
            **GPT3Component.get_default_config(),
            "fallback_intent": FALLBACK_INTENT,
            # routing mode: ask the model only when an earlier classifier's confidence is below this
            "only_below_confidence": None,
            "ranking_length": 10,
            "top_logprobs": MAX_CHAT_TOP_LOGPROBS,
        }

    def _validate_config(self, config: Dict[str, Any]) -> None:
        threshold = config.get("only_below_confidence")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise InvalidConfigException(
                f"GPT3IntentClassifier: only_below_confidence must be a number from 0 to 1 (or null), not {threshold!r}"
            )
        if not config.get("fallback_intent"):
            raise InvalidConfigException(
                f"GPT3IntentClassifier: fallback_intent must name an intent (e.g. {FALLBACK_INTENT})"
            )
        super()._validate_config(config)

    def _served_model(self, task_model: TaskModel) -> Optional[IntentModel]:
        if not task_model.codec:
            return None
        return IntentModel.from_task_model(
            task_model,
            fallback_intent=self.component_config["fallback_intent"],
            ranking_length=int(self.component_config["ranking_length"]),
            top_logprobs=int(self.component_config["top_logprobs"]),
            max_message_chars=self.component_config["max_message_chars"],
        )

    def _without_model(self) -> str:
        return (
            f"the model is no longer asked: every message gets {self.component_config['fallback_intent']} at "
            "confidence 0 (in routing mode the earlier classifier's intent stays)"
        )

    def _process_message(self, message: Message) -> None:
        """Sets INTENT, `intent_ranking` and the `gpt3` record."""
        previous = message.get(INTENT)
        reason = self._skip_reason(message)
        if reason is None and self._earlier_is_confident(previous):
            reason = "confident_earlier_classifier"
        if reason is not None:
            if not _has_intent(previous):
                self._set_intent(message, self.component_config["fallback_intent"], 0.0, [], None)
            record = {"asked": False, "decided": False, "reason": reason, "model": self._model_id()}
        else:
            prediction = classify(message.get(TEXT), self.served_model, self.caller)
            full = prediction.full_intent if is_retrieval_intent(prediction.full_intent) else None
            self._set_intent(message, prediction.intent, prediction.confidence, prediction.ranking, full)
            record = prediction.metadata()
        if _has_intent(previous):
            record["previous_intent"] = _plain_intent(previous)
        message.set(GPT3_KEY, record, add_to_output=True)

    def _earlier_is_confident(self, previous: Any) -> bool:
        threshold = self.component_config["only_below_confidence"]
        if threshold is None or not _has_intent(previous):
            return False
        return float(previous.get(PREDICTED_CONFIDENCE_KEY) or 0.0) >= float(threshold)

    def _model_id(self) -> Optional[str]:
        return self.task_model.model if self.task_model is not None else None

    @staticmethod
    def _set_intent(
        message: Message, name: str, confidence: float, ranking: List[Dict[str, Any]], full_intent: Optional[str]
    ) -> None:
        intent: Dict[str, Any] = {INTENT_NAME_KEY: name, PREDICTED_CONFIDENCE_KEY: float(confidence)}
        if full_intent:
            intent[FULL_RETRIEVAL_INTENT_NAME_KEY] = full_intent
        message.set(INTENT, intent, add_to_output=True)
        message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)


def _has_intent(intent: Any) -> bool:
    return isinstance(intent, dict) and intent.get(INTENT_NAME_KEY) is not None


def _plain_intent(intent: Dict[str, Any]) -> Dict[str, Any]:
    return {
        INTENT_NAME_KEY: intent.get(INTENT_NAME_KEY),
        PREDICTED_CONFIDENCE_KEY: intent.get(PREDICTED_CONFIDENCE_KEY),
    }
