"""Real `rasa train nlu` + `rasa test nlu` with the GPT3 components on financial-demo and on example_bot."""

import json
from pathlib import Path

import pytest

from tests.conftest import FINANCIAL_DEMO

from .pipeline_checks import EXAMPLE_BOT, make_workspace

pytestmark = pytest.mark.slow


def split_nlu(project, source, seed=42):
    """Writes Rasa's own stratified 80/20 split of the project's NLU data as train.yml and test.yml."""
    from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter
    from rasa.shared.nlu.training_data.loading import load_data

    train, test = load_data(str(project / source)).train_test_split(train_frac=0.8, random_seed=seed)
    RasaYAMLWriter().dump(project / "train.yml", train)
    RasaYAMLWriter().dump(project / "test.yml", test)
    return train, test


def test_financial_demo_intents_and_entities_through_rasa_test_nlu(tmp_path_factory, nlu_env):
    workspace = make_workspace(tmp_path_factory.mktemp("financial"), FINANCIAL_DEMO)
    workspace.state_dir = nlu_env
    train, test = split_nlu(workspace.project, "data/nlu")
    model = workspace.train(Path(__file__).parent / "data" / "financial_demo_config.yml", data="train.yml")
    report = workspace.test_nlu(model, "test.yml", "results")

    intents = train.intents
    assert set(report) >= intents | {"accuracy", "macro avg", "weighted avg"}
    assert report["macro avg"]["support"] == len(test.intent_examples)
    assert report["accuracy"] > 0.7, report["accuracy"]  # 17 intents: chance is about 0.06
    entity_report = workspace.project / "results" / "GPT3EntityExtractor_report.json"
    assert json.loads(entity_report.read_text())["micro avg"]["support"] > 0


def test_example_bot_through_rasa_test_nlu(tmp_path_factory, nlu_env):
    import yaml

    workspace = make_workspace(tmp_path_factory.mktemp("example"), EXAMPLE_BOT)
    workspace.state_dir = nlu_env
    split_nlu(workspace.project, "data/nlu.yml")
    # example_bot's own pipeline with few DIET / ResponseSelector epochs (this test is about the GPT3 components;
    # a weaker DIET only routes more messages to the fine-tuned model)
    config = yaml.safe_load((workspace.project / "config.yml").read_text())
    for component in config["pipeline"]:
        if "epochs" in component:
            component["epochs"] = min(component["epochs"], 5)
    (workspace.project / "config.test.yml").write_text(yaml.safe_dump(config))
    model = workspace.train(workspace.project / "config.test.yml", data="train.yml")
    report = workspace.test_nlu(model, "test.yml", "results")
    assert report["accuracy"] > 0.6, report["accuracy"]
    assert (workspace.project / "results" / "GPT3EntityExtractor_report.json").exists()
