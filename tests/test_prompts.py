"""The record/request format: training records and inference requests must agree exactly."""

import pytest

from rasa_gpt3 import prompts


@pytest.mark.parametrize("fmt", prompts.FORMATS)
def test_intent_record_is_the_request_plus_the_answer(fmt):
    record = prompts.intent_record("  I lost   my card ", "lost", fmt)
    request = prompts.intent_request("I lost my card", fmt)
    if fmt == "chat":
        assert record["messages"][:-1] == request["messages"]
    else:
        assert record["prompt"] == request["prompt"]
        assert record["completion"].startswith(" ") and record["completion"].endswith(prompts.STOP)
    assert prompts.record_answer(record) == "lost"
    assert prompts.record_prompt_text(record) == "I lost my card"


@pytest.mark.parametrize("fmt", prompts.FORMATS)
def test_entity_answers_round_trip(fmt):
    entities = [
        {"entity": "account", "value": "credit card", "role": None, "group": None},
        {"entity": "city", "value": "Berlin", "role": "destination", "group": "1"},
    ]
    record = prompts.entities_record("fly to Berlin with my credit card", entities, fmt)
    assert prompts.parse_entities(prompts.record_answer(record)) == entities


@pytest.mark.parametrize("answer", ["not json", '{"entity": "x"}', '[{"value": "x"}]', "[1]"])
def test_parse_entities_rejects_what_is_not_an_entity_list(answer):
    with pytest.raises(ValueError):
        prompts.parse_entities(answer)


def test_response_request_renders_turns_in_order():
    history = [
        prompts.Turn("user", "hi"),
        prompts.Turn("bot", "Hello! How can I help?"),
        prompts.Turn("user", "balance"),
    ]
    chat = prompts.response_request(history, "chat")["messages"]
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    completion = prompts.response_request(history, "completion")["prompt"]
    assert completion == "User: hi\nBot: Hello! How can I help?\nUser: balance" + prompts.SEPARATOR


def test_clean_completion_cuts_at_the_stop_sequence():
    assert prompts.clean_completion(" greet END more") == "greet"
    assert prompts.clean_completion(None) == ""


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        prompts.intent_request("hi", "xml")
