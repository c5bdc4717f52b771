"""`rasa-gpt3 evaluate` on a bot whose config.yml still names Rasa 2 components (ConveRTTokenizer, ConveRTFeaturizer):
the baseline falls back to Rasa's default pipeline, the run finishes, and the report says why and how to choose."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import yaml

from rasa_gpt3 import cli
from rasa_gpt3.evaluation.results import BASELINE, FINE_TUNED
from tests.conftest import REPO

from .test_evaluate_parts import RASA_2_CONVERT_PIPELINE

TRAVEL_BOT = REPO / "tests" / "fixtures" / "travel_bot"

pytestmark = pytest.mark.slow


def test_a_rasa_2_config_falls_back_to_rasas_default_pipeline_and_the_report_says_why(tmp_path, monkeypatch):
    project = tmp_path / "travel_bot"
    shutil.copytree(TRAVEL_BOT, project)
    config = yaml.safe_load((project / "config.yml").read_text(encoding="utf-8"))
    config["pipeline"] = RASA_2_CONVERT_PIPELINE
    (project / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("RASA_GPT3_LOCAL", "1")
    monkeypatch.delenv("RASA_GPT3_STATE_DIR", raising=False)
    out = tmp_path / "evaluation"

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["evaluate", "--project", str(project), "--out", str(out), "--no-progress"])

    assert code == 0, printed.getvalue()[-2000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    source = results["baseline"]["source"]
    assert source.startswith("Rasa's default pipeline, because the project's pipeline needs what is missing here")
    assert "ConveRTTokenizer (Rasa" in source and "cannot load it" in source and "ConveRTFeaturizer (" in source
    assert "choose another baseline with --baseline CONFIG.yml" in source
    trained = [component["name"] for component in results["baseline"]["config"]["pipeline"]]
    assert "ConveRTTokenizer" not in trained and "DIETClassifier" in trained
    assert f"- baseline: {source}" in (out / "summary.md").read_text(encoding="utf-8")
    (run,) = results["runs"]
    assert run["systems"][BASELINE]["n_test"] == run["systems"][FINE_TUNED]["n_test"] == results["data"]["test"]
