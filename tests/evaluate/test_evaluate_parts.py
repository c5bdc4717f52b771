"""The pure parts of `rasa-gpt3 evaluate`: shots, split, k-shot samples, baseline, metrics, curve, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rasa_gpt3 import cli
from rasa_gpt3.data.export import full_intent, text_examples
from rasa_gpt3.errors import DataError, ProjectError
from rasa_gpt3.evaluation.baseline import FallbackRule, resolve_baseline
from rasa_gpt3.evaluation.metrics import (
    few_shot_curve,
    intent_report,
    latency_summary,
    out_of_scope_summary,
    summarize_predictions,
)
from rasa_gpt3.evaluation.results import BASELINE, FINE_TUNED, Prediction
from rasa_gpt3.evaluation.runner import EvaluationOptions, parse_shots, plan_runs
from rasa_gpt3.evaluation.samples import find_out_of_scope_intent, sample_shots, split_train_test
from rasa_gpt3.evaluation.threshold import recommend_from_predictions, recommendation_record

FINANCIAL_DEMO = Path(__file__).resolve().parents[1].parent.parent / "shared" / "corpora" / "financial-demo"


def _nlu(counts):
    """TrainingData with `counts[intent]` distinct examples per intent, plus a synonym and a regex."""
    from rasa.shared.nlu.training_data.message import Message
    from rasa.shared.nlu.training_data.training_data import TrainingData

    examples = [
        Message.build(text=f"{intent} example number {i}", intent=intent)
        for intent, n in counts.items()
        for i in range(n)
    ]
    return TrainingData(
        examples, entity_synonyms={"cc": "credit card"}, regex_features=[{"name": "account", "pattern": r"\d{6}"}]
    )


def _by_intent(data):
    counts = {}
    for message in text_examples(data):
        counts[full_intent(message)] = counts.get(full_intent(message), 0) + 1
    return counts


# ---------------------------------------------------------------- options


def test_parse_shots_sorts_deduplicates_and_puts_all_last():
    assert parse_shots("10, all,1,10,2") == [1, 2, 10, None]
    assert parse_shots("all") == [None]


@pytest.mark.parametrize("text", ["0", "-3", "five", "", " , "])
def test_parse_shots_rejects_bad_values(text):
    with pytest.raises(DataError):
        parse_shots(text)


def test_plan_runs_repeats_each_k_but_all_once():
    runs = plan_runs([2, 5, None], repeats=3, seed=7)
    assert [(r.shots, r.repeat, r.seed) for r in runs] == [
        (2, 0, 7),
        (2, 1, 8),
        (2, 2, 9),
        (5, 0, 7),
        (5, 1, 8),
        (5, 2, 9),
        (None, 0, 7),
    ]
    assert runs[0].name == "2-shot-r0" and runs[-1].name == "all-r0"


def test_as_command_reproduces_the_options(tmp_path):
    options = EvaluationOptions(project=Path("bot"), out=Path("out dir"), shots=[5, None], repeats=2, seed=3)
    command = options.as_command()
    assert command == "rasa-gpt3 evaluate --project bot --shots 5,all --repeats 2 --seed 3 --out 'out dir'"
    parsed = cli.build_parser().parse_args(__import__("shlex").split(command)[1:])
    assert (parsed.shots, parsed.repeats, parsed.seed, parsed.out) == ("5,all", 2, 3, "out dir")


# ---------------------------------------------------------------- data


def test_split_is_stratified_seeded_and_keeps_singletons_in_training():
    nlu = _nlu({"greet": 10, "bye": 5, "rare": 1})
    train, test = split_train_test(nlu, 0.2, seed=1)
    assert _by_intent(train) == {"greet": 8, "bye": 4, "rare": 1}
    assert _by_intent(test) == {"greet": 2, "bye": 1}
    texts = lambda data: sorted(m.get("text") for m in text_examples(data))  # noqa: E731
    assert not set(texts(train)) & set(texts(test))
    again_train, again_test = split_train_test(nlu, 0.2, seed=1)
    assert texts(again_test) == texts(test)
    assert any(texts(split_train_test(nlu, 0.2, seed=s)[1]) != texts(test) for s in range(2, 6))
    # the subsets keep the data's synonyms and regexes, so the baseline trains with them
    assert train.entity_synonyms == {"cc": "credit card"} and train.regex_features


def test_sample_shots_takes_k_per_intent_nested_and_seeded():
    nlu = _nlu({"greet": 12, "bye": 6, "rare": 2})
    two = sample_shots(nlu, 2, seed=5)
    five = sample_shots(nlu, 5, seed=5)
    assert _by_intent(two) == {"greet": 2, "bye": 2, "rare": 2}
    assert _by_intent(five) == {"greet": 5, "bye": 5, "rare": 2}
    texts = lambda data: {m.get("text") for m in text_examples(data)}  # noqa: E731
    assert texts(two) <= texts(five)
    assert texts(sample_shots(nlu, 2, seed=5)) == texts(two)
    assert any(texts(sample_shots(nlu, 2, seed=s)) != texts(two) for s in range(6, 10))
    assert len(text_examples(sample_shots(nlu, None, seed=5))) == 20


def test_out_of_scope_intent_is_found_by_name_or_given():
    assert find_out_of_scope_intent(["greet", "out_of_scope"]) == "out_of_scope"
    assert find_out_of_scope_intent(["greet", "OOS"]) == "OOS"
    assert find_out_of_scope_intent(["greet", "bye"]) is None
    assert find_out_of_scope_intent(["greet", "chitchat"], "chitchat") == "chitchat"
    with pytest.raises(DataError):
        find_out_of_scope_intent(["greet"], "nonsense")


# ---------------------------------------------------------------- baseline config


def test_financial_demo_pipeline_keeps_its_classifier_and_drops_what_cannot_run():
    config = yaml.safe_load((FINANCIAL_DEMO / "config.yml").read_text())
    baseline = resolve_baseline(config)
    names = [c["name"] for c in baseline.config["pipeline"]]
    assert "DIETClassifier" in names and "FallbackClassifier" in names
    assert "DucklingEntityExtractor" not in names  # nothing answers on localhost:8000 here
    dropped = {d["component"]: d["reason"] for d in baseline.dropped}
    assert "no Duckling server" in dropped["DucklingEntityExtractor"]
    if "SpacyNLP" in dropped:
        assert "SpacyEntityExtractor" in dropped
    assert "policies" not in baseline.config and baseline.config["language"] == "en"
    assert baseline.source == "the project's config.yml"


def test_pipeline_needing_spacy_for_intents_falls_back_to_rasas_default(monkeypatch):
    import rasa_gpt3.evaluation.baseline as baseline_module

    monkeypatch.setattr(baseline_module, "_package_missing", lambda package: package == "spacy")
    config = {
        "language": "de",
        "pipeline": [
            {"name": "SpacyNLP", "model": "de_core_news_md"},
            {"name": "SpacyTokenizer"},
            {"name": "SpacyFeaturizer"},
            {"name": "DIETClassifier"},
        ],
    }
    baseline = resolve_baseline(config)
    assert (
        baseline.source.startswith("Rasa's default pipeline")
        and "SpacyTokenizer (spacy is not installed)" in baseline.source
    )
    assert baseline.config["language"] == "de"
    assert [c["name"] for c in baseline.config["pipeline"]][0] == "WhitespaceTokenizer"


# a Rasa 2 config, as public bots still have it: Rasa 3 has no ConveRTTokenizer, and its ConveRTFeaturizer needs a
# model_url (the model's original home is gone)
RASA_2_CONVERT_PIPELINE = [
    {"name": "ConveRTTokenizer"},
    {"name": "ConveRTFeaturizer"},
    {"name": "CountVectorsFeaturizer"},
    {"name": "DIETClassifier", "epochs": 100},
    {"name": "FallbackClassifier", "threshold": 0.4},
]


def test_components_rasa_cannot_load_mean_rasas_default_pipeline_and_how_to_choose_another(tmp_path):
    from rasa.version import __version__ as rasa_version

    baseline = resolve_baseline({"language": "en", "pipeline": RASA_2_CONVERT_PIPELINE})
    assert baseline.source == (
        "Rasa's default pipeline, because the project's pipeline needs what is missing here: ConveRTTokenizer (Rasa "
        f"{rasa_version} cannot load it: a Rasa 2 component, or a custom one not importable here), ConveRTFeaturizer "
        "(Parameter 'model_url' was not specified in the configuration of 'ConveRTFeaturizer'); choose another "
        "baseline with --baseline CONFIG.yml (a Rasa 3 NLU pipeline)"
    )
    assert [c["name"] for c in baseline.config["pipeline"]][0] == "WhitespaceTokenizer"
    custom = resolve_baseline(
        {"pipeline": [{"name": "WhitespaceTokenizer"}, {"name": "my_bot.Classifier"}, {"name": "DIETClassifier"}]}
    )
    assert f"Classifier (Rasa {rasa_version} cannot load it" in custom.source
    # a --baseline the user chose is never replaced: it is refused in one line
    chosen = tmp_path / "old.yml"
    chosen.write_text(yaml.safe_dump({"language": "en", "pipeline": RASA_2_CONVERT_PIPELINE}))
    with pytest.raises(ProjectError, match=r"cannot run here: ConveRTTokenizer \(Rasa .* cannot load it"):
        resolve_baseline(None, chosen)


def test_rasa_gpt3_components_are_the_other_side():
    config = {
        "pipeline": [
            {"name": "WhitespaceTokenizer"},
            {"name": "rasa_gpt3.GPT3IntentClassifier"},
            {"name": "FallbackClassifier", "threshold": 0.6},
        ]
    }
    baseline = resolve_baseline(config)
    assert "no intent classifier besides rasa_gpt3's" in baseline.source and "--baseline CONFIG.yml" in baseline.source
    assert baseline.dropped == [{"component": "GPT3IntentClassifier", "reason": "it is the fine-tuned side"}]
    with_diet = resolve_baseline(
        {
            "pipeline": [
                {"name": "WhitespaceTokenizer"},
                {"name": "CountVectorsFeaturizer"},
                {"name": "DIETClassifier"},
                {"name": "rasa_gpt3.GPT3IntentClassifier"},
            ]
        }
    )
    assert [c["name"] for c in with_diet.config["pipeline"]] == [
        "WhitespaceTokenizer",
        "CountVectorsFeaturizer",
        "DIETClassifier",
    ]


def test_no_pipeline_means_rasas_default():
    assert resolve_baseline({"language": "en"}).source.startswith("Rasa's default pipeline")
    assert resolve_baseline(None).config["pipeline"]


def test_unusable_baseline_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.yml"
    empty.write_text("language: en\n")
    with pytest.raises(ProjectError, match="has no pipeline"):
        resolve_baseline(None, empty)
    broken = tmp_path / "broken.yml"
    broken.write_text("pipeline:\n  - name: [unclosed\n")
    with pytest.raises(ProjectError, match="malformed YAML .* line"):
        resolve_baseline(None, broken)


def test_fallback_rule_reads_the_pipeline_and_decides_like_fallback_classifier():
    rule = FallbackRule.from_pipeline([{"name": "DIETClassifier"}, {"name": "FallbackClassifier", "threshold": 0.7}])
    assert rule == FallbackRule(0.7, 0.1)
    assert FallbackRule.from_pipeline([{"name": "DIETClassifier"}]) is None
    ranking = lambda a, b: [{"name": "x", "confidence": a}, {"name": "y", "confidence": b}]  # noqa: E731
    assert rule.applies(0.6, ranking(0.6, 0.1))  # below threshold
    assert rule.applies(0.75, ranking(0.75, 0.7))  # ambiguous
    assert not rule.applies(0.9, ranking(0.9, 0.05))
    assert not rule.applies(0.9, [])


# ---------------------------------------------------------------- metrics


def _p(intent, predicted, fallback=False, latency=10.0):
    return Prediction(
        text=f"{intent}->{predicted}",
        intent=intent,
        predicted=predicted,
        confidence=0.9,
        latency_ms=latency,
        fallback=fallback,
    )


def test_intent_report_has_rasas_shape_and_counts():
    targets = ["greet", "greet", "bye", "bye", "bye", "oos"]
    predicted = ["greet", "bye", "bye", "bye", "greet", "nlu_fallback"]
    report = intent_report(targets, predicted)
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert set(report) >= {"greet", "bye", "oos", "macro avg", "weighted avg", "accuracy"}
    assert sum(report[i]["support"] for i in ("greet", "bye", "oos")) == 6
    assert report["bye"]["recall"] == pytest.approx(2 / 3)
    assert report["bye"]["confused_with"] == {"greet": 1}
    assert report["greet"]["precision"] == pytest.approx(1 / 2)


def test_out_of_scope_counts_rejections_by_intent_or_fallback():
    predictions = [
        _p("oos", "oos"),
        _p("oos", "greet", fallback=True),
        _p("oos", "greet"),  # 2 of 3 caught
        _p("greet", "greet"),
        _p("greet", "oos"),
        _p("bye", "bye", fallback=True),
        _p("bye", "bye"),
    ]
    summary = out_of_scope_summary(predictions, "oos")
    assert summary["out_of_scope_messages"] == 3 and summary["in_scope_messages"] == 4
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["rejected"] == 4 and summary["precision"] == pytest.approx(2 / 4)
    assert summary["in_scope_rejected"] == pytest.approx(2 / 4)
    assert summary["in_scope_accuracy"] == pytest.approx(2 / 4)


def test_summary_of_a_run_adds_up():
    predictions = [_p("a", "a", latency=1), _p("a", "b", latency=2), _p("b", "b", latency=3), _p("b", "b", True, 100)]
    summary = summarize_predictions(predictions, None)
    assert (summary["n_test"], summary["correct"], summary["accuracy"]) == (4, 3, 0.75)
    assert summary["fallback_rate"] == 0.25 and summary["out_of_scope"] is None
    assert summary["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2, abs=1e-6)
    assert summary["latency_ms"]["p50"] == 2.5 and summary["latency_ms"]["p95"] > 50
    assert latency_summary([]) == {"p50": 0.0, "p95": 0.0, "mean": 0.0}


def test_few_shot_curve_gives_mean_and_spread_over_repeats():
    def run(shots, repeat, base, tuned, n):
        return {
            "shots": shots,
            "repeat": repeat,
            "n_train": n,
            "systems": {
                BASELINE: {"accuracy": base, "macro_f1": base / 2},
                FINE_TUNED: {"accuracy": tuned, "macro_f1": tuned / 2},
            },
        }

    rows = few_shot_curve([run("2", 0, 0.4, 0.6, 10), run("2", 1, 0.6, 0.8, 10), run("all", 0, 0.9, 0.95, 50)])
    two_base = next(r for r in rows if r["shots"] == "2" and r["system"] == BASELINE)
    assert two_base["accuracy_mean"] == pytest.approx(0.5) and two_base["accuracy_std"] == pytest.approx(
        0.141421, abs=1e-5
    )
    assert two_base["repeats"] == 2 and two_base["n_train"] == 10
    all_tuned = next(r for r in rows if r["shots"] == "all" and r["system"] == FINE_TUNED)
    assert all_tuned["accuracy_std"] == 0.0 and all_tuned["macro_f1_mean"] == pytest.approx(0.475)


# ---------------------------------------------------------------- CLI errors (one line, non-zero, before any work)


def _tiny_project(root: Path, per_intent: int = 5) -> Path:
    (root / "data").mkdir(parents=True)
    lines = ["version: '3.1'", "nlu:"]
    for intent in ("greet", "goodbye", "out_of_scope"):
        lines.append(f"- intent: {intent}")
        lines.append("  examples: |")
        lines += [f"    - {intent} sentence {i}" for i in range(per_intent)]
    (root / "data" / "nlu.yml").write_text("\n".join(lines) + "\n")
    (root / "domain.yml").write_text("version: '3.1'\nintents:\n- greet\n- goodbye\n- out_of_scope\n")
    return root


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shots", "0"], "--shots values must be at least 1"),
        (["--shots", "two"], "--shots takes whole numbers"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--test-fraction", "1.5"], "--test-fraction must be between 0 and 1"),
        (["--baseline", "missing.yml"], "baseline config 'missing.yml' does not exist"),
        (["--test-file", "missing.yml"], "test file 'missing.yml' does not exist"),
        (["--epochs", "0"], "epochs must be a whole number from 1 to 50, not 0"),
        (["--epochs", "-1"], "epochs must be a whole number from 1 to 50, not -1"),
        (["--epochs", "51"], "epochs must be a whole number from 1 to 50, not 51"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    project = _tiny_project(tmp_path / "bot")
    code = cli.main(["evaluate", "--project", str(project), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_a_project_with_one_intent_is_refused_with_one_line_before_any_training(tmp_path, capsys):
    project = tmp_path / "bot"
    (project / "data").mkdir(parents=True)
    examples = "".join(f"    - hello number {i}\n" for i in range(20))
    (project / "data" / "nlu.yml").write_text(f"version: '3.1'\nnlu:\n- intent: greet\n  examples: |\n{examples}")
    (project / "domain.yml").write_text("version: '3.1'\nintents:\n- greet\n")
    (project / "config.yml").write_text(Path(__file__).with_name("baseline_fast.yml").read_text())
    code = cli.main(["evaluate", "--project", str(project), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        "error: evaluate compares intent classifiers, which needs at least two intents in the training data; "
        f"{project} has 1 (greet)"
    )
    assert not (tmp_path / "out").exists()


def test_missing_project_is_a_one_line_error(tmp_path, capsys):
    code = cli.main(["evaluate", "--project", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "does not exist" in err[0]


def test_remote_api_without_yes_and_without_a_terminal_is_refused_before_spending(tmp_path, capsys, monkeypatch):
    project = _tiny_project(tmp_path / "bot")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    # nothing listens here: a request would fail loudly instead of being refused up front
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("RASA_GPT3_LOCAL", raising=False)
    code = cli.main(
        ["evaluate", "--project", str(project), "--out", str(tmp_path / "out"), "--shots", "2", "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: evaluate would spend about $") and "pass --yes" in err[0]
    assert "sk-test" not in err[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_billed_tokens_come_from_the_apis_usage_and_a_cache_hit_costs_nothing():
    from dataclasses import replace

    from rasa_gpt3.inference import IntentModel, parse_completion_body, rank_intents

    body = {
        "choices": [
            {
                "message": {"content": "greet"},
                "logprobs": {"content": [{"token": "greet", "logprob": -0.1, "top_logprobs": []}]},
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 1, "total_tokens": 32},
    }
    completion = parse_completion_body(body, chat=True)
    assert (completion.prompt_tokens, completion.completion_tokens) == (31, 1)
    model = IntentModel(model="ft:x", fmt="chat", labels={"greet": "greet", "bye": "bye"})
    assert (rank_intents(completion, model).prompt_tokens, rank_intents(completion, model).completion_tokens) == (31, 1)
    assert rank_intents(replace(completion, cached=True), model).prompt_tokens == 0
    assert parse_completion_body({**body, "usage": None}, chat=True).prompt_tokens == 0


def test_a_test_file_is_the_test_set_and_all_nlu_data_trains(tmp_path):
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.evaluation.runner import training_and_test_data

    project_dir = _tiny_project(tmp_path / "bot")
    test_file = tmp_path / "test_nlu.yml"
    test_file.write_text(
        "version: '3.1'\nnlu:\n- intent: greet\n  examples: |\n    - hello there\n    - greet sentence 0\n"
        "- intent: goodbye\n  examples: |\n    - see you\n"
    )
    options = EvaluationOptions(project=project_dir, out=tmp_path / "out", test_file=test_file)
    train_pool, test_examples, source = training_and_test_data(load_project(project_dir), options)
    assert len(text_examples(train_pool)) == 15
    assert sorted(m.get("text") for m in test_examples) == ["greet sentence 0", "hello there", "see you"]
    assert source == f"--test-file {test_file}"
    split_options = EvaluationOptions(project=project_dir, out=tmp_path / "out", test_fraction=0.4, seed=1)
    _, split_test, split_source = training_and_test_data(load_project(project_dir), split_options)
    assert len(split_test) == 6 and split_source.startswith("stratified split: 0.4")


# ---------------------------------------------------------------- threshold recommendation


def test_threshold_counts_out_of_scope_messages_predicted_as_the_out_of_scope_intent_as_rejected():
    predictions = [
        Prediction("a", "greet", "greet", 0.9, 1.0, False),
        Prediction("b", "greet", "greet", 0.8, 1.0, False),
        Prediction("c", "bye", "greet", 0.4, 1.0, True),
        # caught by its own intent at any threshold; only the confident wrong guess needs the threshold
        Prediction("d", "oos", "oos", 0.95, 1.0, False),
        Prediction("e", "oos", "greet", 0.3, 1.0, True),
    ]
    recommendation = recommend_from_predictions(predictions, "oos")
    assert 0.3 < recommendation.threshold <= 0.8
    assert recommendation.out_of_scope_recall == 1.0 and recommendation.in_scope_accuracy == pytest.approx(2 / 3)
    without_oos = recommend_from_predictions(predictions[:3], None)
    assert without_oos.out_of_scope_recall is None and without_oos.threshold == 0.8
    assert recommend_from_predictions(predictions[3:], "oos") is None
    record = recommendation_record(recommendation, FINE_TUNED)
    assert record["system"] == FINE_TUNED and record["description"] == recommendation.describe()


@pytest.mark.slow
def test_a_small_run_prints_and_stores_the_recommended_threshold(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("RASA_GPT3_LOCAL", "1")
    monkeypatch.delenv("RASA_GPT3_STATE_DIR", raising=False)
    project = _tiny_project(tmp_path / "bot", per_intent=8)
    out = tmp_path / "out"
    baseline = Path(__file__).with_name("baseline_fast.yml")
    args = ["--project", str(project), "--baseline", str(baseline), "--shots", "all", "--out", str(out)]
    code = cli.main(["evaluate", *args, "--test-fraction", "0.25", "--no-progress"])
    printed, errors = capsys.readouterr()
    assert code == 0, errors
    results = json.loads((out / "results.json").read_text())
    recommended = results["recommended_threshold"]
    assert recommended["system"] == FINE_TUNED and 0.0 <= recommended["threshold"] <= 1.0
    # the test split holds out_of_scope messages, so the rule weighs them
    assert recommended["out_of_scope_recall"] is not None and "out-of-scope recall" in recommended["description"]
    # recomputed from the fine-tuned side's predictions in predictions.jsonl
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    tuned = [
        Prediction(**{k: v for k, v in row.items() if k not in ("shots", "repeat", "system")})
        for row in rows
        if row["system"] == FINE_TUNED
    ]
    assert recommended["threshold"] == recommend_from_predictions(tuned, "out_of_scope").threshold
    line = f"{FINE_TUNED} side: {recommended['description']}"
    assert line in printed
    assert line + "." in (out / "summary.md").read_text()
