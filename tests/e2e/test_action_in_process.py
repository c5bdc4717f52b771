"""ActionGPT3Fallback.run called directly (as rasa-sdk calls it) against the e2e backend over real HTTP: what it
returns for each path, its guardrails and its failures. Cheaper than a conversation: no Rasa server involved."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Dict, List, Optional

import pytest
import yaml
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from rasa_gpt3.actions import ActionGPT3Fallback
from rasa_gpt3.actions.fallback_config import ENV_CONFIG, ENV_PROJECT
from tests.actions.trackers import fallback_tracker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def domain(e2e_project) -> Dict[str, Any]:
    """example_bot's domain as rasa-sdk receives it."""
    from rasa.shared.core.domain import Domain

    return Domain.load(e2e_project.project / "domain.yml").as_dict()


@pytest.fixture
def action_env(e2e_project, monkeypatch):
    """The action server's environment: the e2e backend and the bot project; returns a config writer."""
    for key, value in e2e_project.env.items():
        if key.startswith(("OPENAI_", "RASA_GPT3_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv(ENV_PROJECT, str(e2e_project.project))
    monkeypatch.delenv(ENV_CONFIG, raising=False)

    def write_config(text: str, tmp_path) -> None:
        path = tmp_path / "gpt3_fallback.yml"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv(ENV_CONFIG, str(path))

    return write_config


def _tracker(text: str, **parse_extra: Any) -> Tracker:
    return fallback_tracker(
        text, sender="in-process", slots={"account_type": "checking", "card_type": None}, **parse_extra
    )


# one event loop for the module, as the action server has one: the SDK's async client belongs to a loop
_LOOP = asyncio.new_event_loop()


def _run(action: ActionGPT3Fallback, tracker: Tracker, domain: Dict[str, Any]):
    dispatcher = CollectingDispatcher()
    events = _LOOP.run_until_complete(action.run(dispatcher, tracker, domain))
    return dispatcher.messages, events


def _failure(messages: List[Dict[str, Any]]) -> Optional[str]:
    assert len(messages) == 1
    marker = messages[0].get("rasa_gpt3") or {}
    return marker.get("reason") if marker.get("source") == "failure" else None


def test_reclassification_reverts_and_reinjects_with_the_entities_models_entities(action_env, domain):
    messages, events = _run(ActionGPT3Fallback(), _tracker("kill my debit card now"), domain)

    assert messages == []
    assert [event["event"] for event in events] == ["rewind", "action", "user"]
    assert events[1]["name"] == "action_listen"
    parse_data = events[2]["parse_data"]
    assert events[2]["text"] == "kill my debit card now"
    assert parse_data["intent"]["name"] == "block_card" and parse_data["intent"]["confidence"] >= 0.6
    # the pipeline had no GPT3EntityExtractor, so the action asked the entities model
    assert [(e["entity"], e["value"], e["extractor"]) for e in parse_data["entities"]] == [
        ("card_type", "debit", "action_gpt3_fallback")
    ]


def test_when_nlu_already_asked_the_intent_model_the_action_generates(action_env, domain, e2e_project):
    asked = {"asked": True, "decided": True, "outcome": "ok", "model": e2e_project.models["intent"]}
    messages, events = _run(ActionGPT3Fallback(), _tracker("tell me a joke, please", gpt3=asked), domain)

    assert len(messages) == 1 and messages[0]["rasa_gpt3"]["source"] == "generated"
    assert messages[0]["rasa_gpt3"]["model"] == e2e_project.models["response"]
    assert events == [{"event": "slot", "timestamp": None, "name": "gpt3_answer", "value": messages[0]["text"]}]


def test_a_forbidden_answer_is_refused_and_utter_default_sent(action_env, domain, tmp_path):
    settings = {"reclassify": False, "history": 1}
    action_env(yaml.safe_dump(settings), tmp_path)
    messages, _ = _run(ActionGPT3Fallback(), _tracker("tell me a joke, please"), domain)
    answer = messages[0]["text"]
    assert messages[0]["rasa_gpt3"]["source"] == "generated"

    action_env(yaml.safe_dump({**settings, "forbidden_patterns": [re.escape(answer[:12])]}), tmp_path)
    messages, events = _run(ActionGPT3Fallback(), _tracker("tell me a joke, please"), domain)

    assert _failure(messages) == "refused"
    assert messages[0]["response"] == "utter_default" and events == []


def test_a_hanging_backend_costs_the_timeout_and_gives_utter_default(action_env, domain, tmp_path, e2e_backend):
    action_env("timeout: 0.5\n", tmp_path)
    action = ActionGPT3Fallback()
    action.loader.models()  # loaded before the clock starts, as on a running action server
    e2e_backend.set_faults("hang=20")
    try:
        started = time.monotonic()
        messages, _ = _run(action, _tracker("my card vanished at the train station"), domain)
        elapsed = time.monotonic() - started
    finally:
        e2e_backend.set_faults(None)

    assert _failure(messages) == "timeout"
    # the backend would answer after 20 s: the action answered long before, so the timeout cut both calls
    assert elapsed < 15


def _completion_requests(backend) -> int:
    import httpx

    stats = httpx.get(backend.root + "/_local/stats", timeout=5).json()
    return sum(count for route, count in stats.get("by_route", {}).items() if "completions" in route)


def test_a_message_over_the_length_limit_is_never_sent_and_the_next_one_works(action_env, domain, e2e_backend):
    action = ActionGPT3Fallback()
    action.loader.models()  # loaded (and warmed up) first, as on a running action server
    before = _completion_requests(e2e_backend)
    for number in range(4):  # more than breaker_failures: none of them may count as a failure of the API
        messages, events = _run(action, _tracker(f"my card vanished {number} " * 300), domain)
        assert _failure(messages) == "too_long" and messages[0]["response"] == "utter_default" and events == []
    assert _completion_requests(e2e_backend) == before

    messages, events = _run(action, _tracker("kill my debit card now"), domain)
    assert messages == [] and events[2]["parse_data"]["intent"]["name"] == "block_card"


def test_a_broken_config_never_breaks_the_action_server(action_env, domain, tmp_path):
    action_env("reclasify: true\n", tmp_path)
    action = ActionGPT3Fallback()
    assert "unknown setting 'reclasify'" in action.config_error
    messages, events = _run(action, _tracker("kill my debit card now"), domain)
    assert _failure(messages) == "config_error" and events == []


def test_without_any_model_the_user_still_gets_utter_default(action_env, domain, tmp_path, monkeypatch):
    empty = tmp_path / "bot_without_models"
    empty.mkdir()
    monkeypatch.setenv(ENV_PROJECT, str(empty))
    messages, events = _run(ActionGPT3Fallback(), _tracker("kill my debit card now"), domain)
    assert _failure(messages) == "no_model" and events == []


def test_a_failure_response_missing_from_the_domain_becomes_a_fixed_sentence(action_env, domain, tmp_path):
    action_env("failure_response: utter_not_in_the_domain\nreclassify: false\ngenerate: false\n", tmp_path)
    messages, _ = _run(ActionGPT3Fallback(), _tracker("anything"), domain)
    assert messages[0]["text"] == "Sorry, I can't answer that right now." and _failure(messages) == "no_model"
