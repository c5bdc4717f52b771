"""The fallback action's pure parts: configuration, when to re-classify, history, guardrails, re-injected parse data."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.actions.fallback import (
    Refused,
    conversation_turns,
    domain_intents,
    guard_answer,
    merge_entities,
    reinjected_parse_data,
    response_body,
    should_reclassify,
)
from rasa_gpt3.actions.fallback_config import ENV_CONFIG, FallbackConfig, FallbackConfigError, load_fallback_config

# ---------------------------------------------------------------- configuration


def test_config_defaults_when_the_file_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    assert load_fallback_config(tmp_path) == FallbackConfig()


def test_config_file_values_are_read_and_typed(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    (tmp_path / "gpt3_fallback.yml").write_text(
        "reclassify_threshold: 0.8\nmax_tokens: 40\nstop: \"\\n\\n\"\nforbidden_patterns: ['(?i)password']\n"
        "timeout: 3\nanswer_slot: null\n",
        encoding="utf-8",
    )
    config = load_fallback_config(tmp_path)
    assert config.reclassify_threshold == 0.8
    assert config.max_tokens == 40
    assert config.stop == ("\n\n",)
    assert config.timeout == 3.0 and isinstance(config.timeout, float)
    assert config.answer_slot is None
    assert config.forbidden[0].search("my PASSWORD is")


@pytest.mark.parametrize(
    "text, message",
    [
        ("reclasify: true\n", "unknown setting 'reclasify'"),
        ("reclassify: yes please\n", "reclassify must be true or false"),
        ("reclassify_threshold: 1.5\n", "reclassify_threshold must be between 0 and 1"),
        ("max_tokens: 2.5\n", "max_tokens must be a whole number"),
        ("timeout: 0\n", "timeout must be a positive number"),
        ("max_message_chars: 0\n", "max_message_chars must be at least 1"),
        ("max_message_chars: 2.5\n", "max_message_chars must be a whole number"),
        ("forbidden_patterns: ['(unclosed']\n", "is not a regular expression"),
        ("format: jsonl\n", "format must be chat or completion"),
        ("- a list\n", "expected a mapping"),
        ("key: [unclosed\n", "cannot read it"),
    ],
)
def test_bad_config_is_one_line_naming_the_file(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    (tmp_path / "gpt3_fallback.yml").write_text(text, encoding="utf-8")
    with pytest.raises(FallbackConfigError) as error:
        load_fallback_config(tmp_path)
    assert message in str(error.value)
    assert "gpt3_fallback.yml" in str(error.value)
    assert "\n" not in str(error.value)


def test_config_path_from_the_environment_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "nope.yml"))
    with pytest.raises(FallbackConfigError, match="file not found"):
        load_fallback_config(tmp_path)


# ---------------------------------------------------------------- when to ask the intent model


@pytest.mark.parametrize(
    "record, expected",
    [
        (None, True),  # no GPT3IntentClassifier in the pipeline
        ({"asked": False, "reason": "confident_earlier_classifier"}, True),  # routing mode skipped it
        ({"asked": True, "decided": True, "outcome": "ok"}, False),  # it answered, below FallbackClassifier
        ({"asked": True, "decided": False, "outcome": "unknown_label"}, False),
        ({"asked": True, "decided": True, "outcome": "no_logprobs"}, False),
        ({"asked": True, "decided": False, "outcome": "timeout"}, True),  # its call failed: one more bounded try
        ({"asked": True, "decided": False, "outcome": "circuit_open"}, True),
        ({"asked": True, "decided": False, "outcome": "connection"}, True),
        ({"asked": True, "decided": False, "outcome": "an outcome of a later version"}, True),
    ],
)
def test_should_reclassify(record, expected):
    parse_data = {"text": "hi", "intent": {"name": "nlu_fallback", "confidence": 0.3}}
    if record is not None:
        parse_data["gpt3"] = record
    assert should_reclassify(parse_data) is expected


# ---------------------------------------------------------------- generation request


def test_history_is_the_last_turns_with_text_latest_user_message_last():
    events = [
        {"event": "action", "name": "action_listen"},
        {"event": "user", "text": "hello"},
        {"event": "bot", "text": "Hi! How can I help?"},
        {"event": "slot", "name": "x", "value": 1},
        {"event": "bot", "text": None, "data": {"image": "x.png"}},
        {"event": "user", "text": "what is my balance"},
        {"event": "bot", "text": "Your checking account balance is 2,480.15 EUR."},
        {"event": "user", "text": "can I  buy   bitcoin?"},
    ]
    turns = conversation_turns(events, 3)
    assert turns == [
        prompts.Turn("user", "what is my balance"),
        prompts.Turn("bot", "Your checking account balance is 2,480.15 EUR."),
        prompts.Turn("user", "can I  buy   bitcoin?"),
    ]
    assert conversation_turns(events, 10)[0] == prompts.Turn("user", "hello")


def test_history_leaves_out_turns_over_the_length_limit():
    pasted = "x" * 5000
    events = [
        {"event": "user", "text": "hello"},
        {"event": "bot", "text": "Hi! How can I help?"},
        {"event": "user", "text": pasted},
        {"event": "bot", "text": "Sorry, I didn't get that."},
        {"event": "user", "text": "can I buy bitcoin?"},
    ]
    assert conversation_turns(events, 3, max_chars=4096) == [
        prompts.Turn("bot", "Hi! How can I help?"),
        prompts.Turn("bot", "Sorry, I didn't get that."),
        prompts.Turn("user", "can I buy bitcoin?"),
    ]
    assert conversation_turns(events, 3, max_chars=5000)[0] == prompts.Turn("user", pasted)
    assert FallbackConfig().max_message_chars == 4096


@pytest.mark.parametrize("fmt", prompts.FORMATS)
def test_response_body_is_the_export_prompt_with_the_guardrails(fmt):
    turns = [prompts.Turn("user", "hello"), prompts.Turn("bot", "Hi!"), prompts.Turn("user", "bitcoin?")]
    config = FallbackConfig(max_tokens=42, stop=("\nUser:",))
    body = response_body(turns, fmt, config)
    # the request part is exactly what the response records were trained on
    record = prompts.response_record(turns, "ANSWER", fmt)
    request_key = "messages" if fmt == "chat" else "prompt"
    expected = record["messages"][:-1] if fmt == "chat" else record["prompt"]
    assert body[request_key] == expected
    assert body["max_tokens"] == 42 and body["temperature"] == 0.0
    assert body["stop"] == (([prompts.STOP] if fmt == "completion" else []) + ["\nUser:"])


# ---------------------------------------------------------------- guardrails


def test_answer_slot_templates_are_filled_from_the_tracker():
    answer = guard_answer(
        "Your {account_type} account balance is 2,480.15 EUR.", "chat", {"account_type": "savings"}, FallbackConfig()
    )
    assert answer == "Your savings account balance is 2,480.15 EUR."


def test_completion_answers_are_cleaned():
    assert guard_answer(" Hello there! END trailing", "completion", {}, FallbackConfig()) == "Hello there!"


@pytest.mark.parametrize(
    "raw, slots, config, why",
    [
        ("Send {amount} EUR to {recipient}?", {"amount": "50", "recipient": None}, FallbackConfig(), "recipient"),
        ("Your {pin} is safe", {}, FallbackConfig(), "pin"),
        ("   ", {}, FallbackConfig(), "empty"),
        ("Your password is hunter2", {}, FallbackConfig(forbidden_patterns=("(?i)password",)), "forbidden"),
        ("Hello {name}", {"name": "Mr Password"}, FallbackConfig(forbidden_patterns=("(?i)password",)), "forbidden"),
    ],
)
def test_answers_the_guardrails_refuse(raw, slots, config, why):
    with pytest.raises(Refused, match=why):
        guard_answer(raw, "chat", slots, config)


# ---------------------------------------------------------------- re-injection


def test_domain_intents_accepts_names_and_mappings():
    assert domain_intents({"intents": ["greet", {"faq": {"use_entities": []}}]}) == ["greet", "faq"]


def test_model_entities_are_added_without_overlap_and_mapped_through_synonyms():
    nlu = [{"entity": "amount", "start": 5, "end": 8, "value": "200", "extractor": "DIETClassifier"}]
    model = [
        {"entity": "amount", "start": 5, "end": 8, "value": "200"},  # overlaps NLU's: dropped
        {"entity": "card_type", "start": 20, "end": 24, "value": "Visa"},
    ]
    merged = merge_entities(nlu, model, {"visa": "credit"})
    assert [(e["entity"], e["value"], e["extractor"]) for e in merged] == [
        ("amount", "200", "DIETClassifier"),
        ("card_type", "credit", "action_gpt3_fallback"),
    ]


def test_reinjected_parse_data_carries_the_new_intent_and_the_record():
    latest = {
        "text": "my wallet got nicked",
        "intent": {"name": "nlu_fallback", "confidence": 0.5},
        "intent_ranking": [{"name": "nlu_fallback", "confidence": 0.5}],
        "entities": [],
        "message_id": "abc",
    }
    prediction = SimpleNamespace(
        intent="block_card",
        confidence=0.86,
        full_intent="block_card",
        ranking=[{"name": "block_card", "confidence": 0.86}],
        model="ft:x",
        cached=False,
    )
    data = reinjected_parse_data(latest, prediction, [], {"responses": {}})
    assert data["intent"] == {"name": "block_card", "confidence": 0.86}
    assert data["intent_ranking"][0]["name"] == "block_card"
    assert data["message_id"] == "abc" and data["text"] == latest["text"]
    assert data["gpt3_fallback"]["reclassified"] is True
    assert data["gpt3_fallback"]["previous_intent"]["name"] == "nlu_fallback"


def test_reinjected_retrieval_intent_selects_its_response():
    responses = {"utter_faq/opening_hours": [{"text": "9 to 5"}]}
    prediction = SimpleNamespace(
        intent="faq",
        confidence=0.9,
        full_intent="faq/opening_hours",
        ranking=[{"name": "faq", "confidence": 0.9}],
        model="ft:x",
        cached=True,
    )
    latest = {
        "text": "when do you open",
        "intent": {"name": "nlu_fallback", "confidence": 0.4},
        "response_selector": {"faq": {"response": {"utter_action": "utter_faq/fees"}, "ranking": []}},
    }
    data = reinjected_parse_data(latest, prediction, [], {"responses": responses})
    assert data["intent"]["full_retrieval_intent_name"] == "faq/opening_hours"
    selected = data["response_selector"]["faq"]["response"]
    assert selected["utter_action"] == "utter_faq/opening_hours"
    assert selected["intent_response_key"] == "faq/opening_hours"
    # the original parse data is not modified
    assert latest["response_selector"]["faq"]["response"]["utter_action"] == "utter_faq/fees"
