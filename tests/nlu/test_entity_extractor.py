"""GPT3EntityExtractor inside a real Rasa Agent: located spans, EntitySynonymMapper, from_entity slots."""

import logging

import pytest

pytestmark = pytest.mark.slow


def gpt3_entities(result):
    return [e for e in result["entities"] if e["extractor"] == "GPT3EntityExtractor"]


def test_entities_are_located_in_the_text_and_mapped_by_synonyms(agent, no_faults):
    text = "tell me my credit card balance"
    result = agent.parse(text)
    (entity,) = gpt3_entities(result)
    assert entity["entity"] == "account_type"
    assert text[entity["start"] : entity["end"]] == "credit card"
    assert entity["value"] == "credit"  # EntitySynonymMapper ran on the span
    assert entity["processors"] == ["EntitySynonymMapper"]
    assert 0 < entity["confidence_entity"] <= 1
    assert result["gpt3_entities"]["asked"] and result["gpt3_entities"]["outcome"] == "ok"


def test_several_entities_keep_their_own_spans(agent, no_faults):
    text = "send 50 dollars to John"
    entities = {e["entity"]: e for e in gpt3_entities(agent.parse(text))}
    assert set(entities) == {"amount", "PERSON"}
    for entity in entities.values():
        assert text[entity["start"] : entity["end"]] == entity["value"]


def test_every_entity_is_a_span_of_the_message_with_a_known_type(agent, no_faults):
    # dropping values that are not in the text is unit-tested in test_inference.py; here: nothing else gets through
    for text in ["send 50 dollars to Rebecca", "pay 20 euros to my landlord", "wire money to Lisa please"]:
        result = agent.parse(text)
        entities = gpt3_entities(result)
        assert entities, f"no entity found in {text!r}"
        for entity in entities:
            assert entity["entity"] in {"account_type", "amount", "PERSON"}
            assert text[entity["start"] : entity["end"]] == entity["value"]
        assert result["gpt3_entities"]["asked"] and result["gpt3_entities"]["outcome"] == "ok"


def test_extracted_entities_fill_from_entity_slots(agent, no_faults):
    replies = agent.say("tell me my credit card balance", sender="slots")
    assert agent.slot("account_type", sender="slots") == "credit"
    assert replies[0]["text"] == "Your credit balance is 100 dollars."


def test_an_answer_that_is_not_json_gives_no_entities_and_one_warning(agent, backend, no_faults, caplog):
    backend.set_faults("garbage,path=/v1/chat")
    with caplog.at_level(logging.WARNING, logger="rasa_gpt3"):
        result = agent.parse("show me the balance of my checking account")
    assert gpt3_entities(result) == []
    assert result["gpt3_entities"]["outcome"] == "invalid_json"
    warnings = [r for r in caplog.records if r.name.startswith("rasa_gpt3") and "entities" in r.getMessage()]
    assert len(warnings) == 1 and "checking" not in warnings[0].getMessage()
