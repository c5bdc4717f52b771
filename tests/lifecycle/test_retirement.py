"""A model whose base shuts down, end to end on the local backend (real `rasa train`, the real SDK over HTTP): one
warning within 60 days, one error and a degraded component after the date, `rasa-gpt3 models` showing both, and a
fine-tune the provider refuses.

The local backend announces a base model's shutdown date only through RASA_GPT3_SHUTDOWN_DATES, so these tests set
it to 30 days ahead, or to yesterday, without touching the package's table.
"""

from __future__ import annotations

import datetime as dt

import pytest

from rasa_gpt3 import cli
from rasa_gpt3.data.base_models import ENV_SHUTDOWN_DATES
from tests.nlu.pipeline_checks import CONFIGS, TINY_BOT, AgentRunner, make_workspace, must, run_rasa

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "gpt-4o-mini-2024-07-18"
INTENT_CONFIG = CONFIGS / "gpt3_intent.yml"


def _shutdown_in(days: int) -> str:
    return f"{BASE}={dt.date.today() + dt.timedelta(days=days)}"


def _lines(text: str, needle: str):
    return [line for line in text.splitlines() if needle in line]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """tiny_bot with its own local backend state, trained once with the base model 30 days from its shutdown."""
    workspace = make_workspace(tmp_path_factory.mktemp("retire"), TINY_BOT)
    env = dict(workspace.env, **{ENV_SHUTDOWN_DATES: _shutdown_in(30)})
    trained = must(
        run_rasa(["train", "nlu", "--config", str(INTENT_CONFIG), "--out", "models/soon"], workspace.project, env)
    )
    workspace.models["soon"] = next((workspace.project / "models" / "soon").glob("*.tar.gz"))
    workspace.soon_output = trained.stdout + trained.stderr
    return workspace


@pytest.fixture
def project_env(workspace, monkeypatch):
    """This process's environment as `rasa train` saw it, for in-process CLI calls and model loading."""
    from rasa_gpt3.local.embedded import stop_server

    for key, value in workspace.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RASA_GPT3_FAULTS", raising=False)
    yield monkeypatch
    stop_server(workspace.state_dir)


def test_thirty_days_before_rasa_train_warns_once_and_models_shows_the_days_left(workspace, project_env, capsys):
    warnings = _lines(workspace.soon_output, "shuts down on")
    assert len(warnings) == 1, workspace.soon_output[-3000:]
    assert "30 days left" in warnings[0] and "rasa-gpt3 evaluate --models" in warnings[0]
    assert "rasa-gpt3 fine-tune --task intent --base-model" in warnings[0]

    project_env.setenv(ENV_SHUTDOWN_DATES, _shutdown_in(30))
    assert cli.main(["models", "--project", str(workspace.project)]) == 0
    printed = capsys.readouterr().out
    (row,) = [line for line in printed.splitlines() if line.startswith("intent") and "active" in line]
    assert BASE in row and " 30 " in f"{row} "
    assert len(_lines(printed, "shuts down on")) == 1


def test_after_the_date_the_component_degrades_and_models_says_so(workspace, project_env, capsys, caplog):
    project_env.setenv(ENV_SHUTDOWN_DATES, _shutdown_in(-1))
    runner = AgentRunner(workspace.models["soon"])
    try:
        parsed = runner.parse("hello there")
    finally:
        runner.close()
    # the component gives nlu_fallback at confidence 0; the config's FallbackClassifier then reports its threshold
    assert parsed["intent"]["name"] == "nlu_fallback" and parsed["intent_ranking"] == [parsed["intent"]]
    assert parsed["gpt3"]["asked"] is False and parsed["gpt3"]["reason"] == "model_shut_down"
    assert len([r for r in caplog.records if "shut down on" in r.getMessage() and r.levelname == "ERROR"]) == 1

    assert cli.main(["models", "--project", str(workspace.project)]) == 0
    printed = capsys.readouterr().out
    assert "shut down" in printed and len(_lines(printed, "shut down on")) == 1

    # `rasa train` past the date: one error line, and it still finishes (the component degrades, never crashes)
    env = dict(workspace.env, **{ENV_SHUTDOWN_DATES: _shutdown_in(-1)})
    trained = must(
        run_rasa(["train", "nlu", "--config", str(INTENT_CONFIG), "--out", "models/past"], workspace.project, env)
    )
    assert len(_lines(trained.stdout + trained.stderr, "shut down on")) == 1


def test_a_refused_fine_tune_exits_1_with_one_line_and_registers_nothing(workspace, project_env, capsys):
    registry = workspace.project / "gpt3_models.yml"
    before = registry.read_bytes()
    project_env.setenv("RASA_GPT3_FAULTS", "refuse_fine_tune")
    # --epochs 2 makes a new fine-tune (not the registry's identical model), so the job must be created
    code = cli.main(["fine-tune", "--project", str(workspace.project), "--task", "intent", "--epochs", "2"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, captured.err
    assert "refuses to fine-tune" in errors[0] and "--base-model" in errors[0] and "hf:ORG/NAME" in errors[0]
    assert "Traceback" not in captured.err
    assert registry.read_bytes() == before


def test_the_action_server_warns_at_start_up_and_does_without_a_shut_down_model(workspace, project_env, caplog):
    from rasa_gpt3.actions.fallback_config import FallbackConfig
    from rasa_gpt3.actions.models import ModelLoader

    project_env.setenv(ENV_SHUTDOWN_DATES, _shutdown_in(30))
    assert ModelLoader(workspace.project, FallbackConfig(generate=False)).models().intent is not None
    said = [r for r in caplog.records if "shuts down on" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING" and "30 days left" in said[0].getMessage()

    caplog.clear()
    project_env.setenv(ENV_SHUTDOWN_DATES, _shutdown_in(-1))
    assert ModelLoader(workspace.project, FallbackConfig(generate=False)).models().intent is None
    said = [r for r in caplog.records if "shut down on" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"
