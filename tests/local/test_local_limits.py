"""Hostile requests against the local backend over real HTTP: oversized prompts and bodies, values out of the spec's
ranges, JSON and multipart that do not parse. Each is refused with a 400 (or 413) in OpenAI's shape, never a 500,
and the server keeps answering everyone else."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.local.api.params import MAX_JSON_BODY_BYTES
from rasa_gpt3.local.model import MAX_READ_CHARS, reading_window
from tests.conftest import small_intent_records

ONE_MB = 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One backend with a chat intent model (gpt-4o-mini: 65,536 tokens of context) and a completion one."""
    from tests.conftest import _start_backend

    backend = _start_backend(tmp_path_factory.mktemp("limits-state"))
    chat = backend.fine_tune(small_intent_records("chat"), metadata={"task": "intent"})
    completion = backend.fine_tune(small_intent_records("completion"), model="babbage-002")
    assert chat.status == completion.status == "succeeded", (chat.error, completion.error)
    yield {"backend": backend, "chat": chat.fine_tuned_model, "completion": completion.fine_tuned_model}
    backend.client.close()
    backend.server.stop()


def _ask(client, model, text, **options):
    options.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, **prompts.intent_request(text, "chat"), **options)


def _one_mb_messages():
    words = ("please tell me what my account balance is " * (ONE_MB // 40 + 1))[:ONE_MB]
    return {"words": words, "one run of letters": "a" * ONE_MB}


def test_a_1_mb_message_is_refused_with_openais_context_error_and_the_next_request_is_answered(served):
    client, model = served["backend"].client, served["chat"]
    for kind, text in _one_mb_messages().items():
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(client, model, text)
        error = refused.value
        assert (error.status_code, error.code, error.param, error.type) == (
            400,
            "context_length_exceeded",
            "messages",
            "invalid_request_error",
        ), kind
        message = error.body["message"]
        assert message.startswith("This model's maximum context length is 65536 tokens. However, your messages")
        assert message.endswith("Please reduce the length of the messages."), message
        assert _ask(client, model, "good morning").choices[0].message.content == "greet"
    with pytest.raises(openai.BadRequestError, match=r"you requested \d+ tokens \(\d+ in the messages, 65000 in"):
        _ask(client, model, "how much money do I have " * 100, max_tokens=65000)


def test_the_legacy_endpoint_refuses_a_long_prompt_in_its_own_words(served):
    client = served["backend"].client
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=served["completion"], prompt="balance please " * 20000, max_tokens=1)
    assert refused.value.code is None and refused.value.param is None
    message = refused.value.body["message"]
    assert message.startswith("This model's maximum context length is 16384 tokens, however you")
    assert "in your prompt; 1 for the completion" in message


def test_oversized_messages_do_not_hold_up_normal_ones(served):
    client, model = served["backend"].client, served["chat"]
    oversized = next(iter(_one_mb_messages().values()))

    def hostile(_):
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            _ask(client, model, oversized)

    def normal(text):
        return _ask(client, model, text).choices[0].message.content

    texts = ["good morning", "bye", "what is my balance", "send money to my friend"] * 2
    with ThreadPoolExecutor(8) as pool:
        hostile_runs = [pool.submit(hostile, i) for i in range(4)]
        answers = list(pool.map(normal, texts))
        for run in hostile_runs:
            run.result()
    assert answers == ["greet", "goodbye", "check_balance", "transfer_money"] * 2


def test_a_long_message_within_the_context_is_answered_from_a_bounded_reading(served):
    client, model = served["backend"].client, served["chat"]
    long_text = "good morning, hello there! " + "and some more words to read " * 10000  # ~60,000 tokens
    assert len(long_text) > 100 * MAX_READ_CHARS
    window = reading_window(long_text)
    response = _ask(client, model, long_text, logprobs=True, top_logprobs=4)
    assert response.usage.prompt_tokens > 50000
    read = _ask(client, model, window, logprobs=True, top_logprobs=4)  # the model reads the window only
    assert response.choices[0].logprobs == read.choices[0].logprobs
    assert len(window) <= MAX_READ_CHARS and long_text.startswith(window) and long_text[len(window)] == " "
    assert reading_window("short text") == "short text"


def test_a_json_body_over_the_limit_is_a_413(served):
    url = served["backend"].base_url + "/chat/completions"
    body = json.dumps({"model": served["chat"], "messages": [{"role": "user", "content": "x" * MAX_JSON_BODY_BYTES}]})
    raw = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert raw.status_code == 413
    assert raw.json()["error"]["code"] == "request_too_large"


def _post(served, path, content, content_type="application/json"):
    return httpx.post(
        served["backend"].base_url + path, content=content, headers={"Content-Type": content_type}, timeout=30
    )


def test_json_that_does_not_parse_as_python_would_read_it_is_a_400(served):
    nested = "[" * 100_000 + "]" * 100_000
    huge_number = '{"model": "x", "seed": ' + "7" * 5000 + "}"
    for body, detail in ((nested, "nested too deeply"), (huge_number, "too many digits")):
        for path in ("/chat/completions", "/completions", "/fine_tuning/jobs"):
            raw = _post(served, path, body)
            assert raw.status_code == 400, (path, raw.text[:200])
            assert detail in raw.json()["error"]["message"]


def test_broken_multipart_is_a_400(served):
    boundary = "xyzzy"
    broken = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        'Content-Type: application/octet-stream\r\n\r\n{"prompt": "a"}'  # never closed
    )
    for content, content_type in (
        (broken, f"multipart/form-data; boundary={boundary}"),
        ("not multipart at all", f"multipart/form-data; boundary={boundary}"),
        (broken, "multipart/form-data"),  # no boundary
    ):
        raw = _post(served, "/files", content, content_type)
        assert raw.status_code == 400, (content_type, raw.text[:200])
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_seeds_follow_the_spec_a_negative_completion_seed_is_fine_a_negative_job_seed_is_refused(served):
    backend, model = served["backend"], served["chat"]
    client = backend.client
    for seed in (-5, -(2**63), 2**63 - 1):
        answered = _ask(client, model, "hi there", seed=seed, temperature=1.0)
        assert answered.choices[0].message.content in {"greet", "goodbye", "check_balance", "transfer_money"}
    for seed in (2**63, -(2**63) - 1):
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(client, model, "hi there", seed=seed)
        assert refused.value.param == "seed"
    training_file = backend.upload_records(small_intent_records("chat"))
    for seed, code in ((-7, "integer_below_min_value"), (2**31, "integer_above_max_value")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file, seed=seed)
        assert (refused.value.param, refused.value.code) == ("seed", code)
    assert client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file, seed=0).seed == 0


def test_suffix_and_sampling_values_out_of_the_spec_are_400s(served):
    client, model = served["backend"].client, served["chat"]
    with pytest.raises(openai.BadRequestError) as short:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-x", suffix="")
    assert (short.value.param, short.value.code) == ("suffix", "string_below_min_length")
    with pytest.raises(openai.BadRequestError) as long:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-x", suffix="s" * 65)
    assert (long.value.param, long.value.code) == ("suffix", "string_above_max_length")
    for options, param in (
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"frequency_penalty": 2.1}, "frequency_penalty"),
        ({"logit_bias": {"15339": 101}}, "logit_bias"),
        ({"n": 0}, "n"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(client, model, "hi", **options)
        assert refused.value.param == param
    with pytest.raises(openai.BadRequestError, match="at most 128 choices") as too_many:
        client.completions.create(model=served["completion"], prompt=["hi"] * 20, n=8)
    assert too_many.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as best_of:
        client.completions.create(model=served["completion"], prompt="hi", best_of=21)
    assert best_of.value.param == "best_of"
    with pytest.raises(openai.BadRequestError, match="content must be a string"):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": [{"type": "text", "text": ["not", "text"]}]}]
        )
