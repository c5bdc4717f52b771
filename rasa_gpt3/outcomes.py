"""What became of one request to a fine-tuned model: the `outcome` that parse data, predictions and logs carry."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    """The outcome of one model call; its value is the string recorded under `gpt3.outcome` and in predictions.

    `ok`, `unknown_label`, `no_logprobs` and `invalid_json` mean the model answered; the others are the failure
    kinds of `rasa_gpt3.client.classify_api_error`, `circuit_open` when the breaker skipped the call, and
    `too_long` when the message was over the length limit and never sent (no failure of the API, so the breaker
    does not count it).
    """

    OK = "ok"
    # the generated token is no known intent label
    UNKNOWN_LABEL = "unknown_label"
    # the API sent no logprobs: the answer is all there is to go on
    NO_LOGPROBS = "no_logprobs"
    # the entities answer is not a JSON list of entities
    INVALID_JSON = "invalid_json"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"
    # any other 4xx (refused request, key, permission, unknown model)
    CLIENT_ERROR = "client_error"
    # an answer that is no completion (not JSON, unexpected shape), or an SDK error without an HTTP status
    BAD_RESPONSE = "bad_response"
    CIRCUIT_OPEN = "circuit_open"
    # the message is longer than `max_message_chars`: not sent at all
    TOO_LONG = "too_long"

    def __str__(self) -> str:
        return self.value

    @property
    def answered(self) -> bool:
        """True when the model's answer came back (asking it again would not help), False when the call failed."""
        return self in _ANSWERED


_ANSWERED = frozenset({Outcome.OK, Outcome.UNKNOWN_LABEL, Outcome.NO_LOGPROBS, Outcome.INVALID_JSON})
