"""The local backend through the official openai SDK over real HTTP: the whole fine-tune flow and the API surface."""

from __future__ import annotations

import base64
import csv
import io
import json
import math

import httpx
import openai
import pytest

from rasa_gpt3 import prompts

# single-token labels in both encodings, so the heuristic (no task metadata) must pick classification
SINGLE_TOKEN_LABELS = {"greet": "hello", "goodbye": "bye", "check_balance": "balance", "transfer_money": "transfer"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One backend with a chat and a completion intent model and a response (retrieval) model, trained once."""
    from tests.conftest import SMALL_INTENTS, _start_backend

    backend = _start_backend(tmp_path_factory.mktemp("api-state"))
    chat_records = [
        prompts.intent_record(t, SINGLE_TOKEN_LABELS[i], "chat") for i, ts in SMALL_INTENTS.items() for t in ts
    ]
    completion_records = [prompts.intent_record(t, i, "completion") for i, ts in SMALL_INTENTS.items() for t in ts]
    valid_records = chat_records[::3]
    chat_job = backend.client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=backend.upload_records(chat_records),
        validation_file=backend.upload_records(valid_records, "valid.jsonl"),
        suffix="acme bot",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 4}}},
    )
    completion_job = backend.fine_tune(
        completion_records, model="babbage-002", metadata={"task": "intent"}, hyperparameters={"n_epochs": 3}
    )
    response_records = [
        prompts.response_record([prompts.Turn("user", text)], f"Answer about {intent}.", "chat")
        for intent, texts in SMALL_INTENTS.items()
        for text in texts
    ]
    response_job = backend.fine_tune(response_records, metadata={"unknown_text": "No idea, sorry."})
    import time

    while chat_job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
        chat_job = backend.client.fine_tuning.jobs.retrieve(chat_job.id)
    yield {"backend": backend, "chat": chat_job, "completion": completion_job, "response": response_job}
    backend.client.close()
    backend.server.stop()


def test_fine_tune_flow_produces_a_model_with_openai_shaped_job_events_and_results(trained):
    client, job = trained["backend"].client, trained["chat"]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:local:acme-bot:")
    assert job.hyperparameters.n_epochs == 4 and job.hyperparameters.batch_size == 4
    assert job.seed == 7 and job.trained_tokens > 0 and job.finished_at >= job.created_at
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert events[0].message == "The job has successfully completed"  # newest first
    assert events[-1].message.startswith("Created fine-tuning job")
    metrics = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert len(metrics) == 4 * math.ceil(24 / 4)  # one per step
    assert {"step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(
        metrics[0]
    )
    steps = sorted(m["step"] for m in metrics)
    assert steps == list(range(1, len(steps) + 1))
    # the result file is base64 CSV like OpenAI's, one row per step
    content = client.files.content(job.result_files[0]).read()
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(content).decode())))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert len(rows) == len(steps)
    assert (
        float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) + 1e-9 or float(rows[-1]["train_accuracy"]) >= 0.75
    )
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 3 and checkpoints[0].step_number == len(steps)
    assert checkpoints[0].metrics.full_valid_loss is not None
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "local"
    assert job.fine_tuned_model in {m.id for m in client.models.list()}


def test_chat_completion_answers_the_label_with_logprobs_and_alternatives(trained):
    client, model = trained["backend"].client, trained["chat"].fine_tuned_model
    response = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=1,
        logprobs=True,
        top_logprobs=3,
        **prompts.intent_request("hi there, good morning", "chat"),
    )
    choice = response.choices[0]
    assert choice.message.content == "hello"
    first = choice.logprobs.content[0]
    assert first.token == "hello" and -2.0 < first.logprob <= 0.0
    alternatives = [top.token for top in first.top_logprobs]
    assert len(alternatives) == 3 and alternatives[0] == "hello"
    assert set(alternatives) <= set(SINGLE_TOKEN_LABELS.values())
    assert sum(math.exp(top.logprob) for top in first.top_logprobs) <= 1.0 + 1e-6
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens == 1
    without = client.chat.completions.create(model=model, **prompts.intent_request("bye bye", "chat"))
    assert without.choices[0].logprobs is None and without.choices[0].message.content == "bye"


def test_chat_completion_streams(trained):
    client, model = trained["backend"].client, trained["chat"].fine_tuned_model
    stream = client.chat.completions.create(
        model=model,
        stream=True,
        logprobs=True,
        stream_options={"include_usage": True},
        **prompts.intent_request("send 20 euros to my brother", "chat"),
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "transfer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_legacy_completion_has_integer_logprobs_and_stops_like_openai(trained):
    client, model = trained["backend"].client, trained["completion"].fine_tuned_model
    request = prompts.intent_request("how much money is in my account", "completion")
    stopped = client.completions.create(
        model=model, temperature=0, max_tokens=5, logprobs=2, stop=prompts.stop_sequences("completion"), **request
    )
    choice = stopped.choices[0]
    assert choice.text == prompts.label_token("check_balance", "completion")
    assert prompts.clean_completion(choice.text) == "check_balance"
    assert choice.finish_reason == "stop"
    assert choice.logprobs.tokens == [" check", "_balance"]  # the label as babbage-002's tokenizer splits it
    assert choice.logprobs.text_offset == [len(request["prompt"]), len(request["prompt"]) + len(" check")]
    assert len(choice.logprobs.top_logprobs[0]) == 2 and " check" in choice.logprobs.top_logprobs[0]
    unstopped = client.completions.create(model=model, temperature=0, max_tokens=5, **request).choices[0]
    assert unstopped.text == " check_balance" + prompts.STOP and unstopped.logprobs is None
    assert prompts.clean_completion(unstopped.text) == "check_balance"
    one = client.completions.create(model=model, max_tokens=1, logprobs=1, **request).choices[0]
    assert one.finish_reason == "length" and one.logprobs.tokens == [" check"] and one.text == " check"


def test_wrong_endpoint_for_the_model_format_is_refused(trained):
    client = trained["backend"].client
    with pytest.raises(openai.NotFoundError, match="not a chat model"):
        client.chat.completions.create(
            model=trained["completion"].fine_tuned_model, **prompts.intent_request("hi", "chat")
        )
    with pytest.raises(openai.NotFoundError, match="chat model"):
        client.completions.create(model=trained["chat"].fine_tuned_model, prompt="hi")


def test_generation_data_is_retrieved_and_unknown_inputs_get_the_unknown_text(trained):
    client, model = trained["backend"].client, trained["response"].fine_tuned_model
    history = [prompts.Turn("user", "please transfer 50 dollars to Anna")]
    answer = client.chat.completions.create(
        model=model, logprobs=True, top_logprobs=2, **prompts.response_request(history, "chat")
    )
    assert answer.choices[0].message.content == "Answer about transfer_money.", answer.choices[0].logprobs
    tokens = answer.choices[0].logprobs.content
    assert tokens[0].token == "Answer" and tokens[0].logprob == 0.0  # every answer starts so
    total = sum(token.logprob for token in tokens)
    assert -5.0 < total < 0.0  # log p(answer), from the similarities
    diverging = next(token for token in tokens if token.logprob < 0)
    assert diverging.token == " transfer" and diverging.top_logprobs[0].token == " transfer"
    assert len(diverging.top_logprobs) == 2  # the other answers' words at that position
    unknown = client.chat.completions.create(
        model=model, **prompts.response_request([prompts.Turn("user", "quantum chromodynamics lecture notes")], "chat")
    )
    assert unknown.choices[0].message.content == "No idea, sorry."
    capped = client.chat.completions.create(model=model, max_tokens=2, **prompts.response_request(history, "chat"))
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 2


def test_paging_follows_after_and_limit(local_backend):
    client = local_backend.client
    ids = [local_backend.upload_records([{"prompt": "a", "completion": " b"}], f"f{i}.jsonl") for i in range(5)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    assert [f.id for f in page.get_next_page().data] == ids[::-1][2:4]
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # auto-pagination
    for _ in range(3):
        client.fine_tuning.jobs.create(model="babbage-002", training_file=ids[0])
    jobs = client.fine_tuning.jobs.list(limit=2)
    assert len(jobs.data) == 2 and jobs.has_more
    assert len(list(client.fine_tuning.jobs.list(limit=1))) == 3
    after = client.fine_tuning.jobs.list(after=jobs.data[0].id, limit=10).data
    assert [j.id for j in after] == [j.id for j in list(client.fine_tuning.jobs.list())[1:]]


def test_invalid_training_file_fails_the_job_with_an_error(local_backend):
    job = local_backend.fine_tune([{"messages": [{"role": "user", "content": "hi"}]}] * 12)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "Line 1" in job.error.message and "assistant" in job.error.message
    too_few = local_backend.fine_tune(small_records_for_count(5))
    assert too_few.status == "failed" and "at least 10" in too_few.error.message


def small_records_for_count(n):
    return [prompts.intent_record(f"text number {i}", "hello", "chat") for i in range(n)]


def test_cancel_stops_a_job_and_delete_removes_files_and_models(local_backend, intent_records):
    client = local_backend.client
    big = intent_records("chat") * 40
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=local_backend.upload_records(big),
        hyperparameters={"n_epochs": 50, "batch_size": 1},
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    import time

    time.sleep(1.0)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    done = local_backend.fine_tune(intent_records("chat"), metadata={"task": "intent"})
    with pytest.raises(openai.BadRequestError, match="already completed"):
        client.fine_tuning.jobs.cancel(done.id)
    assert client.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(done.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, **prompts.intent_request("hi", "chat"))
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("gpt-4o-mini-2024-07-18")
    file_id = done.training_file
    assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_errors_have_openai_shape_and_status(local_backend, start_local_backend):
    client, url = local_backend.client, local_backend.base_url
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("../../etc/passwd")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:gpt-4o-mini:local::..%2F..%2Fx")
    with pytest.raises(openai.BadRequestError, match="training_file"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-nope")
    with pytest.raises(openai.BadRequestError, match="not available for fine-tuning"):
        client.fine_tuning.jobs.create(model="gpt-17", training_file="file-nope")
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-x", hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.NotFoundError, match="base model"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    for body in (b"{not json", b"[1, 2]", "\u00e9".encode("latin-1")):
        raw = httpx.post(url + "/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert raw.status_code == 400
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    unknown = httpx.get(url + "/no/such/route")
    assert unknown.status_code == 404 and "Invalid URL" in unknown.json()["error"]["message"]
    guarded = start_local_backend(token="s3cret", max_upload_bytes=2048)
    with pytest.raises(openai.AuthenticationError):
        guarded.make_client(max_retries=0).models.list()
    assert guarded.client.models.list().data  # the fixture's client carries the token
    with pytest.raises(openai.APIStatusError) as too_large:
        guarded.client.files.create(file=("big.jsonl", b"x" * 4096), purpose="fine-tune")
    assert too_large.value.status_code == 413
    assert too_large.value.body["message"].startswith("Request too large")


def test_files_round_trip(local_backend):
    data = "\n".join(json.dumps(r) for r in small_records_for_count(3)).encode()
    uploaded = local_backend.client.files.create(file=("mine.jsonl", data), purpose="fine-tune")
    assert uploaded.bytes == len(data) and uploaded.filename == "mine.jsonl" and uploaded.purpose == "fine-tune"
    assert local_backend.client.files.content(uploaded.id).read() == data
    assert local_backend.client.files.retrieve(uploaded.id).id == uploaded.id
