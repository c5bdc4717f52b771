"""GPT3IntentClassifier inside a real Rasa Agent (trained by `rasa train` on the local backend)."""

import json

import pytest

from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier

from .pipeline_checks import CONFIGS, run_rasa

pytestmark = pytest.mark.slow

KNOWN = {
    "hello there": "greet",
    "see you later": "goodbye",
    "what is my savings balance": "check_balance",
    "transfer 100 euros to Mary": "transfer_money",
}


def test_known_messages_get_their_intent_with_a_logprob_confidence(agent, no_faults):
    for text, intent in KNOWN.items():
        result = agent.parse(text)
        assert result["intent"]["name"] == intent, text
        ranking = result["intent_ranking"]
        assert ranking[0]["name"] == intent and 0 < ranking[0]["confidence"] <= 1
        assert [r["confidence"] for r in ranking] == sorted((r["confidence"] for r in ranking), reverse=True)
        assert sum(r["confidence"] for r in ranking) == pytest.approx(1.0, abs=1e-6)
        assert len(ranking) <= 10
        assert result["gpt3"]["asked"] and result["gpt3"]["decided"] and result["gpt3"]["outcome"] == "ok"
        assert result["gpt3"]["model"].startswith("ft:")


def test_retrieval_intents_carry_the_base_intent_and_keep_the_full_one(agent, no_faults):
    result = agent.parse("what are your opening hours")
    assert result["intent"]["name"] == "faq"
    assert result["intent"]["full_retrieval_intent_name"] == "faq/ask_hours"
    assert result["gpt3"]["full_intent"] == "faq/ask_hours"
    assert all("/" not in item["name"] for item in result["intent_ranking"])
    assert [item["name"] for item in result["gpt3"]["full_ranking"]][0] == "faq/ask_hours"


def test_low_confidence_becomes_nlu_fallback_through_fallback_classifier(agent, no_faults):
    threshold = 0.5  # tests/configs/gpt3_intent_entities.yml
    outcomes = []
    for text in ["purple elephants dance on the moon", "zxcv qwerty asdf", "is it going to rain", "hello there"]:
        result = agent.parse(text)
        gpt_confidence = result["gpt3"]["full_ranking"][0]["confidence"] if "full_ranking" in result["gpt3"] else None
        fell_back = result["intent"]["name"] == "nlu_fallback"
        outcomes.append(fell_back)
        if gpt_confidence is not None and gpt_confidence < threshold:
            assert fell_back, (text, gpt_confidence)
        # FallbackClassifier keeps the model's ranking behind its own entry
        assert result["intent_ranking"]
    assert any(outcomes) and not outcomes[-1]


def test_identical_messages_are_answered_from_the_cache(agent, backend, no_faults):
    first = agent.parse("good morning to you")
    before = backend.completions_requests()
    second = agent.parse("good  morning to you")  # the same request once whitespace is normalised
    assert backend.completions_requests() == before
    assert second["gpt3"]["cached"] and not first["gpt3"]["cached"]
    assert second["intent"] == first["intent"]


def test_intent_shortcuts_are_not_sent(agent, backend, no_faults):
    before = backend.completions_requests()
    result = agent.parse("/goodbye")
    assert result["intent"]["name"] == "goodbye"
    assert backend.completions_requests() == before


def test_fingerprint_addon_follows_the_registry_and_backend(tmp_path, monkeypatch):
    config = {"project": str(tmp_path)}
    before = GPT3IntentClassifier.fingerprint_addon(config)
    (tmp_path / "gpt3_models.yml").write_text(
        "version: 1\ntasks:\n  intent:\n    local:\n      active:\n        model: ft:gpt-4o-mini-2024-07-18:x:y:z\n"
        "        fingerprint: abc\n"
    )
    after = GPT3IntentClassifier.fingerprint_addon(config)
    assert after != before and json.loads(after)["registry_active"] == ["ft:gpt-4o-mini-2024-07-18:x:y:z", "abc"]
    monkeypatch.delenv("RASA_GPT3_LOCAL")
    assert json.loads(GPT3IntentClassifier.fingerprint_addon(config))["backend"] == "api.openai.com"


def test_bad_config_is_refused_with_one_line(tiny_bot, tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(
        (CONFIGS / "gpt3_routing.yml").read_text().replace("only_below_confidence: 0.7", "only_below_confidence: 7")
    )
    process = run_rasa(
        ["train", "nlu", "--config", str(config), "--nlu", "data", "--out", str(tmp_path)],
        tiny_bot.project,
        tiny_bot.env,
    )
    assert process.returncode != 0
    assert "only_below_confidence must be a number from 0 to 1" in process.stdout + process.stderr
    assert "Traceback" not in process.stdout + process.stderr


def test_without_a_model_for_the_data_rasa_train_says_what_to_run(tiny_bot, tmp_path):
    env = dict(tiny_bot.env)
    env.pop("RASA_GPT3_LOCAL")  # a remote API with a key: no fine-tuning unless allowed, and nothing registered
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    project = tmp_path / "bot"
    project.mkdir()
    (project / "nlu.yml").write_text((tiny_bot.project / "data" / "nlu.yml").read_text())
    process = run_rasa(
        ["train", "nlu", "--config", str(CONFIGS / "gpt3_intent.yml"), "--nlu", "nlu.yml", "--out", "models"],
        project,
        env,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 1
    assert "rasa-gpt3 fine-tune --task intent" in output and "no fine-tuned intent model on 127.0.0.1" in output
    assert "Traceback" not in output
    assert not (project / "models").exists() or not list((project / "models").glob("*.tar.gz"))
