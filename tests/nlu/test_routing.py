"""Routing mode: with a confident earlier classifier the fine-tuned model is not asked at all."""

import pytest

from .pipeline_checks import CONFIGS, AgentRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing_agent(tiny_bot):
    runner = AgentRunner(tiny_bot.train(CONFIGS / "gpt3_routing.yml"))
    yield runner
    runner.close()


def test_confident_earlier_predictions_send_no_request_and_stay_as_they_are(routing_agent, backend, no_faults):
    # KeywordIntentClassifier is certain (confidence 1.0) when a training example occurs in the message
    before = backend.completions_requests()
    for text, intent in [
        ("hello", "greet"),
        ("oh, see you later then", "goodbye"),
        ("check my balance", "check_balance"),
    ]:
        result = routing_agent.parse(text)
        assert result["intent"] == {"name": intent, "confidence": 1.0}
        assert result["gpt3"]["asked"] is False and result["gpt3"]["reason"] == "confident_earlier_classifier"
        assert result["gpt3"]["previous_intent"] == {"name": intent, "confidence": 1.0}
    assert backend.completions_requests() == before


def test_uncertain_messages_are_asked_once_each(routing_agent, backend, no_faults):
    texts = ["could you wire some cash to my brother Paul", "at what time do you shut the doors", "farewell my friend"]
    before = backend.completions_requests()
    results = [routing_agent.parse(text) for text in texts]
    assert backend.completions_requests() - before == len(texts)
    assert all(r["gpt3"]["asked"] and r["gpt3"]["decided"] and "previous_intent" not in r["gpt3"] for r in results)
    assert results[1]["intent"]["name"] == "faq" and results[1]["gpt3"]["full_intent"] == "faq/ask_hours"
