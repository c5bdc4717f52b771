"""Fault injection, and how the official SDK's retries meet each fault (real HTTP, no monkeypatching of the SDK)."""

from __future__ import annotations

import time

import openai
import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.local.faults import FaultSpecError, parse_faults

FAULT = "X-Rasa-GPT3-Fault"


def _client(backend, spec=None, **options):
    headers = {FAULT: spec} if spec else None
    return backend.make_client(default_headers=headers, **options)


def test_parse_faults_reads_every_kind_and_rejects_nonsense():
    (fault,) = parse_faults("status=429, retry_after=0.2, first=2, p=0.5, path=/v1/chat")
    assert (fault.status, fault.retry_after, fault.first, fault.probability, fault.path) == (
        429,
        0.2,
        2,
        0.5,
        "/v1/chat",
    )
    latency, drop = parse_faults("latency=0.3;drop")
    assert latency.latency == 0.3 and drop.drop and parse_faults("garbage")[0].garbage
    assert parse_faults("hang=30")[0].hang == 30
    for bad in ("status=200", "latency=-1", "p=2", "explode", "status=abc", "path=v1"):
        with pytest.raises(FaultSpecError):
            parse_faults(bad)


def test_latency_delays_but_answers(local_backend):
    started = time.monotonic()
    assert _client(local_backend, "latency=0.3").models.list().data
    assert time.monotonic() - started >= 0.3


def test_persistent_429_exhausts_the_sdk_retries(local_backend):
    local_backend.reset_stats()
    with pytest.raises(openai.RateLimitError) as error:
        _client(local_backend, "status=429", max_retries=2).models.list()
    assert error.value.response.headers["retry-after-ms"] == "100"
    assert error.value.response.headers["retry-after"] == "1"
    assert local_backend.stats()["requests"] == 3  # the first try and two retries


def test_transient_429_and_500_are_absorbed_by_sdk_retries(local_backend):
    for spec in ("status=429,first=1", "status=500,first=2", "status=503,first=1,retry_after=0"):
        local_backend.reset_stats()
        assert _client(local_backend, spec, max_retries=2).models.list().data
        assert local_backend.stats()["requests"] == int(spec.split("first=")[1][0]) + 1


def test_500_without_retries_raises_internal_server_error(local_backend):
    with pytest.raises(openai.InternalServerError) as error:
        _client(local_backend, "status=500", max_retries=0).models.list()
    assert error.value.body["message"] == "Injected fault: status 500."


def test_hang_longer_than_the_timeout_is_a_timeout(local_backend):
    local_backend.reset_stats()
    started = time.monotonic()
    # 1 s (not less): on a loaded 2-core machine the server thread must get to count each attempt before it times out
    with pytest.raises(openai.APITimeoutError):
        _client(local_backend, "hang=30", timeout=1.0, max_retries=1).models.list()
    assert time.monotonic() - started < 10
    assert local_backend.stats()["requests"] == 2


def test_dropped_connection_is_a_connection_error_after_retries(local_backend):
    local_backend.reset_stats()
    with pytest.raises(openai.APIConnectionError) as error:
        _client(local_backend, "drop", max_retries=1).models.list()
    assert not isinstance(error.value, openai.APITimeoutError)
    assert local_backend.stats()["requests"] == 2
    assert _client(local_backend, "drop,first=1", max_retries=1).models.list().data


def test_garbage_completion_is_neither_a_label_nor_json(local_backend, intent_records):
    job = local_backend.fine_tune(intent_records("chat"), metadata={"task": "intent"})
    response = _client(local_backend, "garbage").chat.completions.create(
        model=job.fine_tuned_model, logprobs=True, **prompts.intent_request("hello", "chat")
    )
    text = response.choices[0].message.content
    assert text not in {"greet", "goodbye", "check_balance", "transfer_money"}
    with pytest.raises(ValueError):
        prompts.parse_entities(text)


def test_configured_faults_by_environment_and_at_run_time(local_backend, monkeypatch):
    client = _client(local_backend, max_retries=0)
    monkeypatch.setenv("RASA_GPT3_FAULTS", "status=500,path=/v1/models")
    with pytest.raises(openai.InternalServerError):
        client.models.list()
    assert client.files.list().data == []  # other paths are untouched
    monkeypatch.delenv("RASA_GPT3_FAULTS")
    assert client.models.list().data
    local_backend.set_faults("status=429,first=2")
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    with pytest.raises(openai.RateLimitError):
        client.models.list()
    assert client.models.list().data  # only the first two requests
    local_backend.set_faults("status=500,p=0")
    assert client.models.list().data
    local_backend.set_faults(None)


def test_bad_fault_header_is_a_400(local_backend):
    with pytest.raises(openai.BadRequestError, match="unknown fault"):
        _client(local_backend, "explode", max_retries=0).models.list()


def test_stats_count_only_api_requests(local_backend):
    local_backend.reset_stats()
    assert local_backend.stats()["requests"] == 0
    local_backend.client.models.list()
    local_backend.client.files.list()
    stats = local_backend.stats()
    assert stats["requests"] == 2
    assert stats["by_route"] == {"GET /v1/models": 1, "GET /v1/files": 1}


def test_request_log_counts_requests_across_processes(local_backend, tmp_path, monkeypatch):
    log = tmp_path / "requests.log"
    monkeypatch.setenv("RASA_GPT3_REQUEST_LOG", str(log))
    local_backend.client.models.list()
    local_backend.client.files.list()
    lines = log.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["GET /v1/models", "GET /v1/files"]


def test_header_faults_come_after_the_token(start_local_backend):
    guarded = start_local_backend(token="s3cret")  # header faults enabled, as for every test backend

    def client(key, spec):
        headers = {FAULT: spec}
        return openai.OpenAI(api_key=key, base_url=guarded.base_url, max_retries=0, timeout=10, default_headers=headers)

    for spec in ("status=500", "hang=1e9", "drop", "explode"):
        with pytest.raises(openai.AuthenticationError):  # a hang would time out, a drop fail to connect
            client("wrong", spec).models.list()
    with pytest.raises(openai.InternalServerError):
        client("s3cret", "status=500").models.list()


def test_the_fault_header_is_ignored_unless_enabled(start_local_backend, monkeypatch):
    monkeypatch.delenv("RASA_GPT3_HEADER_FAULTS", raising=False)
    by_environment = start_local_backend(header_faults=None)  # as `local serve` and the embedded backend start
    assert _client(by_environment, "status=500", max_retries=0).models.list().data
    monkeypatch.setenv("RASA_GPT3_HEADER_FAULTS", "1")
    with pytest.raises(openai.InternalServerError):
        _client(by_environment, "status=500", max_retries=0).models.list()
    switched_off = start_local_backend(header_faults=False)
    assert _client(switched_off, "status=500", max_retries=0).models.list().data
