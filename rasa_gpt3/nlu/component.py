"""What GPT3IntentClassifier and GPT3EntityExtractor share: one GraphComponent serving one task's fine-tuned model.

The base class trains (finds or fine-tunes the task's model, see `task_model`), persists and loads it, warns when
the backend changed since training, checks the model's shutdown date when trained and loaded (one warning line
within 60 days; past the date one error line, and the model is no longer asked: `rasa_gpt3.model_lifecycle`), warms
the model up on the local backend, holds the process-wide bounded caller and decides which messages are never
sent. A subclass names its `TASK`, builds the model it serves from the `TaskModel` and says what a message gets
from it.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.nlu.constants import TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy, caller_for
from rasa_gpt3.intent_names import is_shortcut
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


class GPT3Component(GraphComponent):
    """Serves the project's fine-tuned model for `TASK` ("intent" or "entities") inside a Rasa pipeline."""

    # the task of the model this component serves (rasa_gpt3.prompts.TASKS)
    TASK: str = ""

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        """The configuration keys both components take (see `task_model.COMMON_DEFAULTS`)."""
        return dict(COMMON_DEFAULTS)

    def __init__(
        self,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        task_model: Optional[TaskModel] = None,
    ) -> None:
        """Creates the component; `task_model` is the trained model (None before training)."""
        self.component_config = {**self.get_default_config(), **config}
        self._validate_config(self.component_config)
        self._model_storage = model_storage
        self._resource = resource
        self._execution_context = execution_context
        self._settings = settings_from_config(self.component_config)
        self._policy = CallPolicy.from_config(self.component_config)
        self._caller: Optional[BoundedCaller] = None
        # set when the served model's shutdown date has passed: it is no longer asked
        self._shut_down = False
        self._serve(task_model)

    def _validate_config(self, config: Dict[str, Any]) -> None:
        """Raises InvalidConfigException (one line) for a bad configuration value."""
        validate_common_config(type(self).__name__, config)

    def _served_model(self, task_model: TaskModel) -> Any:
        """The IntentModel or EntityModel this component asks, built from the trained `task_model`."""
        raise NotImplementedError

    def _serve(self, task_model: Optional[TaskModel]) -> None:
        self.task_model = task_model
        self.served_model = self._served_model(task_model) if task_model is not None else None

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> GPT3Component:
        """Creates a new untrained component."""
        return cls(config, model_storage, resource, execution_context)

    @classmethod
    def fingerprint_addon(cls, config: Dict[str, Any]) -> Optional[str]:
        """Prompt format, backend and the registry's active model for the task: changes there retrain the component."""
        return fingerprint_addon(cls.TASK, {**cls.get_default_config(), **config})

    def train(self, training_data: TrainingData) -> Resource:
        """Exports the task's data, finds or fine-tunes the model for it, and persists what serving it needs."""
        self._serve(obtain_task_model(self.TASK, training_data, self.component_config, type(self).__name__))
        persist_task_model(self.task_model, self._model_storage, self._resource)
        self._check_shutdown()
        return self._resource

    @classmethod
    def load(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> GPT3Component:
        """Loads the trained component and, on the local backend, warms the model up."""
        task_model = load_task_model(model_storage, resource, cls.__name__)
        component = cls(config, model_storage, resource, execution_context, task_model)
        component._check_backend()
        component._check_shutdown()
        model = component.served_model
        if (
            model is not None
            and not component._shut_down
            and component.component_config["warm_up"]
            and component._settings.uses_local_backend
        ):
            component.caller.warm_up(model.model, model.request_body("hello"))
        return component

    def _check_backend(self) -> None:
        if self.task_model is not None and self.task_model.backend != self._settings.backend_name:
            logger.warning(
                "%s: model %s was trained on %s but requests now go to %s; run `rasa train`",
                type(self).__name__,
                self.task_model.model,
                self.task_model.backend,
                self._settings.backend_name,
            )

    def _check_shutdown(self) -> None:
        """Logs one line when the served model shuts down within 60 days or has; past the date it is not asked."""
        if self.task_model is None:
            return
        from rasa_gpt3.model_lifecycle import lifecycle_on

        name = type(self).__name__
        try:
            lifecycle = lifecycle_on(self._settings, self.task_model.model, self.task_model.base_model)
        except RasaGPT3Error as error:
            logger.error("%s: %s", name, error)
            return
        self._shut_down = lifecycle.retired
        if lifecycle.retired:
            logger.error("%s: %s", name, lifecycle.error(self.TASK, self._without_model()))
        elif lifecycle.due_soon:
            logger.warning("%s: %s", name, lifecycle.warning(self.TASK))

    def _without_model(self) -> str:
        """What messages get while the model is not asked (for the shut-down error line)."""
        return "the model is no longer asked"

    @property
    def caller(self) -> BoundedCaller:
        """The process-wide bounded caller for this backend and policy."""
        if self._caller is None:
            self._caller = caller_for(self._settings, self._policy)
        return self._caller

    def process(self, messages: List[Message]) -> List[Message]:
        """Asks the model about each message (or records why not)."""
        for message in messages:
            self._process_message(message)
        return messages

    def _process_message(self, message: Message) -> None:
        raise NotImplementedError

    def _skip_reason(self, message: Message) -> Optional[str]:
        """Why the model is not asked about `message` (no model, it shut down, empty text, a shortcut), or None."""
        text = message.get(TEXT) or ""
        if self.served_model is None:
            return "no_model"
        if self._shut_down:
            return "model_shut_down"
        if not text.strip():
            return "empty_text"
        if is_shortcut(text):
            return "intent_shortcut"
        return None
