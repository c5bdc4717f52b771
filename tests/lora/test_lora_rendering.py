"""Records → token ids with the tokenizer's own chat template, answer-only labels, and tokenizer-aware labels."""

from __future__ import annotations

from rasa_gpt3 import prompts
from rasa_gpt3.local.lora.rendering import (
    IGNORE_INDEX,
    emitted_label_ids,
    encode_record,
    is_single_token_label,
    prompt_ids,
    stop_token_ids,
)


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_chat_record_trains_only_on_the_answer_and_its_end_of_turn(tiny_tokenizer):
    record = prompts.intent_record("what is my balance", "balance", "chat")
    stops = stop_token_ids(tiny_tokenizer)
    example = encode_record(tiny_tokenizer, record, stops, max_length=512)
    answer = [token for token in example.labels if token != IGNORE_INDEX]
    assert _decode(tiny_tokenizer, answer) == "balance<|im_end|>"
    prompt_part = example.input_ids[: len(example.input_ids) - len(answer)]
    assert prompt_part == prompt_ids(tiny_tokenizer, messages=record["messages"][:-1])
    assert _decode(tiny_tokenizer, prompt_part).endswith("<|im_start|>assistant\n")
    assert example.labels[: len(prompt_part)] == [IGNORE_INDEX] * len(prompt_part)


def test_completion_record_is_prompt_then_completion_then_end(tiny_tokenizer):
    record = prompts.intent_record("what is my balance", "balance", "completion")
    example = encode_record(tiny_tokenizer, record, stop_token_ids(tiny_tokenizer), max_length=512)
    answer = [token for token in example.labels if token != IGNORE_INDEX]
    assert _decode(tiny_tokenizer, answer) == " balance END" + tiny_tokenizer.eos_token
    assert _decode(tiny_tokenizer, example.input_ids) == record["prompt"] + " balance END" + tiny_tokenizer.eos_token


def test_a_long_prompt_loses_its_oldest_tokens_and_keeps_the_answer(tiny_tokenizer):
    record = prompts.intent_record("balance " * 200, "balance", "chat")
    example = encode_record(tiny_tokenizer, record, stop_token_ids(tiny_tokenizer), max_length=32)
    assert len(example.input_ids) == 32
    assert _decode(tiny_tokenizer, [t for t in example.labels if t != IGNORE_INDEX]) == "balance<|im_end|>"


def test_the_end_of_turn_token_stops_generation(tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tiny_tokenizer)


def test_label_hook_says_which_labels_are_one_emitted_token(tiny_tokenizer):
    # trained on financial-demo: its words are tokens, its snake_case intent names are not
    assert is_single_token_label(tiny_tokenizer, "balance", "chat")
    assert not is_single_token_label(tiny_tokenizer, "check_balance", "chat")
    # completion labels are emitted with their leading space, followed by the stop sequence
    assert is_single_token_label(tiny_tokenizer, "balance", "completion") == (
        len(tiny_tokenizer(" balance", add_special_tokens=False)["input_ids"]) == 1
    )
    assert (
        emitted_label_ids(tiny_tokenizer, "balance", "chat")
        == tiny_tokenizer("balance", add_special_tokens=False)["input_ids"]
    )
    assert len(emitted_label_ids(tiny_tokenizer, "check_balance", "chat")) == 3  # check, _, balance


def test_label_codec_built_on_the_served_tokenizer_gives_single_token_labels(
    tiny_codec, tiny_tokenizer, financial_demo_export
):
    assert set(tiny_codec.labels) == set(financial_demo_export.codec.labels)  # every intent of the bot
    assert len(set(tiny_codec.labels.values())) == len(tiny_codec.labels)
    for label in tiny_codec.labels.values():
        assert is_single_token_label(tiny_tokenizer, label, "chat"), label
    assert tiny_codec.encoding.startswith("hf:")
