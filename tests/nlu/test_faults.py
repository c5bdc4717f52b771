"""API failures degrade within the time budget: fallback intent at confidence 0, one log line, Rasa keeps serving."""

import asyncio
import logging
import socket
import time

import pytest

from rasa_gpt3.inference.intents import classify, classify_async

pytestmark = pytest.mark.slow

BUDGET = 2.0  # the components' default `timeout`
COOLDOWN = 1.0  # breaker_cooldown in tests/configs/gpt3_intent_entities.yml
# generous slack for a loaded CI machine; the faults below would take 30 s (hang) or never end without the budget
SLACK = 3.0
NORMAL = ("see you later", "goodbye")

FAULTS = {
    "timeout": ("hang=30,path=/v1/chat", "timeout"),
    "rate_limited": ("status=429", "rate_limited"),
    "server_error": ("status=500", "server_error"),
    "dropped_connection": ("drop,path=/v1/chat", "connection"),
    "garbage_completion": ("garbage,path=/v1/chat", "unknown_label"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_each_fault_gives_the_fallback_intent_within_the_budget_and_rasa_keeps_serving(
    agent, backend, no_faults, caplog, fault
):
    spec, outcome = FAULTS[fault]
    text = f"what is my checking balance ({fault})"  # a fresh text: no cache hit
    backend.set_faults(spec)
    with caplog.at_level(logging.WARNING, logger="rasa_gpt3"):
        started = time.monotonic()
        result = agent.parse(text)
        elapsed = time.monotonic() - started
    backend.set_faults(None)

    assert elapsed < BUDGET * 2 + SLACK  # intent and entities calls each have their own budget
    assert result["intent"]["name"] == "nlu_fallback"
    assert result["gpt3"]["outcome"] == outcome and not result["gpt3"]["decided"]
    intent_lines = [r.getMessage() for r in caplog.records if "intent model" in r.getMessage()]
    if outcome == "unknown_label":
        assert intent_lines == []  # the API worked; the answer was just no label
    else:
        assert len(intent_lines) == 1 and f"failed ({outcome})" in intent_lines[0]
    for line in (r.getMessage() for r in caplog.records):
        assert "checking" not in line and "sk-" not in line

    # the conversation goes on: a failing turn is answered with utter_default (the breaker may open meanwhile) ...
    backend.set_faults(spec)
    assert agent.say(f"hello ({fault})", sender=fault)[0]["text"] == "Sorry, I didn't get that."
    backend.set_faults(None)
    # ... and once the backend is back and the breaker's cool-down is over, turns are understood again
    time.sleep(COOLDOWN + 0.1)
    assert agent.parse(NORMAL[0])["intent"]["name"] == NORMAL[1]
    assert agent.say("goodbye", sender=fault)[0]["text"] == "Goodbye!"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_falls_back_at_once(full_model, monkeypatch):
    from rasa.shared.nlu.training_data.message import Message

    from rasa_gpt3.nlu.intent_classifier import GPT3IntentClassifier
    from rasa_gpt3.nlu.task_model import TaskModel

    from .pipeline_checks import archive_json

    # the component configured for a remote API that is down: nothing listens on that port
    monkeypatch.delenv("RASA_GPT3_LOCAL")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    (task_model,) = [m for m in archive_json(full_model, "gpt3_task_model.json") if m["task"] == "intent"]
    component = GPT3IntentClassifier({}, None, None, None, TaskModel.from_json(task_model))
    message = Message(data={"text": "hello"})
    started = time.monotonic()
    component.process([message])
    assert time.monotonic() - started < BUDGET + SLACK
    assert message.get("intent") == {"name": "nlu_fallback", "confidence": 0.0}
    assert message.get("intent_ranking") == [] and message.get("gpt3")["outcome"] == "connection"


def test_one_quick_retry_recovers_from_a_single_500(local_caller, intent_model, backend, no_faults):
    caller = local_caller(timeout=BUDGET)
    backend.set_faults("status=500,first=1")  # only the first attempt of each request fails
    before = backend.completions_requests()
    prediction = classify("hi there friend", intent_model, caller)
    assert prediction.intent == "greet" and prediction.outcome == "ok"
    assert backend.completions_requests() - before == 2


def test_the_breaker_skips_the_api_after_repeated_failures_then_tries_again(
    local_caller, intent_model, backend, no_faults
):
    caller = local_caller(timeout=BUDGET, retry=False, breaker_failures=2, breaker_cooldown=0.5)
    backend.set_faults("status=500")
    outcomes = [classify(f"hello {i}", intent_model, caller).outcome for i in range(2)]
    before = backend.completions_requests()
    skipped = classify("hello 3", intent_model, caller)
    assert outcomes == ["server_error", "server_error"]
    assert skipped.outcome == "circuit_open" and skipped.intent == "nlu_fallback"
    assert backend.completions_requests() == before  # nothing reached the backend while open
    backend.set_faults(None)
    time.sleep(0.6)
    assert classify("hello 4", intent_model, caller).outcome == "ok"  # the trial call closes it
    assert caller.breaker.state == "closed"


def test_the_async_api_keeps_the_budget_too(local_caller, intent_model, backend, no_faults):
    caller = local_caller(timeout=0.5)

    async def run():
        backend.set_faults("hang=30,path=/v1/chat")
        started = time.monotonic()
        failed = await classify_async("hello async", intent_model, caller)
        elapsed = time.monotonic() - started
        backend.set_faults(None)
        ok = await classify_async("see you tomorrow", intent_model, caller)
        return failed, elapsed, ok

    failed, elapsed, ok = asyncio.run(run())
    assert failed.outcome == "timeout" and failed.confidence == 0.0 and elapsed < 0.5 + SLACK
    assert ok.intent == "goodbye"
