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
- Every message gets a `gpt3` entry in the parse data: `asked` (the component consulted the model: a request, a
  cache hit, or a call that failed or was skipped by the open breaker), `decided` (the model's answer gave the
  intent), `outcome` ("ok", "unknown_label", "timeout", "circuit_open", ...), `model`, `cached`, `backend_ms`, and
  `reason` when it was not asked, `previous_intent` when an earlier classifier had predicted one.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.shared.constants import INTENT_MESSAGE_PREFIX
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
from rasa.shared.nlu.training_data.training_data import TrainingData

from rasa_gpt3.inference import (
    DEFAULT_FALLBACK_INTENT,
    RETRIEVAL_DELIMITER,
    BoundedCaller,
    CallPolicy,
    IntentModel,
    caller_for,
    classify,
)
from rasa_gpt3.nlu.task_model import (
    COMMON_DEFAULTS,
    TaskModel,
    fingerprint_addon,
    load_task_model,
    obtain_task_model,
    persist_task_model,
    settings_from_config,
    validate_common_config,
)

logger = logging.getLogger(__name__)

GPT3_KEY = "gpt3"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True)
class GPT3IntentClassifier(GraphComponent, IntentClassifier):
    """Classifies intents with the project's fine-tuned GPT intent model."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        """The component's default config (see the module docstring and the README's `NLU components`)."""
        return {
            **COMMON_DEFAULTS,
            "fallback_intent": DEFAULT_FALLBACK_INTENT,
            # routing mode: ask the model only when an earlier classifier's confidence is below this
            "only_below_confidence": None,
            "ranking_length": 10,
            "top_logprobs": 20,
        }

    def __init__(
        self,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        task_model: Optional[TaskModel] = None,
    ) -> None:
        """Creates the classifier; `task_model` is the trained model (None before training)."""
        self.component_config = {**self.get_default_config(), **config}
        _validate(self.component_config)
        self._model_storage = model_storage
        self._resource = resource
        self._execution_context = execution_context
        self._settings = settings_from_config(self.component_config)
        self._policy = CallPolicy.from_config(self.component_config)
        self._caller: Optional[BoundedCaller] = None
        self._threshold = self.component_config["only_below_confidence"]
        self._fallback_intent = self.component_config["fallback_intent"]
        self.task_model = task_model
        self.intent_model = self._intent_model(task_model)

    def _intent_model(self, task_model: Optional[TaskModel]) -> Optional[IntentModel]:
        if task_model is None or not task_model.codec:
            return None
        return IntentModel(
            model=task_model.model,
            fmt=task_model.fmt,
            labels=dict(task_model.codec["labels"]),
            fallback_intent=self._fallback_intent,
            ranking_length=int(self.component_config["ranking_length"]),
            top_logprobs=int(self.component_config["top_logprobs"]),
        )

    @classmethod
    def create(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "GPT3IntentClassifier":
        """Creates a new untrained component."""
        return cls(config, model_storage, resource, execution_context)

    @classmethod
    def fingerprint_addon(cls, config: Dict[str, Any]) -> Optional[str]:
        """Prompt format, backend and the registry's active intent model: changes there retrain the component."""
        return fingerprint_addon("intent", {**cls.get_default_config(), **config})

    def train(self, training_data: TrainingData) -> Resource:
        """Exports the intent data, finds or fine-tunes the model for it, and persists the model id and labels."""
        self.task_model = obtain_task_model("intent", training_data, self.component_config)
        self.intent_model = self._intent_model(self.task_model)
        persist_task_model(self.task_model, self._model_storage, self._resource)
        return self._resource

    @classmethod
    def load(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> "GPT3IntentClassifier":
        """Loads the trained component and, on the local backend, warms the model up."""
        task_model = load_task_model(model_storage, resource, cls.__name__)
        component = cls(config, model_storage, resource, execution_context, task_model)
        component._check_backend()
        if component.intent_model is not None and component.component_config["warm_up"] and component._settings.uses_local_backend:
            component.caller.warm_up(component.intent_model.model, component.intent_model.request_body("hello"))
        return component

    def _check_backend(self) -> None:
        if self.task_model is not None and self.task_model.backend != self._settings.backend_name:
            logger.warning(
                "GPT3IntentClassifier: model %s was trained on %s but requests now go to %s; run `rasa train`",
                self.task_model.model, self.task_model.backend, self._settings.backend_name,
            )

    @property
    def caller(self) -> BoundedCaller:
        """The process-wide bounded caller for this backend and policy."""
        if self._caller is None:
            self._caller = caller_for(self._settings, self._policy)
        return self._caller

    def process(self, messages: List[Message]) -> List[Message]:
        """Sets INTENT, `intent_ranking` and the `gpt3` record on each message."""
        for message in messages:
            self._process_message(message)
        return messages

    def _process_message(self, message: Message) -> None:
        previous = message.get(INTENT)
        text = message.get(TEXT) or ""
        reason = None
        if self.intent_model is None:
            reason = "no_model"
        elif not text.strip():
            reason = "empty_text"
        elif text.startswith(INTENT_MESSAGE_PREFIX):
            reason = "intent_shortcut"
        elif self._earlier_is_confident(previous):
            reason = "confident_earlier_classifier"
        if reason is not None:
            if not _has_intent(previous):
                self._set_intent(message, self._fallback_intent, 0.0, [], None)
            record = {"asked": False, "decided": False, "reason": reason, "model": self._model_id()}
            if _has_intent(previous):
                record["previous_intent"] = _plain_intent(previous)
            message.set(GPT3_KEY, record, add_to_output=True)
            return

        prediction = classify(text, self.intent_model, self.caller)
        full = prediction.full_intent if prediction.full_intent and RETRIEVAL_DELIMITER in prediction.full_intent else None
        self._set_intent(message, prediction.intent, prediction.confidence, prediction.ranking, full)
        record = prediction.metadata()
        if _has_intent(previous):
            record["previous_intent"] = _plain_intent(previous)
        message.set(GPT3_KEY, record, add_to_output=True)

    def _earlier_is_confident(self, previous: Any) -> bool:
        if self._threshold is None or not _has_intent(previous):
            return False
        return float(previous.get(PREDICTED_CONFIDENCE_KEY) or 0.0) >= float(self._threshold)

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
    return {INTENT_NAME_KEY: intent.get(INTENT_NAME_KEY), PREDICTED_CONFIDENCE_KEY: intent.get(PREDICTED_CONFIDENCE_KEY)}


def _validate(config: Dict[str, Any]) -> None:
    threshold = config.get("only_below_confidence")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise InvalidConfigException(
            f"GPT3IntentClassifier: only_below_confidence must be a number from 0 to 1 (or null), not {threshold!r}"
        )
    if not config.get("fallback_intent"):
        raise InvalidConfigException("GPT3IntentClassifier: fallback_intent must name an intent (e.g. nlu_fallback)")
    validate_common_config("GPT3IntentClassifier", config)

