"""The inference package's pure parts: logprobs → intent ranking, entity location, breaker, cache, response parsing."""

import math

import pytest

from rasa_gpt3 import inference, prompts
from rasa_gpt3.inference import (
    CallPolicy,
    CircuitBreaker,
    Completion,
    EntityModel,
    IntentModel,
    ResponseCache,
    locate_entities,
    rank_intents,
)

LABELS = {"greet": "greet", "goodbye": "bye", "faq/ask_hours": "hours", "faq/ask_fee": "fee"}


def model(fmt="chat", **kwargs):
    return IntentModel(model="ft:test", fmt=fmt, labels=LABELS, **kwargs)


def completion(text, alternatives, fmt="chat"):
    token = prompts.label_token
    alts = tuple((token(t, fmt) if t.strip() == t else t, math.log(p)) for t, p in alternatives)
    return Completion(text=token(text, fmt), first_token_alternatives=alts)


@pytest.mark.parametrize("fmt", prompts.FORMATS)
def test_ranking_is_renormalised_over_known_labels(fmt):
    result = rank_intents(completion("greet", [("greet", 0.5), ("bye", 0.25), ("zzz", 0.25)], fmt), model(fmt))
    assert result.intent == "greet"
    assert result.confidence == pytest.approx(2 / 3)
    assert [r["name"] for r in result.ranking] == ["greet", "goodbye"]
    assert sum(r["confidence"] for r in result.ranking) == pytest.approx(1.0)
    assert result.decided and result.outcome == "ok"


def test_retrieval_intents_are_summed_into_their_base_intent():
    result = rank_intents(completion("greet", [("greet", 0.4), ("hours", 0.35), ("fee", 0.25)]), model())
    # faq as a whole (0.6) beats greet (0.4): INTENT carries the base intent, as DIET would
    assert result.intent == "faq"
    assert result.confidence == pytest.approx(0.6)
    assert result.full_intent == "faq/ask_hours"
    assert result.ranking[0] == {"name": "faq", "confidence": pytest.approx(0.6)}
    assert [r["name"] for r in result.full_ranking] == ["greet", "faq/ask_hours", "faq/ask_fee"]
    assert result.metadata()["full_intent"] == "faq/ask_hours"
    assert "full_ranking" in result.metadata()


def test_the_intent_vocabulary_is_rasas():
    from rasa_gpt3 import intent_names

    assert (intent_names.base_intent("faq/ask_hours"), intent_names.base_intent("greet")) == ("faq", "greet")
    assert intent_names.is_retrieval_intent("faq/ask_hours") and not intent_names.is_retrieval_intent("greet")
    assert not intent_names.is_retrieval_intent(None)
    assert intent_names.is_shortcut("/greet") and not intent_names.is_shortcut("hi /greet")
    assert intent_names.FALLBACK_INTENT == "nlu_fallback" and model().fallback_intent == "nlu_fallback"


def test_the_recorded_outcome_is_a_plain_string():
    import json

    import yaml

    record = rank_intents(completion("greet", [("greet", 1.0)]), model()).metadata()
    assert type(record["outcome"]) is str and json.loads(json.dumps(record))["outcome"] == "ok"
    assert yaml.safe_load(yaml.safe_dump(record))["outcome"] == "ok"


def test_an_unknown_answer_becomes_the_fallback_intent_at_confidence_zero():
    result = rank_intents(
        completion("weather", [("weather", 0.9), ("greet", 0.1)]), model(fallback_intent="out_of_scope")
    )
    assert (result.intent, result.confidence, result.ranking) == ("out_of_scope", 0.0, [])
    assert result.outcome == "unknown_label" and not result.decided


def test_a_known_answer_without_logprobs_is_taken_at_face_value():
    result = rank_intents(Completion(text="bye"), model())
    assert (result.intent, result.confidence, result.outcome) == ("goodbye", 1.0, "no_logprobs")


def test_ranking_length_is_capped():
    labels = {f"intent_{i}": f"L{i}" for i in range(15)}
    alternatives = tuple((f"L{i}", math.log(1 / 15)) for i in range(15))
    result = rank_intents(Completion("L0", alternatives), IntentModel("m", "chat", labels, ranking_length=10))
    assert len(result.ranking) == 10


@pytest.mark.parametrize("fmt", prompts.FORMATS)
def test_intent_request_asks_for_one_token_and_its_logprobs(fmt):
    body = model(fmt).request_body("  hello   there ")
    assert body["temperature"] == 0 and body["max_tokens"] == 1
    if fmt == "chat":
        assert body["messages"] == prompts.intent_request("hello there", "chat")["messages"]
        assert body["logprobs"] is True and 1 <= body["top_logprobs"] <= 20
    else:
        assert body["prompt"] == prompts.intent_request("hello there", "completion")["prompt"]
        assert body["logprobs"] == 5


# ---------------------------------------------------------------- entities


def test_values_are_located_exactly_then_case_insensitively():
    text = "Send 50 dollars to John Smith from checking"
    answers = [
        {"entity": "amount", "value": "50 dollars", "role": None, "group": None},
        {"entity": "PERSON", "value": "john smith", "role": None, "group": None},
        {"entity": "account", "value": "Checking", "role": "source", "group": None},
    ]
    entities, dropped = locate_entities(text, answers, {"amount", "PERSON", "account"}, {"source"}, set())
    assert dropped == 0
    assert [(e["entity"], text[e["start"] : e["end"]], e["value"]) for e in entities] == [
        ("amount", "50 dollars", "50 dollars"),
        ("PERSON", "John Smith", "John Smith"),
        ("account", "checking", "checking"),
    ]
    assert entities[2]["role"] == "source"


