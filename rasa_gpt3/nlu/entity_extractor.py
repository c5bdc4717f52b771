"""`rasa_gpt3.GPT3EntityExtractor`: entities from a fine-tuned GPT model, located in the message text.

```yaml
pipeline:
  - name: WhitespaceTokenizer
  - name: rasa_gpt3.GPT3EntityExtractor
  - name: EntitySynonymMapper      # maps the extracted text spans as it does DIET's
```

The `entities` model answers with a JSON list of {entity, value, role, group} (see `rasa_gpt3.prompts`). Each
value is located in the message (exact, then case-insensitive, whole words first, each occurrence used once) and
becomes a Rasa entity with start/end, `value` = the text span, role/group, `extractor: GPT3EntityExtractor` and
`confidence_entity` (the probability of the whole answer from its token logprobs; 1.0 when the API sends none).
Values not in the text and entity types the training data does not know are dropped; an answer that is not an
entity list adds no entities and logs one warning. Messages starting with `/` and empty messages are not sent; on
an API failure no entities are added. Each message gets a `gpt3_entities` record: asked, outcome, model, dropped.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.shared.constants import INTENT_MESSAGE_PREFIX
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from rasa_gpt3.inference import BoundedCaller, CallPolicy, EntityModel, caller_for, extract_entities
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

GPT3_ENTITIES_KEY = "gpt3_entities"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=True)
class GPT3EntityExtractor(GraphComponent, EntityExtractorMixin):
    """Extracts entities with the project's fine-tuned GPT entities model."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        """The component's default config (see the module docstring and the README's `NLU components`)."""
        return {**COMMON_DEFAULTS, "max_tokens": 200}

    def __init__(
        self,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        task_model: Optional[TaskModel] = None,
    ) -> None:
        """Creates the extractor; `task_model` is the trained model (None before training)."""
        self.component_config = {**self.get_default_config(), **config}
        validate_common_config(self.name, self.component_config)
        self._model_storage = model_storage
        self._resource = resource
        self._execution_context = execution_context
        self._settings = settings_from_config(self.component_config)
        self._policy = CallPolicy.from_config(self.component_config)
        self._caller: Optional[BoundedCaller] = None
        self.task_model = task_model
        self.entity_model = self._entity_model(task_model)

    def _entity_model(self, task_model: Optional[TaskModel]) -> Optional[EntityModel]:
        if task_model is None:
            return None
        return EntityModel(
            model=task_model.model,
            fmt=task_model.fmt,
            entity_types=frozenset(task_model.entity_types),
            roles=frozenset(task_model.roles),
            groups=frozenset(task_model.groups),
            max_tokens=int(self.component_config["max_tokens"]),
        )

    @classmethod
    def create(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> "GPT3EntityExtractor":
        """Creates a new untrained component."""
        return cls(config, model_storage, resource, execution_context)

    @classmethod
    def fingerprint_addon(cls, config: Dict[str, Any]) -> Optional[str]:
        """Prompt format, backend and the registry's active entities model: changes there retrain the component."""
        return fingerprint_addon("entities", {**cls.get_default_config(), **config})

    def train(self, training_data: TrainingData) -> Resource:
        """Exports the entity data, finds or fine-tunes the model for it, and persists it with the known types."""
        self.task_model = obtain_task_model("entities", training_data, self.component_config)
        self.entity_model = self._entity_model(self.task_model)
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
    ) -> "GPT3EntityExtractor":
        """Loads the trained component and, on the local backend, warms the model up."""
        task_model = load_task_model(model_storage, resource, cls.__name__)
        component = cls(config, model_storage, resource, execution_context, task_model)
        if task_model is not None and task_model.backend != component._settings.backend_name:
            logger.warning(
                "GPT3EntityExtractor: model %s was trained on %s but requests now go to %s; run `rasa train`",
                task_model.model, task_model.backend, component._settings.backend_name,
            )
        model = component.entity_model
        if model is not None and component.component_config["warm_up"] and component._settings.uses_local_backend:
            component.caller.warm_up(model.model, model.request_body("hello"))
        return component

    @property
    def caller(self) -> BoundedCaller:
        """The process-wide bounded caller for this backend and policy."""
        if self._caller is None:
            self._caller = caller_for(self._settings, self._policy)
        return self._caller

    def process(self, messages: List[Message]) -> List[Message]:
        """Adds the located entities to each message's ENTITIES and a `gpt3_entities` record."""
        for message in messages:
            self._process_message(message)
        return messages

    def _process_message(self, message: Message) -> None:
        text = message.get(TEXT) or ""
        reason = None
        if self.entity_model is None:
            reason = "no_model"
        elif not text.strip():
            reason = "empty_text"
        elif text.startswith(INTENT_MESSAGE_PREFIX):
            reason = "intent_shortcut"
        if reason is not None:
            message.set(GPT3_ENTITIES_KEY, {"asked": False, "reason": reason}, add_to_output=True)
            return
        extraction = extract_entities(text, self.entity_model, self.caller)
        entities = self.add_extractor_name(extraction.entities)
        message.set(ENTITIES, message.get(ENTITIES, []) + entities, add_to_output=True)
        record: Dict[str, Any] = {
            "asked": True,
            "outcome": extraction.outcome,
            "model": extraction.model,
            "cached": extraction.cached,
            "dropped": extraction.dropped,
        }
        if extraction.error:
            record["error"] = extraction.error
        message.set(GPT3_ENTITIES_KEY, record, add_to_output=True)
