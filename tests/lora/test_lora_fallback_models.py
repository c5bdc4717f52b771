"""The fallback action's models when the project's registry does not know them (a model served by vLLM, say): the
configured base model, else an `ft:` id's own, decides the intent labels and the record format."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import FINANCIAL_DEMO


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """financial-demo without a registry (gpt3_models.yml): every model the action is given is unknown to it."""
    path = tmp_path_factory.mktemp("bot") / "financial-demo"
    shutil.copytree(FINANCIAL_DEMO, path)
    return path


def _models(project, monkeypatch, **settings):
    from rasa_gpt3.actions.fallback_config import FallbackConfig
    from rasa_gpt3.actions.models import ModelLoader

    # a remote backend, as vLLM is; nothing listens there, so the shutdown-date lookup fails at once
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("RASA_GPT3_LOCAL", raising=False)
    return ModelLoader(project, FallbackConfig(extract_entities=False, **settings)).models()


def _labels(project, base_model):
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project

    return export_task("intent", load_project(project).nlu, base_model=base_model, validate=False).codec.labels


def test_an_unregistered_intent_model_is_read_with_the_labels_of_its_configured_base_model(
    project, tiny_base, monkeypatch, caplog
):
    tiny_labels = _labels(project, str(tiny_base.path))
    default_labels = _labels(project, None)
    assert tiny_labels != default_labels  # the two tokenizers split some intent names differently

    served = _models(project, monkeypatch, intent_model="financial-demo-intent", base_model=str(tiny_base.path))
    assert served.intent.model == "financial-demo-intent"
    assert dict(served.intent.labels) == dict(tiny_labels) and served.intent.fmt == "chat"
    assert "names no base_model" not in caplog.text
    # without it the action reads the model's answers with gpt-4o-mini's labels, as before, and says so
    unconfigured = _models(project, monkeypatch, intent_model="financial-demo-intent")
    assert dict(unconfigured.intent.labels) == dict(default_labels)
    (warning,) = [r.getMessage() for r in caplog.records if "names no base_model" in r.getMessage()]
    assert "financial-demo-intent" in warning and "gpt3_fallback.yml" in warning and "\n" not in warning


def test_an_unregistered_fine_tuned_id_is_served_in_its_base_models_format(project, monkeypatch):
    model = "ft:babbage-002:acme::abc123"
    served = _models(project, monkeypatch, intent_model=model, response_model=model)
    assert served.intent.fmt == "completion" and dict(served.intent.labels) == dict(_labels(project, "babbage-002"))
    assert served.response == (model, "completion")


def test_only_a_known_base_models_shutdown_date_drops_an_unregistered_model(project, monkeypatch):
    from rasa_gpt3.data.base_models import ENV_SHUTDOWN_DATES

    monkeypatch.setenv(ENV_SHUTDOWN_DATES, "gpt-4o-mini-2024-07-18=2020-01-01")
    # a name without a base (a model served by vLLM) is read with gpt-4o-mini's labels, but is not gpt-4o-mini's
    served = _models(project, monkeypatch, intent_model="financial-demo-intent")
    assert served.intent is not None and served.intent.model == "financial-demo-intent"
    # a fine-tuned id names its base, whose shutdown date has passed: the action does without it
    retired = _models(project, monkeypatch, intent_model="ft:gpt-4o-mini-2024-07-18:acme::abc123")
    assert retired.intent is None


def test_the_nlu_components_read_an_explicit_model_the_same_way(project, tiny_base, monkeypatch, caplog):
    import json

    from rasa_gpt3.data.base_models import ENV_SHUTDOWN_DATES
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.nlu.task_model import fingerprint_addon, obtain_task_model

    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("RASA_GPT3_LOCAL", raising=False)
    monkeypatch.setenv(ENV_SHUTDOWN_DATES, "gpt-4o-mini-2024-07-18=2020-01-01")
    nlu = load_project(project).nlu

    def obtain(**config):
        return obtain_task_model("intent", nlu, {"project": str(project), **config}, "GPT3IntentClassifier")

    served = obtain(model="financial-demo-intent", base_model=str(tiny_base.path))
    assert served.base_model == str(tiny_base.path) and dict(served.codec["labels"]) == dict(
        _labels(project, str(tiny_base.path))
    )
    # no base known: gpt-4o-mini's labels as a guess, but not its shutdown date (nor a retrain when it nears)
    assert "names no base_model" not in caplog.text
    guessed = obtain(model="financial-demo-intent")
    assert guessed.base_model is None and dict(guessed.codec["labels"]) == dict(_labels(project, None))
    assert "GPT3IntentClassifier: intent model financial-demo-intent is not in the registry" in caplog.text
    assert json.loads(fingerprint_addon("intent", {"project": str(project), "model": "financial-demo-intent"}))[
        "shutdown"
    ] == [None, None]
    assert obtain(model="ft:gpt-4o-mini-2024-07-18:acme::abc123").base_model == "gpt-4o-mini-2024-07-18"
