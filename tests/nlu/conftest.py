"""Fixtures for the NLU component tests: one workspace, models trained once, one in-process Agent each.

They live as long as the tests of this package run (package scope), not the whole session: the environment they
set (RASA_GPT3_STATE_DIR, RASA_GPT3_LOCAL, the canary key) is restored and their embedded backend stopped before
another package's tests start, so `pytest tests/nlu tests/actions tests/finetune` passes in any order.
"""

from __future__ import annotations

import pytest

from .pipeline_checks import CONFIGS, TINY_BOT, AgentRunner, BackendControls, archive_json, make_workspace, rasa_env


@pytest.fixture(scope="package")
def nlu_env(tmp_path_factory):
    """This process's environment set as `rasa train` sees it (local backend state in a temporary directory)."""
    from rasa_gpt3.local.embedded import stop_server

    state_dir = tmp_path_factory.mktemp("nlu-local-state")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in rasa_env(state_dir).items():
            patch.setenv(key, value)
        patch.delenv("OPENAI_BASE_URL", raising=False)
        patch.delenv("RASA_GPT3_FAULTS", raising=False)
        yield state_dir
    stop_server(state_dir)


@pytest.fixture(scope="package")
def tiny_bot(tmp_path_factory, nlu_env):
    """A copy of tests/nlu/data/tiny_bot sharing the package's local backend state."""
    workspace = make_workspace(tmp_path_factory.mktemp("tiny"), TINY_BOT)
    workspace.state_dir = nlu_env
    return workspace


@pytest.fixture(scope="package")
def full_model(tiny_bot):
    """tiny_bot trained with `rasa train` (NLU + RulePolicy) on tests/configs/gpt3_intent_entities.yml."""
    return tiny_bot.train(CONFIGS / "gpt3_intent_entities.yml", nlu_only=False)


@pytest.fixture(scope="package")
def agent(full_model, nlu_env):
    """The full model loaded into a Rasa Agent in this process."""
    runner = AgentRunner(full_model)
    yield runner
    runner.close()


@pytest.fixture(scope="package")
def backend(agent, nlu_env):
    """Controls of the embedded local backend the agent's components talk to."""
    controls = BackendControls(nlu_env)
    yield controls
    controls.set_faults(None)


@pytest.fixture
def no_faults(backend):
    """Clears injected faults before and after a test."""
    backend.set_faults(None)
    yield backend
    backend.set_faults(None)


def _task_model(full_model, task):
    from rasa_gpt3.nlu.task_model import TaskModel

    (stored,) = [m for m in archive_json(full_model, "gpt3_task_model.json") if m["task"] == task]
    return TaskModel.from_json(stored)


@pytest.fixture
def intent_model(full_model):
    """The intent model `full_model` serves, as the component builds it (default options)."""
    from rasa_gpt3.inference.intents import IntentModel

    return IntentModel.from_task_model(_task_model(full_model, "intent"))


@pytest.fixture
def entity_model(full_model):
    """The entities model `full_model` serves, as the component builds it (default options)."""
    from rasa_gpt3.inference.entities import EntityModel

    return EntityModel.from_task_model(_task_model(full_model, "entities"))


@pytest.fixture
def local_caller(nlu_env, agent):
    """A factory of BoundedCallers with their own breaker and cache, to the backend the agent's components use."""
    from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy
    from rasa_gpt3.settings import Settings

    def make(**policy):
        return BoundedCaller(Settings.from_env(), CallPolicy(**policy))

    return make
