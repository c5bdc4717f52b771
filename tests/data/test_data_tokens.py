"""Counting many texts in one encode call gives exactly the one-by-one counts (the fast path export relies on)."""

from __future__ import annotations

import csv
import random

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.data.tokens import count_text_tokens, get_encoding

TRICKY = [
    "hi?",
    "hi!",
    "ok.",
    "what's up",
    "it's 12",
    "12",
    "1234567",
    "a",
    "?",
    "...",
    "x/y",
    "path/",
    "a/b/",
    "(1)",
    "'s",
    "I'LL GO",
    "don't",
    "#tag",
    "$5",
    "50%",
    "3.14",
    "e-mail",
    "C++",
    "naïve",
    "café",
    "日本語",
    "五つ",
    "emoji 😀",
    "😀",
    "tab\tinside",
    "trailing space ",
    " leading",
    "two  spaces",
    "line\nbreak",
    "cr\rx",
    "nbsp\u00a0",
    "x\u2028y",
    "<|endoftext|>",
    "end with <|endoftext|>",
    "ID: 0x1F",
    "Q: why? A: because!",
    "ok!!!",
    "well...",
    "2024-01-01",
    "100,000",
    "USD$",
    "x*",
    "~",
    "`code`",
    "a_b",
    "_",
    "'",
    '"quoted"',
]


def _texts(corpora_dir):
    texts = list(TRICKY)
    with open(corpora_dir / "banking77" / "banking_data" / "train.csv", newline="", encoding="utf-8") as stream:
        texts += [row["text"] for row in csv.DictReader(stream)]
    rng = random.Random(5)
    pieces = TRICKY + ["word", "Word", "WORD", "0", "42", "!", "?", ".", ",", " ", "'s", "é", "ß", "Ω", "😀", "/"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    texts += [prompts.normalize_text(t) for t in texts[:500]]
    return texts


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_joined_counts_equal_one_by_one(name, corpora_dir):
    encoding = get_encoding(name)
    texts = _texts(corpora_dir)
    assert count_text_tokens(texts, encoding) == [len(encoding.encode_ordinary(t)) for t in texts]


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_suffixed_counts_equal_one_by_one(name, corpora_dir):
    from rasa_gpt3.data.tokens import count_suffixed_text_tokens

    encoding = get_encoding(name)
    texts = _texts(corpora_dir)[:2500]
    for suffix in (prompts.SEPARATOR, "\n", " END", "\r\n##"):
        expected = [len(encoding.encode_ordinary(t + suffix)) for t in texts]
        assert count_suffixed_text_tokens(texts, suffix, encoding) == expected, repr(suffix)
