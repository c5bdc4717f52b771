"""A component configuration the components cannot use is refused with one line, before anything is trained."""

from __future__ import annotations

import pytest
from rasa.shared.exceptions import InvalidConfigException

from rasa_gpt3.nlu.entity_extractor import GPT3EntityExtractor
from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier

COMPONENTS = [GPT3IntentClassifier, GPT3EntityExtractor]


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "config, message",
    [
        # 0 once silently meant "chosen from the data size"; the API refuses the others only after an upload
        ({"epochs": 0}, "epochs must be a whole number from 1 to 50, not 0"),
        ({"epochs": -1}, "epochs must be a whole number from 1 to 50, not -1"),
        ({"epochs": 51}, "epochs must be a whole number from 1 to 50, not 51"),
        ({"epochs": "3"}, "epochs must be a whole number from 1 to 50, not '3'"),
        ({"max_message_chars": 0}, "max_message_chars must be a whole number of characters, at least 1, not 0"),
        ({"max_message_chars": 2.5}, "max_message_chars must be a whole number of characters, at least 1, not 2.5"),
        ({"max_message_chars": None}, "max_message_chars must be a whole number of characters, at least 1, not None"),
    ],
)
def test_bad_values_are_one_line(component, config, message):
    with pytest.raises(InvalidConfigException) as refused:
        component(config, None, None, None)
    assert str(refused.value).startswith(f"{component.__name__}: {message}")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_good_values_are_taken(component):
    assert component({"epochs": 3}, None, None, None).component_config["epochs"] == 3
    assert component({}, None, None, None).component_config["epochs"] is None
    assert component({}, None, None, None).component_config["max_message_chars"] == 4096
    assert component({"max_message_chars": 500}, None, None, None).component_config["max_message_chars"] == 500
