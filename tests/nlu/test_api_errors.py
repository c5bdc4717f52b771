"""client.classify_api_error: what each SDK error means (kind, retry, Retry-After, one line), and the outcomes."""

import asyncio
import email.utils
import time

import httpx
import openai
import pytest

from rasa_gpt3.client import classify_api_error
from rasa_gpt3.errors import BackendError, CallFailed, RasaGPT3Error
from rasa_gpt3.outcomes import Outcome

REQUEST = httpx.Request("POST", "https://api.example.com/v1/chat/completions")


def status_error(status, headers=None, message="nope"):
    """The exception the SDK raises for an HTTP error response (the SDK's own factory, as in a real call)."""
    response = httpx.Response(status, json={"error": {"message": message}}, request=REQUEST, headers=headers)
    client = openai.OpenAI(api_key="x", base_url="https://api.example.com/v1")
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize(
    "exc, kind, retryable, status",
    [
        (openai.APITimeoutError(request=REQUEST), Outcome.TIMEOUT, True, None),
        (asyncio.TimeoutError(), Outcome.TIMEOUT, True, None),
        (openai.APIConnectionError(request=REQUEST), Outcome.CONNECTION, True, None),
        (status_error(429), Outcome.RATE_LIMITED, True, 429),
        (status_error(500), Outcome.SERVER_ERROR, True, 500),
        (status_error(503), Outcome.SERVER_ERROR, True, 503),
        (status_error(400), Outcome.CLIENT_ERROR, False, 400),
        (status_error(401), Outcome.CLIENT_ERROR, False, 401),
        (status_error(404), Outcome.CLIENT_ERROR, False, 404),
        (ValueError("completion response is not JSON"), Outcome.BAD_RESPONSE, False, None),
    ],
)
def test_each_error_gets_its_kind_and_whether_a_retry_may_help(exc, kind, retryable, status):
    failure = classify_api_error(exc)
    assert (failure.kind, failure.retryable, failure.status) == (kind, retryable, status)
    assert failure.message and "\n" not in failure.message


def test_not_found_and_forbidden_are_told_apart_from_other_client_errors():
    assert classify_api_error(status_error(404)).not_found and not classify_api_error(status_error(404)).forbidden
    assert classify_api_error(status_error(403)).forbidden and not classify_api_error(status_error(403)).not_found
    assert not classify_api_error(status_error(400)).not_found


def test_the_message_is_one_line_without_the_key():
    failure = classify_api_error(status_error(400, message="bad key sk-proj-XYZ123456789abc\nsecond line"))
    assert "XYZ123" not in failure.message and "\n" not in failure.message and "400" in failure.message
    assert classify_api_error(asyncio.TimeoutError()).message == "no answer within the time budget"


def test_retry_after_is_read_as_openai_python_reads_it():
    def retry_after(**headers):
        return classify_api_error(status_error(429, headers=headers)).retry_after

    assert retry_after() is None
    assert retry_after(**{"retry-after-ms": "250"}) == pytest.approx(0.25)
    # the millisecond header wins over the seconds one; an unreadable one falls through to it
    assert retry_after(**{"retry-after-ms": "250", "retry-after": "7"}) == pytest.approx(0.25)
    assert retry_after(**{"retry-after-ms": "soon", "retry-after": "7"}) == pytest.approx(7.0)
    assert retry_after(**{"retry-after": "1.5"}) == pytest.approx(1.5)
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after(**{"retry-after": in_a_minute}) <= 61
    assert retry_after(**{"retry-after": "not a date"}) is None


def test_call_failed_is_a_backend_error_with_an_outcome_kind():
    failure = CallFailed("timeout", "no answer within the time budget")
    assert isinstance(failure, BackendError) and isinstance(failure, RasaGPT3Error)
    assert failure.kind is Outcome.TIMEOUT and str(failure) == "timeout: no answer within the time budget"


def test_outcomes_keep_the_documented_strings_and_say_whether_the_model_answered():
    # the strings parse data, predictions and the README carry
    assert {outcome.value for outcome in Outcome} == {
        "ok",
        "unknown_label",
        "no_logprobs",
        "invalid_json",
        "timeout",
        "rate_limited",
        "server_error",
        "connection",
        "client_error",
        "bad_response",
        "circuit_open",
        "too_long",
    }
    assert {outcome for outcome in Outcome if outcome.answered} == {
        Outcome.OK,
        Outcome.UNKNOWN_LABEL,
        Outcome.NO_LOGPROBS,
        Outcome.INVALID_JSON,
    }
    assert Outcome.OK == "ok" and f"{Outcome.CIRCUIT_OPEN}" == "circuit_open" and str(Outcome.TIMEOUT) == "timeout"
