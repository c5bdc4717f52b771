"""What passes against the local backend must pass against OpenAI: its headers, its upload checks, the training
records it accepts, and log-probabilities shaped like a real model's (tokens of the base model's tokenizer, `length`
at the token limit, alternatives that are not labels and leave probability elsewhere)."""

from __future__ import annotations

import json
import math

import openai
import pytest

from rasa_gpt3 import prompts
from tests.conftest import small_intent_records


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One backend with a chat intent model (task=intent metadata) and a completion intent model."""
    from tests.conftest import _start_backend

    backend = _start_backend(tmp_path_factory.mktemp("fidelity-state"))
    chat = backend.fine_tune(small_intent_records("chat"), metadata={"task": "intent"})
    completion = backend.fine_tune(small_intent_records("completion"), model="babbage-002", metadata={"task": "intent"})
    assert chat.status == completion.status == "succeeded", (chat.error, completion.error)
    yield {"backend": backend, "chat": chat.fine_tuned_model, "completion": completion.fine_tuned_model}
    backend.client.close()
    backend.server.stop()


def _has_openai_headers(headers) -> bool:
    return headers.get("x-request-id", "").startswith("req_") and headers.get("openai-processing-ms", "").isdigit()


def test_every_response_carries_a_request_id_and_the_processing_time(served):
    client, model = served["backend"].client, served["chat"]
    answered = client.chat.completions.create(model=model, **prompts.intent_request("hi", "chat"))
    assert answered._request_id and answered._request_id.startswith("req_")  # what the SDK exposes
    other = client.models.list()
    assert other._request_id.startswith("req_") and other._request_id != answered._request_id
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("ft:gpt-4o-mini:local::nope1234")
    assert missing.value.request_id.startswith("req_")
    assert _has_openai_headers(missing.value.response.headers)
    with client.chat.completions.with_streaming_response.create(
        model=model, stream=True, **prompts.intent_request("hi", "chat")
    ) as streamed:
        assert _has_openai_headers(streamed.headers)
        assert "".join(streamed.iter_lines())  # read to the end
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, **prompts.intent_request("hi " * 70000, "chat"))
    assert _has_openai_headers(refused.value.response.headers)


def test_a_fine_tune_upload_that_is_not_jsonl_is_refused_at_upload(served):
    client = served["backend"].client
    good = "\n".join(json.dumps(r) for r in small_intent_records("chat")).encode()
    with pytest.raises(openai.BadRequestError) as wrong_name:
        client.files.create(file=("train.csv", good), purpose="fine-tune")
    assert wrong_name.value.body["message"] == "Invalid file format for Fine-Tuning API. Must be .jsonl"
    for content, line in (
        (b'{"messages": []}\nnot json at all\n', 2),
        (b"[1, 2, 3]\n", 1),
        (good + b"\n\n" + b"[" * 5000 + b"\n", len(small_intent_records("chat")) + 2),
        (b'{"messages": []}\n\xff\xfe broken\n', 2),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("train.jsonl", content), purpose="fine-tune")
        message = refused.value.body["message"]
        assert message.startswith("Expected file to have JSONL format, where every line is a JSON dictionary.")
        assert f"Line {line} is not a dictionary" in message, message
    assert client.files.create(file=("train.jsonl", good + b"\n\n"), purpose="fine-tune").bytes == len(good) + 2
    assert client.files.create(file=("notes.txt", b"any text"), purpose="user_data").purpose == "user_data"


def _ask(client, model, text, **options):
    return client.chat.completions.create(model=model, temperature=0, **prompts.intent_request(text, "chat"), **options)


def test_a_label_of_several_tokens_comes_back_piece_by_piece_and_length_at_the_token_limit(served):
    client, model = served["backend"].client, served["chat"]  # labels are the intent names: "check" "_balance"
    first = _ask(client, model, "what is my balance", max_tokens=1, logprobs=True).choices[0]
    assert (first.message.content, first.finish_reason) == ("check", "length")
    assert [entry.token for entry in first.logprobs.content] == ["check"]
    whole = _ask(client, model, "what is my balance", logprobs=True).choices[0]
    assert (whole.message.content, whole.finish_reason) == ("check_balance", "stop")
    assert [entry.token for entry in whole.logprobs.content] == ["check", "_balance"]
    no_room_to_end = _ask(client, model, "what is my balance", max_tokens=2).choices[0]
    assert (no_room_to_end.message.content, no_room_to_end.finish_reason) == ("check_balance", "length")
    legacy = client.completions.create(
        model=served["completion"],
        max_tokens=1,
        logprobs=2,
        **prompts.intent_request("what is my balance", "completion"),
    ).choices[0]
    assert (legacy.text, legacy.finish_reason, legacy.logprobs.tokens) == (" check", "length", [" check"])


def test_alternatives_include_pieces_that_are_no_label_and_leave_probability_elsewhere(served):
    from rasa_gpt3.data.labels import LabelCodec
    from rasa_gpt3.data.tokens import get_encoding
    from tests.conftest import SMALL_INTENTS

    backend = served["backend"]
    codec = LabelCodec.build(SMALL_INTENTS, get_encoding("o200k_base"), "chat")  # one token each, as export makes
    records = [
        prompts.intent_record(text, codec.label_of(i), "chat") for i, texts in SMALL_INTENTS.items() for text in texts
    ]
    model = backend.fine_tune(records, metadata={"task": "intent"}).fine_tuned_model
    stand_in = backend.server.backend.model(model)
    labels = set(codec.labels.values())
    for text in ("good morning", "bye bye", "how much money is left", "send money to Anna", "hello, my balance?"):
        choice = _ask(backend.client, model, text, max_tokens=1, logprobs=True, top_logprobs=20).choices[0]
        assert choice.finish_reason == "length"  # one token, and no room for the end of the message
        first = choice.logprobs.content[0]
        alternatives = {entry.token: math.exp(entry.logprob) for entry in first.top_logprobs}
        assert set(alternatives) - labels - {" " + label for label in labels}, alternatives  # not only labels
        assert sum(alternatives.values()) < 1.0
        # renormalised over the labels, as the intent classifier reads them: the stand-in's own ranking, nearly
        scores = {}
        for token, probability in alternatives.items():
            if token.strip() in labels:
                scores[token.strip()] = scores.get(token.strip(), 0.0) + probability
        total = sum(scores.values())
        ranking = stand_in.rank(stand_in.request_text(prompts.intent_request(text, "chat")["messages"]))
        assert first.token == max(scores, key=scores.get) == ranking[0][0]
        for label, probability in ranking:
            assert abs(scores.get(label, 0.0) / total - probability) < 0.02, (text, label)


def _weather_record(city: str, number: int, answer_the_call: bool):
    """A tool-calling record as OpenAI documents it: the call (no content), the tool's answer, the final reply."""
    call = {"id": f"call_{number}", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": json.dumps({"city": city})}
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": f"What is the weather like in {city} today?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if answer_the_call:
        messages += [
            {"role": "tool", "tool_call_id": call["id"], "content": '{"celsius": 21}'},
            {"role": "assistant", "content": f"It is 21 degrees in {city}.", "weight": 1},
        ]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    return {"messages": messages, "tools": [tool], "parallel_tool_calls": False}


def test_tool_calling_records_are_trained_as_openai_documents_them(served):
    backend = served["backend"]
    cities = ["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna", "Oslo"]
    records = [_weather_record(city, i, answer_the_call=i % 2 == 0) for i, city in enumerate(cities * 2)]
    job = backend.fine_tune(records)
    assert job.status == "succeeded", job.error
    asked = _weather_record("Prague", 99, answer_the_call=True)["messages"][:-1]  # up to the tool's answer
    answer = backend.client.chat.completions.create(model=job.fine_tuned_model, messages=asked)
    assert answer.choices[0].message.content
    stray_answer = [{"role": "tool", "tool_call_id": "call_x", "content": "{}"}, {"role": "assistant", "content": "ok"}]
    for record, problem in (
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}, "string content"),
        (dict(records[1], messages=records[1]["messages"] + stray_answer), "call_x"),
        (dict(records[0], tools=[{"type": "function"}]), "`tools`"),
    ):
        failed = backend.fine_tune([record] + records)
        assert failed.status == "failed" and failed.error.message.startswith("Invalid file format. Line 1,")
        assert problem in failed.error.message
