"""Offline token counting."""

import pytest

from rasa_gpt3.data import base_models, tokens


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "hello world", [15339, 1917]),
    ],
)
def test_bundled_encodings_match_tiktoken_ids(name, text, expected):
    assert tokens.get_encoding(name).encode(text) == expected


def test_chat_record_tokens_follow_the_cookbook_accounting():
    encoding = tokens.get_encoding("o200k_base")
    record = {"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi"}]}
    body = sum(len(encoding.encode(t)) for t in ("user", "hello world", "assistant", "hi"))
    assert tokens.count_record_tokens([record], encoding) == [body + 2 * 3 + 3]


def test_unknown_base_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown base model 'gpt-9'"):
        base_models.resolve_base_model("gpt-9")


def test_fine_tuned_ids_resolve_to_their_base():
    assert base_models.resolve_base_model("ft:gpt-4o-mini-2024-07-18:org:bot:abc").name == "gpt-4o-mini-2024-07-18"


@pytest.mark.parametrize("n,epochs", [(10, 10), (50, 3), (100, 3), (20_000, 1), (2, 25)])
def test_default_epochs_scale_with_data_size(n, epochs):
    assert base_models.default_epochs(n) == epochs
