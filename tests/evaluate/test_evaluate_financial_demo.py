"""`rasa-gpt3 evaluate` end to end on financial-demo with the local backend: real `train_nlu`, real fine-tunes over
HTTP on 127.0.0.1, and a report whose numbers must agree with its own predictions file."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from rasa_gpt3 import cli
from rasa_gpt3.evaluation.results import BASELINE, FINE_TUNED, SYSTEMS
from tests.conftest import CORPORA

FINANCIAL_DEMO = CORPORA / "financial-demo"
FAST_BASELINE = Path(__file__).with_name("baseline_fast.yml")
SHOTS = ("2", "all")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """One CLI run (2-shot and all, 1 repeat) shared by every test here: (out dir, results, predictions, stdout)."""
    out = tmp_path_factory.mktemp("evaluation")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RASA_GPT3_LOCAL", "1")
        patch.delenv("RASA_GPT3_STATE_DIR", raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(
                [
                    "evaluate",
                    "--project",
                    str(FINANCIAL_DEMO),
                    "--baseline",
                    str(FAST_BASELINE),
                    "--shots",
                    ",".join(SHOTS),
                    "--repeats",
                    "1",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return out, results, predictions, printed.getvalue()


def _rows(predictions, shots, system):
    return [p for p in predictions if p["shots"] == shots and p["system"] == system and p["repeat"] == 0]


def test_every_run_and_side_has_one_prediction_per_test_message(evaluation):
    _, results, predictions, _ = evaluation
    n_test = results["data"]["test"]
    assert [run["shots"] for run in results["runs"]] == list(SHOTS)
    assert len(predictions) == n_test * len(SHOTS) * len(SYSTEMS)
    texts = {system: [p["text"] for p in _rows(predictions, "all", system)] for system in SYSTEMS}
    assert texts[BASELINE] == texts[FINE_TUNED] and len(texts[BASELINE]) == n_test
    # held-out messages are not in the training pool, and the split is Rasa-sized (about a fifth)
    assert results["data"]["train_pool"] + n_test == 574
    assert 0.15 < n_test / 574 < 0.25


def test_accuracy_and_counts_recomputed_from_the_predictions_file(evaluation):
    _, results, predictions, _ = evaluation
    for run in results["runs"]:
        for system in SYSTEMS:
            rows = _rows(predictions, run["shots"], system)
            metrics = run["systems"][system]
            correct = sum(1 for p in rows if p["predicted"] == p["intent"])
            assert metrics["n_test"] == len(rows) == results["data"]["test"]
            assert metrics["correct"] == correct
            assert metrics["accuracy"] == pytest.approx(correct / len(rows), abs=1e-6)
            assert metrics["report"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
            assert metrics["fallback_rate"] == pytest.approx(sum(p["fallback"] for p in rows) / len(rows), abs=1e-6)
            assert metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"]


def test_per_intent_report_agrees_with_the_predictions(evaluation):
    _, results, predictions, _ = evaluation
    run = results["runs"][results["full_run"]]
    assert run["shots"] == "all"
    for system in SYSTEMS:
        report = run["systems"][system]["report"]
        rows = _rows(predictions, "all", system)
        support = Counter(p["intent"] for p in rows)
        intents = {name for name, row in report.items() if isinstance(row, dict) and "confused_with" in row}
        assert intents == set(support)
        assert sum(report[i]["support"] for i in intents) == len(rows)
        for intent in intents:
            hits = sum(1 for p in rows if p["intent"] == intent and p["predicted"] == intent)
            assert report[intent]["support"] == support[intent]
            assert report[intent]["recall"] == pytest.approx(hits / support[intent], abs=1e-6)
        macro = sum(report[i]["f1-score"] for i in intents) / len(intents)
        assert run["systems"][system]["macro_f1"] == pytest.approx(macro, abs=1e-6)
        # the file next to results.json is the same report, in Rasa's intent_report.json shape
        written = json.loads((evaluation[0] / f"{system.replace('-', '_')}_intent_report.json").read_text())
        assert written == report


def test_out_of_scope_is_reported_from_the_out_of_scope_intent(evaluation):
    _, results, predictions, _ = evaluation
    assert results["data"]["out_of_scope_intent"] == "out_of_scope"
    assert results["data"]["fallback_rule"] == {"threshold": 0.5, "ambiguity_threshold": 0.1}
    for system in SYSTEMS:
        rows = _rows(predictions, "all", system)
        oos = results["runs"][results["full_run"]]["systems"][system]["out_of_scope"]
        gold = [p for p in rows if p["intent"] == "out_of_scope"]
        caught = [p for p in gold if p["predicted"] == "out_of_scope" or p["fallback"]]
        assert oos["out_of_scope_messages"] == len(gold) > 0
        assert oos["in_scope_messages"] == len(rows) - len(gold)
        assert oos["recall"] == pytest.approx(len(caught) / len(gold), abs=1e-6)


def test_fine_tuned_side_made_one_call_per_message_and_counted_tokens_and_cost(evaluation):
    _, results, predictions, _ = evaluation
    n_test = results["data"]["test"]
    for run in results["runs"]:
        tuned, base = run["systems"][FINE_TUNED], run["systems"][BASELINE]
        assert tuned["api_calls"] == n_test and base["api_calls"] == 0
        rows = _rows(predictions, run["shots"], FINE_TUNED)
        assert tuned["prompt_tokens"] == sum(p["prompt_tokens"] for p in rows) > n_test
        assert tuned["completion_tokens"] == n_test  # one label token per message
        assert tuned["model"].startswith("ft:") and tuned["trained_tokens"] > 0
        assert tuned["cost_usd"]["training"] > 0 and tuned["cost_usd"]["serving"] > 0
    totals = results["totals"]
    assert totals["api_calls"] == n_test * len(SHOTS)
    assert totals["prompt_tokens"] == sum(r["systems"][FINE_TUNED]["prompt_tokens"] for r in results["runs"])


def test_two_shot_run_trained_on_at_most_two_examples_per_intent(evaluation):
    _, results, _, _ = evaluation
    two = results["runs"][0]
    assert two["shots"] == "2" and two["n_train"] <= 2 * results["data"]["intents"]
    assert results["runs"][1]["n_train"] == results["data"]["train_pool"]
    curve = {(row["shots"], row["system"]): row for row in results["curve"]}
    assert set(curve) == {(s, system) for s in SHOTS for system in SYSTEMS}
    assert curve[("2", BASELINE)]["accuracy_mean"] == two["systems"][BASELINE]["accuracy"]


def test_summary_plots_and_registry_are_written_in_out(evaluation):
    out, results, _, printed = evaluation
    summary = (out / "summary.md").read_text()
    assert "## Side by side" in summary and "## Few-shot curve" in summary and "| out_of_scope |" in summary
    assert results["command"].startswith("rasa-gpt3 evaluate --project")
    for name in ("few_shot_curve.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # evaluation models go to the out dir's registry and local state, never the bot project's
    assert (out / "gpt3_models.yml").is_file() and (out / ".rasa_gpt3" / "local").is_dir()
    assert not (FINANCIAL_DEMO / "gpt3_models.yml").exists()
    assert "| accuracy |" in printed and "examples per intent" in printed
    assert results["baseline"]["source"] == f"--baseline {FAST_BASELINE}"


def test_a_second_fine_tune_on_identical_data_is_reused(evaluation):
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.evaluation.finetuned import FineTunedSide
    from rasa_gpt3.evaluation.runner import evaluation_settings
    from rasa_gpt3.evaluation.samples import sample_shots, split_train_test

    out, results, _, _ = evaluation
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RASA_GPT3_LOCAL", "1")
        project = load_project(FINANCIAL_DEMO)
        train, _ = split_train_test(project.nlu, 0.2, 42)
        side = FineTunedSide(evaluation_settings(out), project.name, None, None, None, None)
        model = side.train(side.export(sample_shots(train, 2, 42), 42), 42)
    assert model.reused and model.model == results["runs"][0]["systems"][FINE_TUNED]["model"]
