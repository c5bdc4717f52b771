"""`rasa-gpt3 evaluate --models` on financial-demo: two local models fine-tuned on different shot counts, compared
with each other and the bot's pipeline on the same held-out messages (real `train_nlu`, real SDK over HTTP)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from rasa_gpt3 import cli
from rasa_gpt3.errors import DataError
from rasa_gpt3.evaluation.candidates import _label_mismatch, parse_model_references
from rasa_gpt3.evaluation.comparison import CRITERIA, judge
from rasa_gpt3.evaluation.results import BASELINE
from rasa_gpt3.registry import Registry
from tests.conftest import FINANCIAL_DEMO

FAST_BASELINE = Path(__file__).parents[1] / "evaluate" / "baseline_fast.yml"
SHOTS = (2, 10)


def _fine_tune_on_shots(project_dir, shots):
    """A local intent model fine-tuned on `shots` examples per intent of the training split (seed 42, 20% held out)."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.evaluation.samples import sample_shots, split_train_test
    from rasa_gpt3.finetune import ensure_fine_tuned
    from rasa_gpt3.settings import Settings

    project = load_project(project_dir)
    train_pool, _ = split_train_test(project.nlu, 0.2, 42)
    exported = export_task("intent", sample_shots(train_pool, shots, 42), valid_fraction=0.0, seed=42)
    outcome = ensure_fine_tuned(Settings.from_env(project_dir), exported, project_name=project.name, seed=42)
    return outcome.model


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Both models fine-tuned into a copy of financial-demo (the 10-shot one active), then one CLI comparison."""
    root = tmp_path_factory.mktemp("compare")
    project_dir = root / "financial-demo"
    shutil.copytree(FINANCIAL_DEMO, project_dir)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RASA_GPT3_LOCAL", "1")
        patch.delenv("RASA_GPT3_STATE_DIR", raising=False)
        patch.delenv("RASA_GPT3_SHUTDOWN_DATES", raising=False)
        models = [_fine_tune_on_shots(project_dir, shots) for shots in SHOTS]
        registry_before = (project_dir / "gpt3_models.yml").read_bytes()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(
                ["evaluate", "--project", str(project_dir), "--models", ",".join(models), "--baseline",
                 str(FAST_BASELINE), "--out", str(out), "--no-progress"]
            )  # fmt: skip
    assert code == 0
    assert (project_dir / "gpt3_models.yml").read_bytes() == registry_before  # comparing changes nothing
    results = json.loads((out / "results.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return project_dir, models, results, predictions, printed.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_both_models_are_printed_with_one_verdict_each(compared):
    project_dir, (two_shot, ten_shot), results, _, printed = compared
    assert Registry.load(project_dir / "gpt3_models.yml").active("intent", "local").model == ten_shot
    # the model in use (the 10-shot one, active) is the reference, whatever the order on the command line
    assert [m["model"] for m in results["models"]] == [ten_shot, two_shot]
    assert [m["in_use"] for m in results["models"]] == [True, False]
    for model in (two_shot, ten_shot):
        assert model in printed
    verdicts = [line for line in printed.splitlines() if line.startswith((f"A {ten_shot}:", f"B {two_shot}:"))]
    assert len(verdicts) == 2 and "the model in use" in verdicts[0]
    assert ("at least as good as A" in verdicts[1]) != ("NOT as good as A" in verdicts[1])
    assert "| accuracy |" in printed and "| macro-F1 |" in printed and BASELINE in printed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_verdict_follows_the_stated_rule_from_the_predictions_file(compared):
    _, _, results, predictions, _ = compared
    n_test = results["data"]["test"]
    by_system = {}
    for row in predictions:
        by_system.setdefault(row["system"], []).append(row)
    assert set(by_system) == {BASELINE, "A", "B"}
    assert all(len(rows) == n_test for rows in by_system.values())
    assert (
        [r["text"] for r in by_system["A"]]
        == [r["text"] for r in by_system["B"]]
        == [r["text"] for r in by_system[BASELINE]]
    )
    measured = {}
    for name in ("A", "B"):
        rows = by_system[name]
        measured[name] = {
            "accuracy": sum(r["predicted"] == r["intent"] for r in rows) / n_test,
            "fallback_rate": sum(r["fallback"] for r in rows) / n_test,
        }
        metrics = results["models"][ord(name) - ord("A")]["metrics"]
        assert metrics["accuracy"] == pytest.approx(measured[name]["accuracy"], abs=1e-6)
        assert metrics["fallback_rate"] == pytest.approx(measured[name]["fallback_rate"], abs=1e-6)
        measured[name]["macro_f1"] = metrics["macro_f1"]
    tolerance = results["tolerance"]
    expected = all(sign * (measured["B"][c] - measured["A"][c]) >= -tolerance - 1e-9 for c, sign in CRITERIA)
    candidate = results["models"][1]
    assert candidate["at_least_as_good"] is expected
    assert set(candidate["vs_reference"]["per_intent_f1"]) >= {r["intent"] for r in by_system["A"]}
    # neither model saw the held-out messages, and both were read with verified labels
    assert all(m["labels"].startswith("verified") for m in results["models"])
    assert results["data"]["train_pool"] + n_test == 574


def test_the_rule_tolerates_exactly_the_tolerance_and_no_more():
    reference = {"accuracy": 0.80, "macro_f1": 0.80, "fallback_rate": 0.10}
    assert judge({"accuracy": 0.79, "macro_f1": 0.85, "fallback_rate": 0.11}, reference, 0.01)[0]
    assert not judge({"accuracy": 0.78, "macro_f1": 0.85, "fallback_rate": 0.05}, reference, 0.01)[0]
    assert not judge({"accuracy": 0.90, "macro_f1": 0.90, "fallback_rate": 0.12}, reference, 0.01)[0]
    good, differences = judge({"accuracy": 0.90, "macro_f1": 0.70, "fallback_rate": 0.0}, reference, 0.2)
    assert good and differences["macro_f1"] == pytest.approx(-0.1)


def test_references_and_a_model_trained_on_other_labels_are_one_line(tmp_path, capsys):
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.prompts import intent_record
    from tests.finetune.test_lifecycle import write_bot

    assert parse_model_references(" ft:a:b:c:d, active@local,ft:a:b:c:d ,") == ["ft:a:b:c:d", "active@local"]
    with pytest.raises(DataError):
        parse_model_references(" , ")
    project = load_project(write_bot(tmp_path / "bot"))
    codec = export_task("intent", project.nlu, validate=False).codec
    agreeing = [
        intent_record("hi", codec.labels["greet"], "chat"),
        intent_record("new text", codec.labels["goodbye"], "chat"),
    ]
    assert _label_mismatch(agreeing, project.nlu, codec) is None
    swapped = [intent_record("hi", codec.labels["goodbye"], "chat")]
    assert "an example of greet" in _label_mismatch(swapped, project.nlu, codec)
    assert "none of this project's" in _label_mismatch([intent_record("hi", "zebra", "chat")], project.nlu, codec)

    code = cli.main(["evaluate", "--project", str(tmp_path / "bot"), "--models", "ft:x:y:z:w", "--shots", "2"])
    assert code == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
