"""example_bot in real conversations: Rasa and the action server as processes on 127.0.0.1, the REST channel, the
tracker over the HTTP API, models on the local backend (see conftest.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from rasa_gpt3.demo import FAILURE, GENERATED, GPT_RECLASSIFIED, GPT_ROUTING, describe_turn

pytestmark = pytest.mark.slow

# Paraphrases of block_card that DIET (few epochs, char n-grams) is unsure about (below the routing threshold 0.7)
# and the fine-tuned intent model is sure about. DIET's confidence can move a little with its training, so the
# tests take the first candidate DIET misses.
CANDIDATES: List[Tuple[str, str]] = [
    ("kill my debit card now", "debit"),
    ("my visa is gone, make sure nobody can use it", "credit"),
]
CARD_BLOCKED = "card is blocked"
OUT_OF_DOMAIN = "tell me a joke"
GREETING = "Hello! I'm the Acme Bank assistant."
DEFAULT = "Sorry, I didn't get that. Could you rephrase it?"


def _user_events(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [event for event in events if event.get("event") == "user"]


def _actions(events: List[Dict[str, Any]]) -> List[str]:
    return [event.get("name") for event in events if event.get("event") == "action"]


@pytest.fixture(scope="module")
def missed_by_diet(e2e_servers) -> Tuple[str, str]:
    """(message, card type) of the first candidate the DIET-only pipeline sends to nlu_fallback."""
    diet = e2e_servers["diet_only"]
    seen = []
    for text, card_type in CANDIDATES:
        parse = diet.parse(text)
        seen.append(f"{text!r}: {parse['intent']['name']} {parse['intent']['confidence']:.2f}")
        if parse["intent"]["name"] == "nlu_fallback":
            return text, card_type
    pytest.fail("DIET missed none of the candidate messages, so this test cannot show the fallback: " + "; ".join(seen))


def test_diet_only_pipeline_reclassifies_in_the_action_and_the_story_continues(e2e_servers, missed_by_diet, sender):
    diet = e2e_servers["diet_only"]
    text, card_type = missed_by_diet

    answers = diet.say(sender, text)

    # the block_card form ran and finished: the card type came from the message, the story went on
    assert len(answers) == 1 and CARD_BLOCKED in answers[0], answers
    assert answers[0].startswith(f"Your {card_type} card")
    events = diet.events(sender)
    users = _user_events(events)
    assert users[0]["parse_data"]["intent"]["name"] == "nlu_fallback"
    assert "gpt3" not in users[0]["parse_data"]  # no GPT component in this pipeline
    reinjected = users[-1]["parse_data"]
    assert reinjected["intent"]["name"] == "block_card"
    assert reinjected["intent"]["confidence"] >= 0.6
    assert reinjected["gpt3_fallback"]["reclassified"] is True
    actions = _actions(events)
    assert actions.index("action_gpt3_fallback") < actions.index("block_card_form")
    assert any(e.get("event") == "rewind" for e in events)
    tracker = diet.tracker(sender)
    assert tracker["slots"]["card_type"] == card_type
    assert tracker["latest_message"]["intent"]["name"] == "block_card"
    # the demo's transcript reads the same events the same way
    report = describe_turn(text, answers, events)
    assert report.decided_by == GPT_RECLASSIFIED and report.intent == "block_card"


def test_the_bot_pipeline_catches_the_same_message_in_nlu_by_routing_mode(e2e_servers, missed_by_diet, sender):
    bot = e2e_servers["bot"]
    text, card_type = missed_by_diet

    answers = bot.say(sender, text)

    assert len(answers) == 1 and answers[0].startswith(f"Your {card_type} card"), answers
    events = bot.events(sender)
    parse_data = _user_events(events)[0]["parse_data"]
    assert parse_data["intent"]["name"] == "block_card"
    assert parse_data["gpt3"]["asked"] is True and parse_data["gpt3"]["decided"] is True
    assert parse_data["gpt3"]["previous_intent"]["confidence"] < 0.7  # DIET was unsure
    assert "action_gpt3_fallback" not in _actions(events)
    assert describe_turn(text, answers, events).decided_by == GPT_ROUTING


def test_routing_mode_leaves_confident_diet_alone(e2e_servers, sender):
    bot = e2e_servers["bot"]

    answers = bot.say(sender, "hello")

    assert answers and answers[0].startswith(GREETING)
    parse_data = _user_events(bot.events(sender))[0]["parse_data"]
    assert parse_data["intent"]["name"] == "greet"
    assert parse_data["gpt3"] == {**parse_data["gpt3"], "asked": False, "reason": "confident_earlier_classifier"}


def test_an_out_of_domain_question_gets_a_generated_answer(e2e_servers, e2e_bot, sender):
    bot = e2e_servers["bot"]
    bot.say(sender, "hello")
    before = len(bot.events(sender))

    answers = bot.say(sender, OUT_OF_DOMAIN)

    assert len(answers) == 1 and answers[0] != DEFAULT, answers
    events = bot.events(sender)[before:]
    generated = [e for e in events if e.get("event") == "bot" and (e.get("metadata") or {}).get("rasa_gpt3")]
    assert generated[-1]["metadata"]["rasa_gpt3"]["source"] == "generated"
    assert generated[-1]["metadata"]["rasa_gpt3"]["model"] == e2e_bot.models["response"]
    assert generated[-1]["text"] == answers[0]
    assert bot.tracker(sender)["slots"]["gpt3_answer"] == answers[0]
    # NLU asked the intent model (DIET was unsure), which was not sure either: so no re-classification
    last_user = _user_events(events)[-1]["parse_data"]
    assert last_user["intent"]["name"] == "nlu_fallback" and last_user["gpt3"]["asked"] is True
    assert not any(e.get("event") == "rewind" for e in events)
    assert describe_turn(OUT_OF_DOMAIN, answers, events).decided_by == GENERATED


def test_a_failing_backend_gives_utter_default_and_the_next_turns_work(
    e2e_servers, e2e_backend, missed_by_diet, sender
):
    diet = e2e_servers["diet_only"]
    # a message DIET is unsure about and no other test sends through the action (no cached answer hides the failure)
    failing = "is it going to rain"
    assert diet.parse(failing)["intent"]["name"] == "nlu_fallback"
    e2e_backend.set_faults("status=500")
    try:
        answers = diet.say(sender, failing)
    finally:
        e2e_backend.set_faults(None)

    assert answers == [DEFAULT]
    events = diet.events(sender)
    failure = [e for e in events if e.get("event") == "bot"][-1]["metadata"]["rasa_gpt3"]
    assert failure["source"] == "failure" and failure["reason"] == "server_error"
    assert describe_turn(failing, answers, events).decided_by == FAILURE

    # the next turn works normally, and so does the GPT path now that the backend is back
    assert diet.say(sender, "hello")[0].startswith(GREETING)
    text, card_type = missed_by_diet
    answers = diet.say(sender, text)
    assert len(answers) == 1 and answers[0].startswith(f"Your {card_type} card"), answers


def test_rasa_test_core_passes_the_example_bots_test_stories(e2e_bot):
    result = e2e_bot.run(
        "test",
        "core",
        "--model",
        str(e2e_bot.archives["bot"]),
        "--stories",
        "tests/test_stories.yml",
        "--out",
        "results",
        "--fail-on-prediction-errors",
        log="test_core.log",
    )
    report = (e2e_bot.project / "results" / "failed_test_stories.yml").read_text(encoding="utf-8")
    assert result.returncode == 0, (e2e_bot.project / "test_core.log").read_text(encoding="utf-8")[-3000:]
    assert "None of the test stories failed" in report
