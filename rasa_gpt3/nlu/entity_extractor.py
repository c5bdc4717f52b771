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
entity list adds no entities and logs one warning. Messages starting with `/`, empty messages and messages over
`max_message_chars` (outcome `too_long`) are not sent; on an API failure no entities are added. Each message gets
a `gpt3_entities` record: asked, outcome, model, dropped.
"""

from __future__ import annotations

from typing import Any, Dict

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

from rasa_gpt3.inference.entities import EntityModel, extract_entities
from rasa_gpt3.nlu.component import GPT3Component
from rasa_gpt3.nlu.task_model import TaskModel

GPT3_ENTITIES_KEY = "gpt3_entities"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=True)
class GPT3EntityExtractor(GPT3Component, EntityExtractorMixin):
    """Extracts entities with the project's fine-tuned GPT entities model."""

    TASK = "entities"

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        """The component's default config (see the module docstring and the README's `NLU components`)."""
        return {**GPT3Component.get_default_config(), "max_tokens": 200}

    def _served_model(self, task_model: TaskModel) -> EntityModel:
        return EntityModel.from_task_model(
            task_model,
            max_tokens=int(self.component_config["max_tokens"]),
            max_message_chars=self.component_config["max_message_chars"],
        )

    def _without_model(self) -> str:
        return "the model is no longer asked: it adds no entities"

    def _process_message(self, message: Message) -> None:
        """Adds the located entities to ENTITIES and a `gpt3_entities` record."""
        reason = self._skip_reason(message)
        if reason is not None:
            message.set(GPT3_ENTITIES_KEY, {"asked": False, "reason": reason}, add_to_output=True)
            return
        extraction = extract_entities(message.get(TEXT), self.served_model, self.caller)
        entities = self.add_extractor_name(extraction.entities)
        message.set(ENTITIES, message.get(ENTITIES, []) + entities, add_to_output=True)
        record: Dict[str, Any] = {
            "asked": True,
            "outcome": str(extraction.outcome),
            "model": extraction.model,
            "cached": extraction.cached,
            "dropped": extraction.dropped,
        }
        if extraction.error:
            record["error"] = extraction.error
        message.set(GPT3_ENTITIES_KEY, record, add_to_output=True)
