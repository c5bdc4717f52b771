"""The label codec: one token per label in the emitted form, distinct, deterministic, JSON round trip."""

from __future__ import annotations

import json
import random

import pytest

from rasa_gpt3.data.labels import LabelCodec
from rasa_gpt3.data.tokens import get_encoding
from rasa_gpt3.errors import DataError
from rasa_gpt3.prompts import STOP, label_token

INTENTS = [
    "greet",
    "goodbye",
    "affirm",
    "deny",
    "check_balance",
    "check_earnings",
    "check_human",
    "check_recipients",
    "transfer_money",
    "faq/ask_name",
    "faq/ask_weather",
    "chitchat/ask_name",
    "out_of_scope",
    "xqzv_jjkw",
    "qqqq_zzzz_wwww",
    "END",
    "bookFlightNow",
]


@pytest.mark.parametrize("encoding_name", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_every_label_is_one_distinct_token(encoding_name, fmt):
    encoding = get_encoding(encoding_name)
    codec = LabelCodec.build(INTENTS, encoding, fmt)
    assert set(codec.labels) == set(INTENTS)
    assert len(set(codec.labels.values())) == len(INTENTS)
    for intent, label in codec.labels.items():
        assert len(encoding.encode_ordinary(label_token(label, fmt))) == 1, (intent, label)
        assert codec.token_of(intent) == label_token(label, fmt)
        assert codec.intent_of(label) == intent
        assert codec.intent_of(label_token(label, fmt)) == intent  # as the model emits it
        assert not any(ch.isspace() for ch in label) and label != STOP.strip()


def test_prefers_the_intent_name_then_a_readable_part_then_a_code():
    codec = LabelCodec.build(INTENTS, get_encoding("o200k_base"), "completion")
    assert codec.label_of("greet") == "greet"  # " greet" is one token
    assert codec.label_of("check_balance") == "balance"
    assert codec.label_of("faq/ask_weather") == "weather"
    # no part is one token: letter codes in sorted intent order (" 0" is two tokens in completion form)
    assert (codec.label_of("qqqq_zzzz_wwww"), codec.label_of("xqzv_jjkw")) == ("a", "b")
    assert LabelCodec.build(["xqzv_jjkw"], get_encoding("o200k_base"), "chat").label_of("xqzv_jjkw") == "0"
    assert codec.intent_of("no such label") is None


def test_deterministic_whatever_the_input_order():
    encoding = get_encoding("o200k_base")
    shuffled = list(INTENTS)
    random.Random(3).shuffle(shuffled)
    assert LabelCodec.build(INTENTS, encoding, "chat").labels == LabelCodec.build(shuffled, encoding, "chat").labels


def test_json_round_trip():
    codec = LabelCodec.build(INTENTS, get_encoding("cl100k_base"), "completion")
    again = LabelCodec.from_json(json.loads(json.dumps(codec.to_json())))
    assert again.labels == codec.labels and again.fmt == "completion" and again.encoding == "cl100k_base"
    assert again.intent_of(" balance END") == "check_balance"
    with pytest.raises(ValueError):
        LabelCodec.from_json({"labels": "nope"})
    with pytest.raises(ValueError):
        LabelCodec(labels={"a": "x", "b": "x"}, fmt="chat", encoding="o200k_base")


def test_many_intents_fall_back_to_codes():
    intents = [f"zzq_intent_{i:04d}" for i in range(300)]
    codec = LabelCodec.build(intents, get_encoding("o200k_base"), "completion")
    encoding = get_encoding("o200k_base")
    assert len(set(codec.labels.values())) == 300
    assert all(len(encoding.encode_ordinary(" " + label)) == 1 for label in codec.labels.values())


def _at_most_two_characters(text):
    """A stand-in tokenizer rule for another model: a token is one or two characters (after a leading space)."""
    return 1 <= len(text.lstrip(" ")) <= 2 and text.count(" ") <= 1


def test_a_tokenizer_predicate_decides_what_one_token_is():
    codec = LabelCodec.build(INTENTS, "my-open-model", "completion", is_one_token=_at_most_two_characters)
    assert codec.encoding == "my-open-model" and len(set(codec.labels.values())) == len(INTENTS)
    assert all(_at_most_two_characters(codec.token_of(intent)) for intent in INTENTS)
    assert codec.labels != LabelCodec.build(INTENTS, get_encoding("o200k_base"), "completion").labels
    # without a predicate a tiktoken encoding's name is enough, and gives what the encoding itself gives
    assert (
        LabelCodec.build(INTENTS, "o200k_base", "chat").labels
        == LabelCodec.build(INTENTS, get_encoding("o200k_base"), "chat").labels
    )


def test_too_many_intents_says_how_many_fit_and_what_to_do():
    # under the two-character rule every one of these names needs a code: 10 + 90 numbers, 26 + 676 letter codes
    intents = [f"intent_number_{i:04d}" for i in range(900)]
    with pytest.raises(DataError) as raised:
        LabelCodec.build(intents, "my-open-model", "chat", is_one_token=_at_most_two_characters)
    message = str(raised.value)
    assert message.startswith("900 intents are too many for one-token labels in the chat format with my-open-model")
    assert "share 802 one-token codes, so 98 are left without a label (at most 802 of these intents fit)" in message
    assert "merge or remove at least 98 intents" in message and "\n" not in message
    fitting = LabelCodec.build(intents[:802], "my-open-model", "chat", is_one_token=_at_most_two_characters)
    assert len(set(fitting.labels.values())) == 802  # the limit the message gives is the real one
    with pytest.raises(DataError):
        LabelCodec.build(intents[:803], "my-open-model", "chat", is_one_token=_at_most_two_characters)


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_the_limit_with_openais_tokenizer_is_named_and_completion_points_to_chat(fmt):
    intents = [f"zzq_intent_{i:04d}" for i in range(2000)]
    with pytest.raises(DataError) as raised:
        LabelCodec.build(intents, get_encoding("o200k_base"), fmt)
    message = str(raised.value)
    assert f"2,000 intents are too many for one-token labels in the {fmt} format with o200k_base" in message
    fit = int(message.split("(at most ")[1].split(" ")[0].replace(",", ""))
    assert (1000 < fit < 2000) if fmt == "chat" else (500 < fit < 1000)  # about 1,677 and 630, as measured
    assert ("export in the chat format" in message) == (fmt == "completion")
