"""Every pipeline in tests/configs trains with a real `rasa train` on the tiny bot, as RasaHQ/rasa-nlu-examples does."""

import pytest
import yaml

from .pipeline_checks import CANARY_KEY, CONFIGS, archive_json, archive_text

pytestmark = pytest.mark.slow


def uses_core(config_path) -> bool:
    return bool(yaml.safe_load(config_path.read_text()).get("policies"))


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yml")), ids=lambda path: path.stem)
def test_config_trains_and_persists_the_model_without_the_key(tiny_bot, config):
    model = tiny_bot.train(config, nlu_only=not uses_core(config))
    assert model.is_file()
    persisted = archive_json(model, "gpt3_task_model.json")
    assert persisted, "no GPT3 component persisted its model"
    for task_model in persisted:
        assert task_model["model"].startswith("ft:")
        assert task_model["backend"] == "local" and task_model["prompt_format"] == "1"
        if task_model["task"] == "intent":
            assert set(task_model["codec"]["labels"]) >= {"greet", "faq/ask_hours", "faq/ask_fee"}
        else:
            assert set(task_model["entity_types"]) == {"account_type", "amount", "PERSON"}
    # the environment had an API key (RASA_GPT3_LOCAL=1 kept requests local); it must not be in the model
    assert CANARY_KEY not in archive_text(model)