def test_each_occurrence_is_used_once():
    text = "from Berlin to berlin"
    answers = [
        {"entity": "city", "value": "Berlin", "role": "from"},
        {"entity": "city", "value": "Berlin", "role": "to"},
    ]
    entities, _ = locate_entities(text, answers, {"city"}, {"from", "to"})
    assert [(e["start"], e["role"]) for e in entities] == [(5, "from"), (15, "to")]


def test_whole_words_are_preferred_and_whitespace_runs_match():
    text = "start the art  class"
    entities, _ = locate_entities(text, [{"entity": "topic", "value": "art class"}], {"topic"})
    assert (entities[0]["start"], entities[0]["value"]) == (10, "art  class")
    entities, _ = locate_entities("start the art", [{"entity": "topic", "value": "art"}], {"topic"})
    assert entities[0]["start"] == 10


def test_unknown_types_values_not_in_the_text_and_unknown_roles_are_dropped():
    answers = [
        {"entity": "city", "value": "Paris", "role": "nowhere"},
        {"entity": "city", "value": "Rome"},
        {"entity": "planet", "value": "Mars"},
    ]
    entities, dropped = locate_entities("Paris or Mars", answers, {"city"}, {"from"})
    assert dropped == 2
    assert entities == [{"entity": "city", "start": 0, "end": 5, "value": "Paris", "confidence_entity": 1.0}]


def test_entity_answer_confidence_comes_from_token_logprobs():
    entity_model = EntityModel("m", "chat", frozenset({"city"}))
    answer = prompts.render_entities([{"entity": "city", "value": "Paris"}])
    extraction = inference.read_entities(
        "to Paris", Completion(answer, token_logprobs=(math.log(0.9), math.log(0.5))), entity_model
    )
    assert extraction.entities[0]["confidence_entity"] == pytest.approx(0.45)


def test_invalid_entity_json_gives_no_entities():
    extraction = inference.read_entities(
        "to Paris", Completion("city: Paris"), EntityModel("m", "chat", frozenset({"city"}))
    )
    assert extraction.entities == [] and extraction.outcome == "invalid_json"


# ---------------------------------------------------------------- breaker and cache


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_repeated_failures_and_lets_one_trial_through_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=10, clock=clock)
    assert not breaker.record_failure() and not breaker.record_failure()
    assert breaker.allow()
    assert breaker.record_failure()  # the third opens it
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 10
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    assert breaker.record_failure()  # a failed trial re-opens at once
    assert not breaker.allow()
    clock.now = 20
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    assert not breaker.record_failure()
    assert breaker.state == "closed"


def test_cache_evicts_the_least_recently_used():
    cache = ResponseCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert ResponseCache(maxsize=0).get("a") is None


def test_cache_key_depends_on_model_and_whole_request():
    body = model().request_body("hi")
    assert inference.cache_key("m1", body) == inference.cache_key("m1", dict(reversed(list(body.items()))))
    assert inference.cache_key("m1", body) != inference.cache_key("m2", body)
    assert inference.cache_key("m1", body) != inference.cache_key("m1", model().request_body("hi!"))


def test_policy_from_component_config():
    policy = CallPolicy.from_config(
        {"timeout": 0.5, "breaker_failures": 2, "cache_size": 0, "extra_headers": {"X-A": 1}}
    )
    assert (policy.timeout, policy.breaker_failures, policy.cache_size) == (0.5, 2, 0)
    assert policy.extra_headers == (("X-A", "1"),)
    assert hash(policy)  # callers are shared per policy


# ---------------------------------------------------------------- response bodies


def test_chat_body_is_read_with_the_first_tokens_alternatives():
    body = {
        "choices": [
            {
                "message": {"content": "greet"},
                "logprobs": {
                    "content": [
                        {
                            "token": "greet",
                            "logprob": -0.1,
                            "top_logprobs": [{"token": "bye", "logprob": -2.5}, {"token": "greet", "logprob": -0.1}],
                        }
                    ]
                },
            }
        ]
    }
    parsed = inference.parse_completion_body(body, chat=True)
    assert parsed.text == "greet"
    assert parsed.first_token_alternatives == (("greet", -0.1), ("bye", -2.5))
    assert parsed.token_logprobs == (-0.1,)


def test_completion_body_is_read_with_the_first_tokens_alternatives():
    body = {
        "choices": [
            {
                "text": " greet",
                "logprobs": {
                    "tokens": [" greet"],
                    "token_logprobs": [-0.2],
                    "top_logprobs": [{" greet": -0.2, " bye": -1.8}],
                },
            }
        ]
    }
    parsed = inference.parse_completion_body(body, chat=False)
    assert parsed.first_token_alternatives == ((" greet", -0.2), (" bye", -1.8))
    assert rank_intents(parsed, model("completion")).intent == "greet"


def test_a_malformed_body_is_a_value_error():
    with pytest.raises(ValueError):
        inference.parse_completion_body({"choices": []}, chat=True)
