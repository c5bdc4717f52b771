"""A message over `max_message_chars` is never sent: the fallback intent with outcome `too_long`, no request to the
backend, and no failure for the circuit breaker, so one user's pasted megabyte cannot take the bot down for others."""

from __future__ import annotations

import asyncio

import pytest

from rasa_gpt3.demo import free_port, http_json, rasa_run_command, start_server, wait_ready
from rasa_gpt3.inference.calls import DEFAULT_MAX_MESSAGE_CHARS
from rasa_gpt3.inference.entities import extract_entities, extract_entities_async
from rasa_gpt3.inference.intents import classify, classify_async

from .pipeline_checks import CONFIGS

pytestmark = pytest.mark.slow

# over the default limit, yet cheap enough that sending it by mistake would only make the test fail
OVER_THE_LIMIT = "what is my checking balance " * (DEFAULT_MAX_MESSAGE_CHARS // 28 + 1)
ONE_MEGABYTE = "what is my checking balance " * (1024 * 1024 // 28)


def test_oversized_messages_never_reach_the_backend_nor_open_the_breaker(
    local_caller, intent_model, entity_model, backend, no_faults
):
    caller = local_caller(timeout=2.0, breaker_failures=2)
    before = backend.completions_requests()

    async def asked_asynchronously(text):
        return await classify_async(text, intent_model, caller), await extract_entities_async(
            text, entity_model, caller
        )

    for number in range(5):  # more than breaker_failures, each a fresh text (no cache hit could hide a request)
        text = f"{OVER_THE_LIMIT}{number}"
        for prediction, extraction in [
            (classify(text, intent_model, caller), extract_entities(text, entity_model, caller)),
            asyncio.run(asked_asynchronously(text)),
        ]:
            assert (prediction.intent, prediction.confidence, prediction.ranking) == ("nlu_fallback", 0.0, [])
            assert prediction.outcome == "too_long" and not prediction.outcome.answered
            assert "over max_message_chars (4,096); not sent" in prediction.error and "balance" not in prediction.error
            assert extraction.entities == [] and extraction.outcome == "too_long"

    assert backend.completions_requests() == before and caller.calls_sent == 0
    assert caller.breaker.state == "closed"
    assert classify("see you later", intent_model, caller).intent == "goodbye"
    # exactly at the limit the message is sent
    at_the_limit = ("see you later " * DEFAULT_MAX_MESSAGE_CHARS)[:DEFAULT_MAX_MESSAGE_CHARS]
    assert classify(at_the_limit, intent_model, caller).outcome == "ok"


def test_the_components_give_the_fallback_intent_and_send_nothing(agent, backend, no_faults):
    before = backend.completions_requests()
    result = agent.parse(OVER_THE_LIMIT)
    assert backend.completions_requests() == before
    # FallbackClassifier then predicts nlu_fallback at its threshold, as for any message the model did not decide
    assert result["intent"]["name"] == "nlu_fallback" and result["gpt3"]["asked"]
    assert result["gpt3"]["outcome"] == "too_long" and not result["gpt3"]["decided"]
    assert result["gpt3_entities"]["outcome"] == "too_long" and result["entities"] == []
    assert agent.parse("see you later")["intent"]["name"] == "goodbye"


@pytest.fixture(scope="module")
def rasa_server(tiny_bot, tmp_path_factory):
    """`rasa run --enable-api` of a GPT-only pipeline with the default circuit breaker (3 failures, 30 s), serving
    from the embedded local backend inside the Rasa process, as a bot without an API key does."""
    work = tmp_path_factory.mktemp("long-messages")
    config = work / "gpt3_default_breaker.yml"
    text = (CONFIGS / "gpt3_intent_entities.yml").read_text(encoding="utf-8")
    config.write_text(text.replace("    breaker_cooldown: 1.0\n", ""), encoding="utf-8")
    assert "breaker_cooldown" not in config.read_text(encoding="utf-8")
    model = tiny_bot.train(config, nlu_only=False)
    credentials = work / "credentials.yml"
    credentials.write_text("rest:\n", encoding="utf-8")
    port = free_port()
    server = start_server(
        "rasa run",
        rasa_run_command(port, model, credentials=credentials),
        tiny_bot.project,
        work / "rasa.log",
        f"http://127.0.0.1:{port}",
        tiny_bot.env,
    )
    try:
        wait_ready(server, "/status")
        yield server
    finally:
        server.stop()


def test_one_megabyte_messages_through_rasa_leave_the_next_user_a_real_intent(rasa_server):
    url = rasa_server.url
    # a real conversation: each megabyte is answered (by the nlu_fallback rule), none is sent to the model; four of
    # them would open the default breaker (3 failures) for 30 s if they counted as failures of the API
    for number in range(4):
        answers = http_json("POST", f"{url}/webhooks/rest/webhook", {"sender": "flooder", "message": ONE_MEGABYTE})
        assert [answer.get("text") for answer in answers] == ["Sorry, I didn't get that."], number
    flooded = [e for e in http_json("GET", f"{url}/conversations/flooder/tracker")["events"] if e["event"] == "user"]
    assert len(flooded) == 4 and all(len(event["text"]) >= 1024 * 1024 - 28 for event in flooded)
    for event in flooded:
        assert event["parse_data"]["intent"]["name"] == "nlu_fallback"
        assert event["parse_data"]["gpt3"]["outcome"] == "too_long"

    # the next user gets the model's own intent at once: the breaker is closed
    parsed = http_json("POST", f"{url}/model/parse", {"text": "see you later"})
    assert parsed["intent"]["name"] == "goodbye" and parsed["intent"]["confidence"] > 0
    assert parsed["gpt3"]["outcome"] == "ok" and parsed["gpt3"]["decided"]
    answers = http_json("POST", f"{url}/webhooks/rest/webhook", {"sender": "next-user", "message": "hello"})
    assert [answer.get("text") for answer in answers] == ["Hello! How can I help?"]
